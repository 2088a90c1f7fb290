"""Choose a 3D model the way ``register`` uses it: MI affine first, then the network.

The trainer's validation Dice registers the validation pairs with the network alone, with no
affine before it. ``register`` always runs the Mattes MI affine first, so a network is only
worth shipping if it adds Dice on top of that. This scores candidate models on every ordered
pair (MR of subject i onto CT of subject j, i != j) of the prepared data's validation
subjects, which no model trained on and the benchmarks never use:

    .venv/bin/python benchmarks/model_selection_3d.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR holds a ``model.safetensors`` (``intermodal train``'s output); the bundled 3D
model and the affine alone are always scored beside them. ``register(..., refine=0,
device="cpu")``; Dice of the moving MR's labels warped (nearest neighbour) onto the fixed CT's
labels, organs 2-5, averaged over organs and pairs. Writes section ``model_selection_3d`` of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (one thread everywhere, set on import)
import peers  # noqa: E402
from results_file import publish  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "build" / "bundled" / "pelvis3d" / "prepared" / "dataset.json"


def prepared_subjects(path: Path) -> dict | None:
    """The prepared manifest's subjects by id, and its splits; ``None`` (said why) if missing."""
    from intermodal.data.manifest import load_manifest

    if not path.is_file():
        print(f"{path}: missing; run `make model-3d` first", file=sys.stderr)
        return None
    manifest = load_manifest(path)
    by_id = {s.id: s for s in manifest.subjects}
    return {split: [by_id[i] for i in ids] for split, ids in manifest.splits.items()}


def candidate_models(baseline: str, runs: list[Path]) -> dict[str, str | None]:
    """Name -> weights: ``baseline`` (no model), the bundled 3D model, then each run folder's."""
    from intermodal.models import bundled_path

    candidates: dict[str, str | None] = {baseline: None, "bundled": str(bundled_path("pelvis3d"))}
    for run in runs:
        candidates[run.name] = str(run / "model.safetensors")
    return candidates


def training_line(model: str | None, subjects: bool = False) -> str:
    """How ``model`` was trained, from its card (``-`` for no model)."""
    if model is None:
        return "-"
    card = json.loads(Path(model).with_suffix(".json").read_text(encoding="utf-8"))
    config = card["training"]["config"]
    train = config["train"]
    line = (
        f"{train['steps']} steps, batch {train['batch_size']}, lr {train['lr']:g}, augment p "
        f"{config['augment']['probability']:g}"
    )
    if subjects:
        line += f", {card['training']['data']['subjects']} training subjects"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders with model.safetensors")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    args = parser.parse_args(argv)
    peers.single_threaded()
    from intermodal.classical import initial_alignment
    from intermodal.io import read_image
    from intermodal.registration import Settings, register

    splits = prepared_subjects(args.manifest)
    if splits is None:
        return 1
    subjects = splits["validation"]
    candidates = candidate_models("affine only", args.runs)
    images = {s.id: {k: read_image(getattr(s, k)) for k in ("ct", "mr", "labels", "mr_labels")}
              for s in subjects}  # fmt: skip
    pairs = [(i, j) for i in range(len(subjects)) for j in range(len(subjects)) if i != j]
    scores: dict[str, list[float]] = {name: [] for name in candidates}
    for i, j in pairs:
        moving, fixed = images[subjects[i].id], images[subjects[j].id]
        for name, model in candidates.items():
            if model is None:  # what register starts from, as compare.py's "affine" row
                transform = initial_alignment(*peers.normalised(fixed["ct"], moving["mr"]))
            else:
                settings = Settings(model=model, refine=0, device="cpu")
                transform = register(fixed["ct"], moving["mr"], settings).transform
            organs = compare.label_scores(fixed["labels"], moving["mr_labels"], transform)
            mean = compare.mean_dice(organs)
            scores[name].append(mean)
            print(f"pair {subjects[i].id} -> {subjects[j].id} {name}: {mean:.3f}", flush=True)
    lines = [
        "<!-- model_selection_3d:begin -->",
        "## Choosing the 3D model after the affine (validation subjects)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}; command: "
        f"`.venv/bin/python benchmarks/model_selection_3d.py "
        + " ".join(str(r.relative_to(REPO)) if r.is_absolute() else str(r) for r in args.runs)
        + "`",
        f"- {len(pairs)} ordered pairs of the {len(subjects)} validation subjects of "
        "`make model-3d`'s prepared data (4 mm): MR of subject i onto CT of subject j, "
        "`register(..., refine=0)`; mean organ Dice (organs 2-5)",
        "- candidates: the bundled model and the run folders named in the command "
        "(`intermodal train` outputs; the GPU runs of `tools/train_gpu.py`, section "
        "gpu_training_3d, are not kept in the repository); the affine alone is what "
        "`register` starts from",
        "",
        "| model | mean Dice | worst pair | training (from its card) |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, model in candidates.items():
        values = scores[name]
        training = training_line(model)
        lines.append(f"| {name} | **{np.mean(values):.3f}** | {min(values):.3f} | {training} |")
    lines.append("<!-- model_selection_3d:end -->")
    publish(compare.RESULTS, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
