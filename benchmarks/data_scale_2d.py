"""Does the network get better with more training subjects? The 2D model, as a cheap proxy.

The 3D model memorises its 16 training subjects (section generalisation_3d); 3D training
takes a GPU, 2D training ten CPU minutes. This scores 2D models trained the same way on
different numbers of synthetic subjects, on the same pairs:

    .venv/bin/python tools/train_bundled.py pelvis2d --subjects N --jobs 2 --no-install
    .venv/bin/python benchmarks/data_scale_2d.py build/bundled/pelvis2d-20s/run ...

The bundled ``pelvis2d`` (60 subjects, 42 of them for training) is always scored beside the
run folders, with two baselines: the affine alone and the refinement alone. Pairs: the
tuning pairs (dataset seed 6, MR of subject 2k+1 onto CT of subject 2k), which no model
trained on and which are not the held-out pairs of the compare tables (this chooses between
training recipes). Each model is scored alone (``refine=0``, after the affine, as
``register`` runs it) and with the smoother refinement preset of the compare tables
(``compare.SMOOTH_SETTINGS``), scored as ``compare.py`` scores: mean organ Dice of the warped
MR labels, SDlogJ of the deformable part on the fixed CT grid. Writes section
``data_scale_2d`` of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (one thread everywhere, set on import)
import peers  # noqa: E402
from results_file import publish  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "alone": {"refine": 0},
    "smooth": compare.SMOOTH_SETTINGS[2],
}


def card_line(weights: Path) -> dict[str, Any]:
    card = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
    training = card["training"]
    return {
        "subjects": training["data"]["subjects"],
        "validation_dice": training["validation_dice"]["mean"],
        "steps": training["steps"],
        "batch": training["config"]["train"]["batch_size"],
    }


def score(fixed, moving, settings: dict[str, Any]) -> dict[str, float]:
    result = peers.intermodal_register(fixed.ct, moving.mr, {"device": "cpu", **settings})
    entry = compare.pair_scores(fixed, moving, result)
    return {"dice": compare.mean_dice(entry), "sdlogj": entry["sdlogj"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders with model.safetensors")
    parser.add_argument("--pairs", type=int, default=30)
    args = parser.parse_args(argv)
    peers.single_threaded()
    from intermodal.classical import initial_alignment
    from intermodal.models import bundled_path

    models = {"bundled pelvis2d": bundled_path("pelvis2d")}
    for run in args.runs:
        models[str(run.relative_to(REPO) if run.is_absolute() else run)] = run / "model.safetensors"
    rows: dict[str, list[dict[str, float]]] = {"affine only": [], "refinement alone": []}
    for name in models:
        rows |= {f"{name}|alone": [], f"{name}|smooth": []}
    start = time.perf_counter()
    for k in range(args.pairs):
        fixed, moving = compare.heldout_pair(2, k, compare.TUNING_SEED)
        affine = initial_alignment(*peers.normalised(fixed.ct, moving.mr))
        organs = compare.label_scores(fixed.ct_labels, moving.mr_labels, affine)
        rows["affine only"].append({"dice": compare.mean_dice(organs), "sdlogj": 0.0})
        rows["refinement alone"].append(score(fixed, moving, {"model": None, **SETTINGS["smooth"]}))
        for name, weights in models.items():
            for setting, values in SETTINGS.items():
                rows[f"{name}|{setting}"].append(
                    score(fixed, moving, {"model": str(weights), **values})
                )
        print(f"pair {k + 1}/{args.pairs} ({time.perf_counter() - start:.0f} s)", flush=True)

    def mean(name: str, key: str) -> float:
        return statistics.fmean(r[key] for r in rows[name])

    runs = " ".join(str(r) for r in args.runs)
    lines = [
        "<!-- data_scale_2d:begin -->",
        "## More training subjects, 2D synthetic pelvis, tuning pairs (issue 4)",
        "",
        f"- date: {compare.now()}; command: `.venv/bin/python benchmarks/data_scale_2d.py "
        f"{runs}`; the run folders from `tools/train_bundled.py pelvis2d --subjects N --jobs 2 "
        "--no-install` (configs/pelvis2d.toml unchanged: the subjects are the first N of "
        "dataset seed 1, about 70 % of them for training)",
        f"- {args.pairs} pairs of dataset seed {compare.TUNING_SEED} (MR of subject 2k+1 onto CT "
        "of subject 2k; no model trained on them, and they are not compare.py's held-out "
        "pairs), scored as `compare.py` scores; after the affine, as `register` runs; "
        f"smoother preset: `{SETTINGS['smooth']}`; one CPU thread",
        "- validation Dice: the trainer's, on each run's own validation subjects, no affine first "
        "(so not comparable between rows with different subject counts)",
        "",
        "| model | training subjects | validation Dice (card) | mean Dice, network alone "
        "| mean Dice, + smoother refinement | SDlogJ, + smoother refinement |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| affine only | - | - | {mean('affine only', 'dice'):.3f} | - | - |",
        f"| refinement alone (no model) | - | - | - | {mean('refinement alone', 'dice'):.3f} "
        f"| {mean('refinement alone', 'sdlogj'):.3f} |",
    ]
    for name, weights in models.items():
        card = card_line(Path(weights))
        lines.append(
            f"| {name} ({card['steps']} steps x batch {card['batch']}) | {card['subjects']} "
            f"| {card['validation_dice']:.3f} | {mean(f'{name}|alone', 'dice'):.3f} "
            f"| {mean(f'{name}|smooth', 'dice'):.3f} | {mean(f'{name}|smooth', 'sdlogj'):.3f} |"
        )
    lines.append("<!-- data_scale_2d:end -->")
    publish(compare.RESULTS, lines, compare.OUT.parent / "data_scale_2d.json", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
