"""GPU timings at the Learn2Reg abdomen size, 192x160x192 (issue 4's GPU target).

Run on a machine with a CUDA device (SimpleITK and, for the VoxelMorph row, ``voxelmorph``
importable)::

    python benchmarks/gpu_timings.py --out gpu_timings.json

It measures, on the GPU and in one run:

- the network forward pass at 192x160x192, batch 1, ``torch.no_grad()``, random inputs:
  intermodal's bundled 3D model (read from its files) and VoxelMorph's ``VxmPairwise`` with
  its defaults; fp32 (cuDNN's default TF32 convolutions) and bf16 autocast. CUDA events around
  each call, after warm-up; the median of the repeats, rotating among 3 input pairs;
- the whole ``intermodal.registration.register`` on a synthetic pelvis pair resampled to
  192x160x192 (held-out dataset seed 5, as ``compare.py``'s scaling sweep), ``device="cuda"``,
  for the defaults, the bundled model alone (``refine=0``) and the 3D smoother preset; each
  after one warm-up run, median of the repeats, with ``register``'s own stage timings.

On the machine without a GPU, ``--render FILE`` writes the stored measurements into
``benchmarks/RESULTS.md`` (section ``gpu_timings``); the measurements themselves are kept in
``benchmarks/measured/`` because they cannot be retaken without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SHAPE = (192, 160, 192)  # array order (z, y, x); the same read as (x, y, z)


def _forward_times(network, call, shape, repeats: int, warmup: int, dtype) -> dict[str, Any]:
    import torch

    device = torch.device("cuda")
    inputs = [
        (torch.rand((1, 1, *shape), device=device), torch.rand((1, 1, *shape), device=device))
        for _ in range(3)
    ]
    times = []
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        for i in range(warmup + repeats):
            fixed, moving = inputs[i % len(inputs)]
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = call(network, fixed, moving)
            end.record()
            torch.cuda.synchronize()
            if not all(torch.isfinite(t).all() for t in out):
                raise RuntimeError("non-finite network output")
            if i >= warmup:
                times.append(start.elapsed_time(end) / 1000.0)
    return {
        "seconds": statistics.median(times),
        "times": times,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def measure_forward(repeats: int, warmup: int) -> list[dict[str, Any]]:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from intermodal.checkpoint import load_model
    from intermodal.models import bundled_path

    rows = []
    ours, card = load_model(bundled_path("pelvis3d"), device="cuda")
    ours.eval()
    networks = [
        ("intermodal", ours, lambda n, f, m: (n(f, m).displacement,), card["network"]),
    ]
    try:
        import peers

        vxm = peers._vxm_network(3).to("cuda").eval()
        networks.append(("voxelmorph", vxm, lambda n, f, m: (n(m, f),), "VxmPairwise(3, 1, 1)"))
    except ImportError as error:
        rows.append({"network": "voxelmorph", "error": f"not importable: {error}"})
    for precision, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        for name, network, call, description in networks:
            row = _forward_times(network, call, SHAPE, repeats, warmup, dtype)
            rows.append({"network": name, "precision": precision, "description": description,
                         **row})  # fmt: skip
            print(f"forward {name} {precision}: {row['seconds'] * 1000:.1f} ms", flush=True)
    return rows


def measure_register(repeats: int) -> list[dict[str, Any]]:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import compare  # noqa: E402  (its thread settings are setdefault: ours, set in main, stay)

    from intermodal.registration import Settings, register

    fixed, moving = compare.synthetic_pair(SHAPE[::-1])
    settings = {
        "defaults (model + refine)": {},
        "bundled model alone (refine=0)": {"refine": 0},
        "smoother preset ({})".format(
            ", ".join(f"{k}={v:g}" for k, v in compare.SMOOTH_SETTINGS[3].items())
        ): dict(compare.SMOOTH_SETTINGS[3]),
    }
    rows = []
    for label, extra in settings.items():
        times, stages = [], []
        for i in range(repeats + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            result = register(fixed, moving, Settings(device="cuda", **extra))
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if i > 0:  # the first run is the warm-up (CUDA context, cuDNN autotuning)
                times.append(seconds)
                stages.append(result.report["timings_s"])
        median_stages = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
        rows.append({"settings": label, "extra": extra, "seconds": statistics.median(times),
                     "times": times, "stage_s": median_stages,
                     "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20})  # fmt: skip
        print(f"register {label}: {statistics.median(times):.2f} s {median_stages}", flush=True)
    return rows


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",
                                                   "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")},
    }  # fmt: skip


def render(payload: dict[str, Any]) -> str:
    from compare import GPU_NETWORK_MAX_S

    shape = "x".join(map(str, SHAPE))
    lines = [
        "<!-- gpu_timings:begin -->",
        f"## GPU timings at {shape} (Learn2Reg abdomen size; issue 4)",
        "",
        f"- machine: {payload['machine']['gpu']}, {payload['machine']['cpus']} CPU cores, "
        f"torch {payload['machine']['torch']}; measured {payload['date']}",
        f"- command (on the GPU machine): `{payload['command']}`; the numbers are kept in "
        "`benchmarks/measured/gpu_timings.json`",
        "- forward: batch 1, `torch.no_grad()`, random inputs, CUDA events, median of "
        f"{payload['forward_repeats']} after {payload['forward_warmup']} warm-up calls",
        "",
        "| network | precision | median ms | peak GPU MiB |",
        "| --- | --- | ---: | ---: |",
    ]
    forward = [r for r in payload["forward"] if "seconds" in r]
    for row in forward:
        lines.append(
            f"| {row['network']} | {row['precision']} | {1000 * row['seconds']:.1f} | "
            f"{row['peak_gpu_mib']:.0f} |"
        )
    for row in payload["forward"]:
        if "error" in row:
            lines.append(f"| {row['network']} | - | not run: {row['error']} | |")
    lines += [
        "",
        f"- `register` (`device=\"cuda\"`) on held-out synthetic subject 0's CT and subject 1's "
        f"MR resampled to {shape}: median of {payload['register_repeats']} after one warm-up "
        "run; stage times are `register`'s own (medians)",
        "",
        "| settings | median s | initial alignment s | network s | refine s | output s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in payload["register"]:
        s = row["stage_s"]
        lines.append(
            f"| {row['settings']} | {row['seconds']:.2f} | {s.get('initial_alignment', 0):.2f} | "
            f"{s.get('network', 0):.2f} | {s.get('refine', 0):.2f} | {s.get('output', 0):.2f} |"
        )
    if payload["register"]:
        row = payload["register"][0]
        share = row["stage_s"]["initial_alignment"] / row["seconds"]
        lines += [
            "",
            f"- on the GPU, `register` is the Mattes MI initial alignment: {100 * share:.0f} % "
            f"of the defaults' {row['seconds']:.1f} s. It runs on one ITK thread, for results "
            "that repeat exactly (`intermodal.classical.initial_alignment`); the network and "
            "the refinement together take under a second",
        ]
    fp32 = {r["network"]: r for r in forward if r["precision"] == "fp32"}
    if "intermodal" in fp32:
        ours = fp32["intermodal"]["seconds"]
        verdict = "MET" if ours <= GPU_NETWORK_MAX_S else "NOT MET"
        ratio = ""
        if "voxelmorph" in fp32:
            ratio = f"; VxmPairwise {1000 * fp32['voxelmorph']['seconds']:.1f} ms in the same run"
            ratio += f" (ratio {ours / fp32['voxelmorph']['seconds']:.2f})"
        lines += [
            "",
            f"- target: network forward under {GPU_NETWORK_MAX_S} s on the GPU: **{verdict}** "
            f"({1000 * ours:.1f} ms fp32{ratio})",
        ]
    lines.append("<!-- gpu_timings:end -->")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="measure here and write the JSON to this file")
    parser.add_argument("--render", type=Path, help="write this stored JSON into RESULTS.md")
    parser.add_argument("--forward-repeats", type=int, default=30)
    parser.add_argument("--forward-warmup", type=int, default=5)
    parser.add_argument("--register-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.render:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from results_file import write_section

        section = render(json.loads(args.render.read_text(encoding="utf-8")))
        write_section(RESULTS, "<!-- gpu_timings:begin -->", "<!-- gpu_timings:end -->", section)
        print(section)
        return 0
    if not args.out:
        parser.error("give --out (measure) or --render (write RESULTS.md)")
    # a GPU user's machine: every core for ITK and torch's CPU work (compare.py's defaults
    # are one thread, for its CPU-only comparisons)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ.setdefault(name, str(os.cpu_count()))
    import torch

    if not torch.cuda.is_available():
        print("gpu_timings.py: no CUDA device; nothing measured", file=sys.stderr)
        return 1
    payload = {
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "command": "python benchmarks/gpu_timings.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "forward_repeats": args.forward_repeats,
        "forward_warmup": args.forward_warmup,
        "register_repeats": args.register_repeats,
    }
    payload["forward"] = measure_forward(args.forward_repeats, args.forward_warmup)
    payload["register"] = measure_register(args.register_repeats)
    args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    print(render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
