"""Does a 3D model learn, or only memorise? Its Dice on training pairs beside validation pairs.

The trainer reports validation Dice only. A model that beats no deformation on the pairs it
was trained on but falls below it on the validation pairs has memorised its training subjects
(more subjects, or stronger augmentation, is the cure); one that beats neither has not learnt
(a loss or optimisation problem). This scores candidate models both ways, as the trainer
scores validation: the network alone (``register(..., init="none", refine=0)``), no affine
first, on the prepared data's 4 mm grids:

    .venv/bin/python benchmarks/generalisation_3d.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR holds a ``model.safetensors`` (``intermodal train``'s output); the bundled 3D model
and no deformation are always scored beside them. Pairs: every ordered pair (MR of subject i
onto CT of subject j, i != j) of the first ``--subjects`` subjects of each split; Dice of the
moving MR's labels warped (nearest neighbour) onto the fixed CT's labels, organs 2-5, averaged
over organs and pairs. Writes section ``generalisation_3d`` of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (one thread everywhere, set on import)
import peers  # noqa: E402
from model_selection_3d import (  # noqa: E402
    candidate_models,
    prepared_subjects,
    training_line,
)
from results_file import publish  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "build" / "bundled" / "pelvis3d" / "prepared" / "dataset.json"
SPLITS = ("training", "validation")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders with model.safetensors")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--subjects", type=int, default=4, help="subjects of each split used")
    args = parser.parse_args(argv)
    peers.single_threaded()
    import SimpleITK as sitk

    from intermodal.io import read_image
    from intermodal.registration import Settings, register

    splits = prepared_subjects(args.manifest)
    if splits is None:
        return 1
    candidates = candidate_models("no deformation", args.runs)

    scores: dict[str, dict[str, list[float]]] = {n: {s: [] for s in SPLITS} for n in candidates}
    pair_counts = {}
    for split in SPLITS:
        subjects = splits[split][: args.subjects]
        images = [
            {k: read_image(getattr(s, k)) for k in ("ct", "mr", "labels", "mr_labels")}
            for s in subjects
        ]
        pairs = [(i, j) for i in range(len(subjects)) for j in range(len(subjects)) if i != j]
        pair_counts[split] = (len(subjects), len(pairs))
        for i, j in pairs:
            moving, fixed = images[i], images[j]
            for name, model in candidates.items():
                if model is None:
                    transform = sitk.Transform(3, sitk.sitkIdentity)
                else:
                    settings = Settings(model=model, init="none", refine=0, device="cpu")
                    transform = register(fixed["ct"], moving["mr"], settings).transform
                organs = compare.label_scores(fixed["labels"], moving["mr_labels"], transform)
                scores[name][split].append(compare.mean_dice(organs))
            print(f"{split} pair {subjects[i].id} -> {subjects[j].id} done", flush=True)

    runs = " ".join(str(r.relative_to(REPO)) if r.is_absolute() else str(r) for r in args.runs)
    (n_train, p_train), (n_val, p_val) = pair_counts["training"], pair_counts["validation"]
    lines = [
        "<!-- generalisation_3d:begin -->",
        "## Does the 3D model learn or memorise? Training pairs beside validation pairs",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}; command: "
        f"`.venv/bin/python benchmarks/generalisation_3d.py {runs}`",
        f"- {p_train} ordered pairs of the first {n_train} training subjects and {p_val} of the "
        f"first {n_val} validation subjects of `{args.manifest.relative_to(REPO)}` (4 mm): MR of "
        "subject i onto CT of subject j, the network alone with no affine first "
        '(`register(..., init="none", refine=0)`, as the trainer validates); mean organ Dice '
        "(organs 2-5)",
        "- candidates: the bundled model and the run folders named in the command (the GPU runs "
        "of section gpu_training_3d, not kept in the repository)",
        "",
        "| model | Dice, training pairs | Dice, validation pairs | change from no deformation, "
        "training / validation | training (from its card) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    base = {s: float(np.mean(scores["no deformation"][s])) for s in SPLITS}
    for name, model in candidates.items():
        train, val = (float(np.mean(scores[name][s])) for s in SPLITS)
        change = (
            "-" if model is None
            else f"{train - base['training']:+.3f} / {val - base['validation']:+.3f}"
        )  # fmt: skip
        training = training_line(model, subjects=True)
        lines.append(f"| {name} | {train:.3f} | {val:.3f} | {change} | {training} |")
    lines.append("<!-- generalisation_3d:end -->")
    publish(compare.RESULTS, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
