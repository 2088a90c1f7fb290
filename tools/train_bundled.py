"""Retrain a bundled model from nothing, and install it into the package.

Usage (from the repository root; ``make model-3d`` and ``make model-2d`` run the first two)::

    .venv/bin/python tools/train_bundled.py general3d
    .venv/bin/python tools/train_bundled.py general2d
    .venv/bin/python tools/train_bundled.py pelvis3d --no-install  # the former models
    .venv/bin/python tools/train_bundled.py pelvis2d --no-install

``general3d`` and ``general2d`` train on pairs generated on the fly (issue 24,
:mod:`intermodal.data.generator`): no data on disk, one step, ``intermodal train --config
configs/NAME.toml``, and the checkpoint with the best validation score
(``best.safetensors``) is installed. The run lives in ``build/bundled/NAME/run`` (ignored); a
second call resumes it where it stopped, so a long run can be split over several sessions
(commit the run folder's ``trainer_state.*`` in between if the machine does not keep it).

``pelvis3d`` and ``pelvis2d`` are the former bundled models, no longer shipped (the general
models replaced them), kept for ``tools/train_gpu.py`` and comparisons: synth -> prepare ->
train on a prepared dataset of synthetic subjects (dataset seed 1, subject ``k`` with seed
``100003 + k``); without ``--no-install`` the last weights are installed beside the bundled
ones (not loaded by name). ``--subjects N`` synthesises N subjects instead of the recipe's
count, in a folder of its own (``build/bundled/NAME-Ns/``), and ``--jobs N`` makes and prepares
that many subjects at once.

Every step goes through the ``intermodal`` command line, so the bundled model is trained the
way a user would train one. The last step copies the weights, unchanged, into
``src/intermodal/models/`` (as ``NAME``, or ``--install-as OTHER``) and writes the card beside
them with the training paths made relative and a ``provenance`` entry: this command, the
data's recipe, the machine, torch and the date. ``--no-install`` trains only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "general3d": {"dim": 3, "generator": True},
    "general2d": {"dim": 2, "generator": True},
    "pelvis3d": {"dim": 3, "subjects": 24, "seed": 1, "spacing": 4.0},
    "pelvis2d": {"dim": 2, "subjects": 60, "seed": 1, "spacing": None},
}


def intermodal(*args: str) -> None:
    command = [str(Path(sys.executable).parent / "intermodal"), *args]
    print("+", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def relative(value):
    """Paths under the repository written relative to it, recursively."""
    if isinstance(value, dict):
        return {k: relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [relative(v) for v in value]
    if isinstance(value, str) and value.startswith(str(REPO) + os.sep):
        return os.path.relpath(value, REPO)
    return value


def identity_dice(manifest: Path, dim: int, card: dict) -> float:
    """The validation Dice with no deformation: what the model's validation Dice beats, or not."""
    import torch

    from intermodal.data.manifest import load_manifest
    from intermodal.networks import RegistrationModel
    from intermodal.training.pairs import validation_pairs
    from intermodal.training.trainer import validation_dice
    from intermodal.training.volumes import load_volumes

    volumes = load_volumes(load_manifest(manifest), "validation", dim=dim)
    model = RegistrationModel.from_config(card["network"])
    with torch.no_grad():
        model.unet.head.weight.zero_()
        model.unet.head.bias.zero_()
    labels = card["training"]["config"]["data"]["validation_labels"]
    direction = card["training"]["direction"]
    pairs = validation_pairs(len(volumes), direction)
    return validation_dice(model, volumes, pairs, labels)["mean"]


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def install(weights: Path, card: dict, name: str) -> None:
    """Copy ``weights`` and write ``card`` into the package as ``name``, each atomically."""
    target = REPO / "src" / "intermodal" / "models"
    shutil.copyfile(weights, target / f"{name}.safetensors.tmp")
    (target / f"{name}.json.tmp").write_text(json.dumps(card, indent=2) + "\n")
    os.replace(target / f"{name}.safetensors.tmp", target / f"{name}.safetensors")
    os.replace(target / f"{name}.json.tmp", target / f"{name}.json")
    print(f"installed {target / name}.safetensors (+ .json)")


