"""The bundled models on held-out synthetic subjects, against the affine and refinement alone.

The bundled models were trained on synthetic dataset seed 1; this draws subjects of dataset
seed 5 (``intermodal synth --seed 5``), which no model has seen, and registers the MR of
subject ``k + 1`` onto the CT of subject ``k`` (inter-subject pairs, as in training) by:

- the affine alone (Mattes MI, the initial alignment every method starts from);
- the bundled model alone (``--refine 0``);
- the bundled model followed by the default refinement;
- refinement alone (``--model none``, default steps).

Reported per method: mean Dice per organ, HD95 (mm) averaged over organs, SDlogJ, the share of
non-positive Jacobian determinants and seconds per pair, all on the fixed CT's grid.

Usage::

    .venv/bin/python benchmarks/bundled_heldout.py --dim 3 --pairs 6
    .venv/bin/python benchmarks/bundled_heldout.py --dim 2 --pairs 20

(Re)writes the section between ``<!-- bundled_{dim}d:begin -->`` and ``<!-- bundled_{dim}d:end
-->`` of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import SimpleITK as sitk

# benchmarks/ is on sys.path when this runs as a script
from intra_vs_mi import organ_table, score
from results_file import write_section

REPO = Path(__file__).resolve().parents[1]


def run(dim: int, pairs: int, seed: int) -> dict[str, list[dict]]:
    from intermodal.classical import initial_alignment
    from intermodal.data.synth import SEED_STRIDE, generate_subject
    from intermodal.preprocess import normalize_intensity
    from intermodal.registration import Settings, register

    methods = {
        "bundled model": Settings(model="auto", refine=0, device="cpu"),
        "bundled model + refine": Settings(model="auto", device="cpu"),
        "refinement alone": Settings(model=None, device="cpu"),
    }
    rows: dict[str, list[dict]] = {}
    for k in range(pairs):
        fixed = generate_subject(seed * SEED_STRIDE + 2 * k, dim=dim)
        moving = generate_subject(seed * SEED_STRIDE + 2 * k + 1, dim=dim)
        start = time.perf_counter()
        affine = initial_alignment(
            normalize_intensity(fixed.ct, "ct"), normalize_intensity(moving.mr, "mr"), "affine"
        )
        seconds = time.perf_counter() - start
        warped = sitk.Resample(moving.mr_labels, fixed.ct_labels, affine, sitk.sitkNearestNeighbor)
        rows.setdefault("affine only", []).append(
            {**score(fixed.ct_labels, warped), "sdlogj": 0.0, "folding": 0.0, "seconds": seconds}
        )
        for name, settings in methods.items():
            start = time.perf_counter()
            result = register(fixed.ct, moving.mr, settings)
            seconds = time.perf_counter() - start
            jacobian = result.report["jacobian"]
            rows.setdefault(name, []).append(
                {
                    **score(fixed.ct_labels, result.warp_image(moving.mr_labels, labels=True)),
                    "sdlogj": jacobian["sdlogj"],
                    "folding": jacobian["nonpositive_fraction"],
                    "seconds": seconds,
                }
            )
        print(f"pair {k + 1}/{pairs} done", flush=True)
    return rows


def render(rows: dict[str, list[dict]], args: argparse.Namespace) -> str:
    from intermodal.checkpoint import read_card
    from intermodal.models import bundled_path

    name = f"pelvis{args.dim}d"
    card = read_card(bundled_path(name))
    training = card["training"]
    begin, end = f"<!-- bundled_{args.dim}d:begin -->", f"<!-- bundled_{args.dim}d:end -->"
    lines = [
        begin,
        f"## The bundled {args.dim}D model on held-out synthetic subjects",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M}Z; command: "
        f"`.venv/bin/python benchmarks/bundled_heldout.py --dim {args.dim} --pairs {args.pairs}`",
        f"- {args.pairs} inter-subject pairs (MR of subject 2k+1 onto CT of subject 2k) of "
        f"synthetic dataset seed {args.seed}; `{name}` was trained on dataset seed 1 "
        f"({training['steps']} steps, {training['wall_time_s'] / 60:.0f} min on the CPU, "
        f"working spacing {card['preprocessing']['spacing'][0]:g} mm)",
        "- registration settings are the defaults (`--refine 90` on MIND-SSC where refined); "
        "all on the CPU, on a machine shared with other jobs, so times are indicative only",
        "",
    ]
    lines += organ_table(rows, seconds_digits=1)
    lines += ["", end]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=3, choices=(2, 3))
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    rows = run(args.dim, args.pairs, args.seed)
    section = render(rows, args)
    begin, end = f"<!-- bundled_{args.dim}d:begin -->", f"<!-- bundled_{args.dim}d:end -->"
    write_section(args.results, begin, end, section)
    print(section)


if __name__ == "__main__":
    main()
