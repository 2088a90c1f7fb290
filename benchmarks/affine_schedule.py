"""When should the Mattes MI initial alignment stop? Its minimum step, against Dice and time.

``intermodal.classical.initial_alignment`` runs a regular-step gradient descent whose step
halves whenever the (randomly sampled) gradient turns back, and stops when the step falls
below ``min_step``. This scores the affine alone, as ``register`` runs it, for several
``min_step`` values on the same pairs: mean organ Dice of the moving MR's labels warped by the
affine onto the fixed CT (as ``compare.py`` scores its "affine only" row) and the median time
per pair. Pairs: the tuning pairs (dataset seed 6, MR of subject 2k+1 onto CT of subject 2k),
not the held-out pairs of the compare tables, since this chooses a default.

    nice -n 10 .venv/bin/python benchmarks/affine_schedule.py --pairs-2d 30 --pairs-3d 8

Writes section ``affine_schedule`` of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (one thread everywhere, set on import)
import peers  # noqa: E402
from results_file import publish  # noqa: E402

from intermodal.classical import initial_alignment  # noqa: E402


def sweep(dim: int, pairs: int, min_steps: list[float]) -> dict[float, list[dict[str, float]]]:
    rows: dict[float, list[dict[str, float]]] = {step: [] for step in min_steps}
    for k in range(pairs):
        fixed, moving = compare.heldout_pair(dim, k, compare.TUNING_SEED)
        fixed_n, moving_n = peers.normalised(fixed.ct, moving.mr)
        order = min_steps[k % len(min_steps) :] + min_steps[: k % len(min_steps)]
        for step in order:
            start = time.perf_counter()
            affine = initial_alignment(fixed_n, moving_n, "affine", min_step=step)
            seconds = time.perf_counter() - start
            scores = compare.label_scores(fixed.ct_labels, moving.mr_labels, affine)
            rows[step].append({"dice": compare.mean_dice(scores), "seconds": seconds})
        print(
            f"{dim}D pair {k + 1}/{pairs}: "
            + ", ".join(f"{s:g}: {rows[s][-1]['dice']:.3f}" for s in min_steps),
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs-2d", type=int, default=30)
    parser.add_argument("--pairs-3d", type=int, default=8)
    parser.add_argument("--min-steps", default="1e-4,1e-3,3e-3")
    args = parser.parse_args(argv)
    min_steps = [float(v) for v in args.min_steps.split(",")]
    results: dict[int, dict[float, list[dict[str, float]]]] = {}
    for dim, pairs in ((2, args.pairs_2d), (3, args.pairs_3d)):
        if pairs > 0:
            results[dim] = sweep(dim, pairs, min_steps)

    def summary(entries: list[dict[str, float]], key: str) -> float:
        values = [e[key] for e in entries]
        return statistics.mean(values) if key == "dice" else statistics.median(values)

    lines = [
        "<!-- affine_schedule:begin -->",
        "## Where the Mattes MI initial alignment stops (tuning pairs; issue 4)",
        "",
        f"- date: {compare.now()}; command: `{compare.command_line()}`",
        f"- pairs of dataset seed {compare.TUNING_SEED} (MR of subject 2k+1 onto CT of subject "
        "2k; not the held-out pairs), the affine alone as `register` runs it "
        "(`initial_alignment(..., 'affine', min_step=...)`: moments, rigid, then affine, on "
        "images block-averaged to about 4 mm, one ITK thread), scored as `compare.py` scores "
        "its affine-only row: mean organ Dice of the moving MR labels warped onto the fixed "
        "CT; min steps interleaved pair by pair; one CPU thread on a 2-core machine",
        "",
        "| dim | pairs | min step | mean Dice | s per pair (median) "
        f"| time / time at min step {min_steps[0]:g} |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for dim, rows in results.items():
        base = summary(rows[min_steps[0]], "seconds")
        for step, entries in rows.items():
            seconds = summary(entries, "seconds")
            lines.append(
                f"| {dim}D | {len(entries)} | {step:g} | {summary(entries, 'dice'):.3f} "
                f"| {seconds:.2f} | {seconds / base:.2f} |"
            )
    lines.append("<!-- affine_schedule:end -->")
    rows = {f"{d}d": {f"{s:g}": e for s, e in r.items()} for d, r in results.items()}
    publish(compare.RESULTS, lines, compare.OUT.parent / "affine_schedule.json", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