def generated(args: argparse.Namespace, recipe: dict) -> None:
    """Train on generated pairs (resuming a run in progress), install the best checkpoint."""
    config = REPO / "configs" / f"{args.name}.toml"
    run = REPO / "build" / "bundled" / args.name / "run"
    if not args.install_only:
        resume = ["--resume"] if (run / "trainer_state.json").is_file() else []
        intermodal("train", "--config", str(config.relative_to(REPO)), *resume)
    if args.no_install:
        return
    best = run / "best.safetensors"
    weights = best if best.is_file() else run / "model.safetensors"
    card = relative(json.loads(weights.with_suffix(".json").read_text()))
    last = json.loads((run / "model.json").read_text())["training"]
    card["provenance"] = {
        "command": f"make model-{recipe['dim']}d "
        f"(= .venv/bin/python tools/train_bundled.py {args.name})",
        "config": str(config.relative_to(REPO)),
        "installed_checkpoint": weights.name,
        "run": {k: last[k] for k in ("steps", "wall_time_s", "steps_per_s", "best")},
        "data": {"generator": "intermodal.data.generator", **card["training"]["data"]},
        "machine": machine(),
        "installed": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M}Z",
    }
    if args.note:
        card["provenance"]["note"] = args.note
    install(weights, card, args.install_as or args.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--no-install", action="store_true", help="train, but do not install")
    parser.add_argument(
        "--install-only",
        action="store_true",
        help="generator recipes: install the run's best checkpoint as it is, without training",
    )
    parser.add_argument("--note", help="a remark recorded in the installed card's provenance")
    parser.add_argument(
        "--install-as", metavar="NAME",
        help="install under this name in src/intermodal/models/ (default: the recipe's)",
    )  # fmt: skip
    parser.add_argument(
        "--subjects", type=int, help="synthesise this many subjects instead of the recipe's "
        "(in build/bundled/NAME-Ns/; pelvis recipes only)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="subjects made and prepared at once")
    args = parser.parse_args()
    recipe = dict(RECIPES[args.name])
    if recipe.get("generator"):
        if args.subjects is not None:
            parser.error("--subjects applies to the pelvis recipes; the generator has no subjects")
        generated(args, recipe)
        return
    folder = args.name
    if args.subjects is not None:
        if args.subjects < 4:
            parser.error("--subjects must be 4 or more (training, validation and test)")
        recipe["subjects"] = args.subjects
        folder = f"{args.name}-{args.subjects}s"
    work = REPO / "build" / "bundled" / folder
    raw, prepared = work / "raw", work / "prepared"
    config = REPO / "configs" / f"{args.name}.toml"

    if not (raw / "dataset.json").is_file():
        intermodal(
            "synth", "--subjects", str(recipe["subjects"]), "--dim", str(recipe["dim"]),
            "--seed", str(recipe["seed"]), "--out", str(raw), "--jobs", str(args.jobs), "--quiet",
        )  # fmt: skip
    spacing = [] if recipe["spacing"] is None else ["--spacing", str(recipe["spacing"])]
    intermodal(
        "prepare", str(raw / "dataset.json"), "--out", str(prepared), *spacing,
        "--jobs", str(args.jobs), "--quiet",
    )  # fmt: skip
    run = work / "run"
    resume = ["--resume"] if (run / "trainer_state.json").is_file() else []
    # the config names the recipe's own folders; another subject count trains in its own
    paths = [
        f"data.manifest={os.path.relpath(prepared / 'dataset.json', REPO)}",
        f"out={os.path.relpath(run, REPO)}",
    ]
    sets = [] if folder == args.name else [a for s in paths for a in ("--set", s)]
    intermodal("train", "--config", str(config.relative_to(REPO)), *sets, *resume)
    if args.no_install:
        return

    card = json.loads((run / "model.json").read_text())
    card = relative(card)
    card["training"]["validation_dice_identity"] = identity_dice(
        prepared / "dataset.json", recipe["dim"], card
    )
    card["provenance"] = {
        "command": f"make model-{recipe['dim']}d "
        f"(= .venv/bin/python tools/train_bundled.py {args.name})"
        if folder == args.name
        else f".venv/bin/python tools/train_bundled.py {args.name} --subjects {args.subjects}",
        "config": str(config.relative_to(REPO)),
        "data": {
            "generator": "intermodal synth",
            **{k: recipe[k] for k in ("dim", "subjects", "seed")},
            "prepare_spacing_mm": recipe["spacing"],
            "prepare": relative(json.loads((prepared / "prepare.json").read_text())),
        },
        "machine": machine(),
        "installed": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M}Z",
    }
    install(run / "model.safetensors", card, args.install_as or args.name)


if __name__ == "__main__":
    main()
