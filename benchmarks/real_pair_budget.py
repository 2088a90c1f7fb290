"""Exploratory: what the MI refinement reaches on the real pair with more budget, and the init.

Not a benchmark that chooses anything. The settings of intermodal are chosen on the synthetic
tuning pairs (``regularisation.py``), and the real CT/MR pair is the test that they face
(``compare.py``'s real part). This script asks two questions of the real pair itself, for
planning, after the choices were made: does the fast preset's MI refinement reach ANTs' NMI
there with more steps or samples, and at what share of ANTs' time; and does an MI rigid or
affine initial alignment (ITK's, as ``--init rigid|affine`` runs it) instead of the moments
init change where the refinement ends. Every registration runs in this one process on one
thread (torch and ITK), after a warm-up registration that is not counted; ANTs SyNRA runs in
the same process, first, and each row's time is divided by its. NMI and SDlogJ are scored as
``compare.py`` scores the real pair.

With ``--seeds N`` it asks a third question instead: how much the real pair's pick
(``compare.py``'s ``im_fast_mi_3mm_levels``) depends on its seed, which draws the voxels at
which each refinement step scores MI. Its rows are that setting with seeds 0 to N - 1; seed 0
is the one that ``compare_real`` measured.

Usage::

    nice -n 10 .venv/bin/python benchmarks/real_pair_budget.py --load-note "nothing else ran"
    nice -n 10 .venv/bin/python benchmarks/real_pair_budget.py --seeds 8

(Re)writes the section between ``<!-- real_pair_budget:begin -->`` and
``<!-- real_pair_budget:end -->`` of ``benchmarks/RESULTS.md`` (with ``--seeds``,
``real_pair_seeds``) and keeps the rows in ``benchmarks/measured/real_pair_budget.json``
(``real_pair_seeds.json``).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import peers  # benchmarks/ is on sys.path when run as a script
import SimpleITK as sitk
from real_pair import Evaluator
from results_file import publish

from intermodal.metrics import sdlogj
from intermodal.registration import preset_settings, register

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mridir"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
MEASURED = REPO / "benchmarks" / "measured"

# overrides of preset_settings("fast", 3, similarity="mi", device="cpu")
ROWS = [
    {"spacing": 3.0},
    {"spacing": 3.0, "refine": 36},
    {"spacing": 3.0, "refine": 54},
    {"spacing": 3.0, "refine": 72},
    {"spacing": 3.0, "init": "rigid"},
    {"spacing": 3.0, "init": "affine"},
    {"spacing": 2.0, "sampling": 0.1, "refine": 54},
]
# the real pair's pick (tuning_3d_mi_levels), whose seed --seeds varies
PICK = {"spacing": 3.0, "level_steps": (6, 3, 15), "integration_steps": 2}


def _name(overrides: dict) -> str:
    """``{"spacing": 3.0, "level_steps": (6, 3, 15)}`` -> ``spacing=3,level_steps=6-3-15``."""

    def text(value) -> str:
        if isinstance(value, tuple):
            return "-".join(str(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ",".join(f"{key}={text(value)}" for key, value in overrides.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-note", default="not recorded")
    parser.add_argument(
        "--seeds", type=int, default=0, metavar="N",
        help="instead of the budget rows: the real pair's pick with seeds 0 to N - 1",
    )  # fmt: skip
    args = parser.parse_args(argv)
    section = "real_pair_seeds" if args.seeds else "real_pair_budget"
    rows_asked = [{**PICK, "seed": seed} for seed in range(args.seeds)] if args.seeds else ROWS
    if not (DATA / "ct_2mm.nii.gz").is_file():
        print(f"skipped: the MRI-DIR pair is not at {DATA}")
        return 0
    peers.single_threaded()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    evaluator = Evaluator.from_folder(DATA)
    ct = sitk.ReadImage(str(DATA / "ct_2mm.nii.gz"), sitk.sitkFloat32)
    mr = sitk.ReadImage(str(DATA / "mr_t2_2mm.nii.gz"), sitk.sitkFloat32)
    ants = peers.ants_register(ct, mr)
    rows = [{"settings": "ANTs SyNRA, Mattes MI", "seconds": ants.seconds,
             "nmi": evaluator.nmi(evaluator.warp(ants.transform)),
             "sdlogj": sdlogj(ants.jacobian_det)}]  # fmt: skip
    print(rows[-1], flush=True)
    register(ct, mr, preset_settings("fast", 3, similarity="mi", device="cpu"))  # warm-up
    for overrides in rows_asked:
        settings = preset_settings("fast", 3, similarity="mi", device="cpu", **overrides)
        start = time.perf_counter()
        result = register(ct, mr, settings)
        seconds = time.perf_counter() - start
        rows.append({
            "settings": f"`preset=fast,similarity=mi,{_name(overrides)}`", "seconds": seconds,
            "nmi": evaluator.nmi(evaluator.warp(result.transform)),
            "sdlogj": sdlogj(np.asarray(sitk.GetArrayViewFromImage(result.jacobian))),
            "stage_s": result.report["timings_s"],
        })  # fmt: skip
        print(rows[-1], flush=True)
    command = shlex.join(["nice", "-n", "10", ".venv/bin/python",
                          "benchmarks/real_pair_budget.py", *sys.argv[1:]])  # fmt: skip
    title = (
        "the real pair's pick under other seeds"
        if args.seeds
        else "the MI refinement's budget and init on the real pair"
    )
    lines = [
        f"<!-- {section}:begin -->",
        f"## Exploratory: {title} (not a choice)",
        "",
        f"- date: {date}; command: `{command}`; load: {args.load_note}",
        "- asked of the test pair itself after every setting was chosen on the tuning pairs, "
        "for planning; nothing here picks a setting. One process, one thread; ANTs first (one "
        "run, clock-seeded), then a warm-up registration (not counted), then each row once; "
        "NMI and SDlogJ as `compare_real` scores them",
        "",
        "| settings | s | share of ANTs' time | NMI after | SDlogJ |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['settings']} | {row['seconds']:.2f} | {row['seconds'] / ants.seconds:.3f} "
            f"| {row['nmi']:.4f} | {row['sdlogj']:.3f} |"
        )
    lines.append(f"<!-- {section}:end -->")
    publish(RESULTS, lines, MEASURED / f"{section}.json", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
