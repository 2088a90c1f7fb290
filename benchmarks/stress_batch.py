"""Stress ``register-batch``: hundreds of small 2D pairs in one process, watching its memory.

Makes a synthetic 2D dataset (``intermodal synth --dim 2``), a CSV of inter-subject pairs
(subject ``i`` fixed with subjects ``i + 1`` and ``i + 2`` moving, modulo the subject count),
and runs :func:`intermodal.batch.run_batch` with intermodal's own method over them in this
process, with the bundled 2D model and a short refinement. After every pair it samples the
process's resident set size (``VmRSS`` of ``/proc/self/status``). A leak shows as a steady
slope over the second half, once caches and allocator pools have settled.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/stress_batch.py --pairs 200

(Re)writes the section between ``<!-- stress:begin -->`` and ``<!-- stress:end -->`` of
``benchmarks/RESULTS.md`` (re-read just before writing; other sections are left as they are).
Data and outputs go to ``benchmarks/out/stress`` (ignored). Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- stress:begin -->", "<!-- stress:end -->"


def status_mib(field: str) -> float:
    """A memory figure of this process from ``/proc/self/status`` (``VmRSS``, ``VmHWM``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def make_data(folder: Path, subjects: int, n_pairs: int) -> tuple[Path, Path]:
    """The synthetic dataset (reused when present) and a CSV of ``n_pairs`` distinct pairs."""
    manifest = folder / "data" / "dataset.json"
    if not manifest.is_file() or len(json.loads(manifest.read_text())["subjects"]) != subjects:
        command = [sys.executable, "-m", "intermodal", "synth", "--dim", "2", "--quiet"]
        command += ["--subjects", str(subjects), "--out", str(manifest.parent), "--overwrite"]
        subprocess.run(command, check=True)
    if n_pairs > 2 * subjects:
        raise SystemExit(f"--pairs {n_pairs}: at most 2 x --subjects ({2 * subjects}) pairs")
    ids = [entry["id"] for entry in json.loads(manifest.read_text())["subjects"]]
    rows = [(ids[k % subjects], ids[(k % subjects + 1 + k // subjects) % subjects])
            for k in range(n_pairs)]  # fmt: skip
    pairs_csv = folder / "pairs.csv"
    with pairs_csv.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["fixed", "moving"])
        writer.writerows(rows)
    return manifest, pairs_csv


def run(args: argparse.Namespace) -> dict:
    """Run the batch and return the RSS samples and timings."""
    from intermodal.batch import IntermodalMethod, load_pairs, run_batch
    from intermodal.data.manifest import load_manifest
    from intermodal.registration import Settings

    manifest, pairs_csv = make_data(args.out, args.subjects, args.pairs)
    pairs = load_pairs(load_manifest(manifest), pairs_csv)
    method = IntermodalMethod(Settings(refine=args.refine, device="cpu"))
    samples: list[float] = []  # RSS in MiB after pair k (index k - 1)
    failed: list[str] = []

    def progress(outcome, finished: int, total: int) -> None:
        if outcome is None:
            samples.append(status_mib("VmRSS"))
        elif outcome.status in ("done", "failed"):
            samples.append(status_mib("VmRSS"))
            if outcome.status == "failed":
                failed.append(f"{outcome.pair}: {outcome.message}")
            if finished % 20 == 0:
                print(f"{finished}/{total} pairs, RSS {samples[-1]:.0f} MiB", flush=True)

    start = time.perf_counter()
    summary = run_batch(pairs, args.out / "runs", method, overwrite=True, progress=progress)
    wall = time.perf_counter() - start
    rss = np.array(samples)  # rss[0] before the first pair, rss[k] after pair k
    half = len(rss) // 2
    slope = np.polyfit(np.arange(half, len(rss)), rss[half:], 1)[0] * 100
    return {
        "pairs": len(pairs),
        "done": len(summary.done),
        "failed": failed,
        "rss_start": float(rss[0]),
        "rss_10": float(rss[min(10, len(rss) - 1)]),
        "rss_end": float(rss[-1]),
        "rss_peak": status_mib("VmHWM"),
        "slope_second_half": float(slope),
        "wall_s": wall,
    }


def render(figures: dict, args: argparse.Namespace) -> str:
    import torch

    from intermodal import __version__

    command = (
        "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/stress_batch.py "
        f"--subjects {args.subjects} --pairs {args.pairs} --refine {args.refine}"
    )
    lines = [
        BEGIN,
        "## Stress: register-batch over many 2D pairs in one process",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M}Z; command: "
        f"`{command}`",
        f"- intermodal {__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} cores shared with other jobs, "
        f"{torch.get_num_threads()} torch thread(s)",
        f"- {figures['pairs']} inter-subject pairs of {args.subjects} synthetic 2D subjects "
        f"(`intermodal synth --dim 2`), `intermodal.batch.run_batch` in-process, bundled 2D "
        f"model (`--model auto`), `--refine {args.refine}`, CPU; every output of `register` "
        "written per pair",
        f"- pairs done: {figures['done']}, failed: {len(figures['failed'])}",
        "",
        "| RSS at start MiB | after 10 pairs MiB | at end MiB | peak MiB "
        "| slope over the second half MiB / 100 pairs | wall s | s per pair |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {figures['rss_start']:.0f} | {figures['rss_10']:.0f} | {figures['rss_end']:.0f} "
        f"| {figures['rss_peak']:.0f} | {figures['slope_second_half']:+.1f} "
        f"| {figures['wall_s']:.0f} | {figures['wall_s'] / figures['pairs']:.2f} |",
        "",
        "RSS: `VmRSS` of `/proc/self/status` after each pair; start is after imports, before "
        "the first pair; peak is `VmHWM`. Slope: least-squares line through the RSS after each "
        "pair of the second half.",
        "",
        END,
    ]
    return "\n".join(lines)


def write_section(results: Path, section: str) -> None:
    """Replace this benchmark's section of ``results`` (or append it), nothing else."""
    text = results.read_text() if results.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    results.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--refine", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "stress")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true", help="print only")
    args = parser.parse_args()
    figures = run(args)
    section = render(figures, args)
    if not args.no_results:
        write_section(args.results, section)
    print(section)
    for line in figures["failed"]:
        print("failed:", line)


if __name__ == "__main__":
    main()
