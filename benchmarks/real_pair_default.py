"""The real CT/MR pair: intermodal's default against ANTs SyNRA (MI), side by side.

Each run is its own spawned process with the same thread count (``--threads``, default 2: the
machine's cores), the methods alternating run by run so that a change in load hits both. The
pair has no labels: each result is scored by an independent NMI (64 bins, the MR warped onto
the CT, over the CT body above -500 HU), not the quantity either method optimises. Time is the
wall time of the registration with the images in memory (no file writing); peak RSS the
process's maximum. The pair: ``../shared/data/mridir`` (CC BY 4.0, see its NOTICE.md).

Usage: ``python benchmarks/real_pair_default.py [--runs 3] [--threads 2]``; writes
``benchmarks/measured/real_pair_default.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "measured" / "real_pair_default.json"
METHODS = ("intermodal", "ants_synra")
BODY_HU = -500.0


def _run(method: str, threads: int) -> dict:
    import os

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[name] = str(threads)
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    import realistic as bench

    from intermodal.data.realistic import load_real_pair
    from intermodal.losses import nmi

    ct, mr = load_real_pair()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        if method == "intermodal":
            from intermodal.registration import register

            transform = register(ct, mr).transform
        else:
            transform = bench._ants(ct, mr, "SyNRA", Path(folder))
        seconds = time.perf_counter() - start
    warped = sitk.Resample(mr, ct, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    body = sitk.GetArrayViewFromImage(ct) > BODY_HU
    score = nmi(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(warped), bins=64, mask=body)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "nmi": float(score), "peak_rss_mib": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    rows: dict[str, list[dict]] = {m: [] for m in METHODS}
    context = get_context("spawn")
    for _ in range(args.runs):
        for method in METHODS:
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                row = pool.submit(_run, method, args.threads).result()
            rows[method].append(row)
            print(method, row, flush=True)
    summary = {
        m: {key: statistics.median(r[key] for r in runs)
            for key in ("seconds", "nmi", "peak_rss_mib")}
        for m, runs in rows.items()
    }  # fmt: skip
    ratio = summary["intermodal"]["seconds"] / summary["ants_synra"]["seconds"]
    record = {"date": time.strftime("%Y-%m-%dT%H:%M%z"), "threads": args.threads,
              "command": "benchmarks/real_pair_default.py " + " ".join(sys.argv[1:]),
              "runs": rows, "median": summary, "time_ratio": ratio}  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print("| method | NMI (median) | time s (median) | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: |")
    for method, values in summary.items():
        print(f"| {method} | {values['nmi']:.4f} | {values['seconds']:.1f} | "
              f"{values['peak_rss_mib']:.0f} |")  # fmt: skip
    print(f"time ratio intermodal / ANTs SyNRA: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
