"""Train 3D networks on a lent GPU: intermodal variants and VoxelMorph, side by side.

Run on the GPU machine, from the repository root, with the prepared 3D data of
``make model-3d`` in ``build/bundled/pelvis3d/prepared`` (carried there)::

    python tools/train_gpu.py --steps 3000 --batch 4 --out "$OUT"

``--manifest`` trains every run on another prepared dataset instead. The models memorise the
recipe's 16 training subjects (section generalisation_3d of benchmarks/RESULTS.md); many more
do not fit in what a device call carries, so make them on the GPU machine's cores: ``prepare`` takes
about 50 s a 3D subject on one thread, and resumes, so a long one can span several calls::

    python tools/train_bundled.py pelvis3d --subjects 200 --jobs 16 --no-install  # stop it
    # once "train" starts; then
    python tools/train_gpu.py --manifest build/bundled/pelvis3d-200s/prepared/dataset.json ...

Every run starts at once in its own process on the one GPU:

- intermodal, ``configs/pelvis3d.toml`` with each of :data:`VARIANTS`'s overrides, through
  ``python -m intermodal train`` (the command a user runs);
- VoxelMorph ``VxmPairwise`` with the intra-modality loss and with MI, through
  ``tools/peers.py:train_voxelmorph`` (intermodal's data, pair sampling, augmentation and
  losses; the same steps and batch).

Each run's files (weights, card, history) go into ``runs.tar.gz`` under ``--out``, with
``summary.json``: the command, the machine, wall time, steps per second and the validation
Dice of each run. Back on the development machine, ``benchmarks/training.py network --model
RUN/model.safetensors`` scores an intermodal run after the initial alignment, ``--render
SUMMARY...`` writes section
``gpu_training_3d`` of ``benchmarks/RESULTS.md``, and ``benchmarks/compare.py`` reads the
VoxelMorph runs once copied into ``benchmarks/weights/vxm_3d_{intra,mi}/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pelvis3d.toml"
# name -> `intermodal train --set` overrides on top of configs/pelvis3d.toml
VARIANTS = {
    "im_lr1e-3": [],
    "im_lr3e-4": ["train.lr=0.0003"],
    "im_lr1e-4": ["train.lr=0.0001"],
    "im_noaug": ["augment.probability=0.0"],
    "im_instnorm": ["model.instance_norm=true"],
    "im_lr3e-4_instnorm": ["train.lr=0.0003", "model.instance_norm=true"],
}
VXM_LOSSES = ("intra", "mi")


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def vxm_worker(loss: str, steps: int, batch: int, out: Path, data: list[str]) -> None:
    sys.path.insert(0, str(REPO / "tools"))
    import peers
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    overrides = [f"train.batch_size={batch}", *data]
    peers.train_voxelmorph(CONFIG, loss, out, steps=steps, overrides=overrides, device=device)


def render(paths: list[Path]) -> int:
    """Write stored ``summary.json`` files into ``benchmarks/RESULTS.md`` (gpu_training_3d)."""
    sys.path.insert(0, str(REPO / "tools"))
    from results_file import write_section

    summaries = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    if any(summary.get("manifest") for summary in summaries):
        print("--render writes the runs on make model-3d's data only; these used --manifest")
        return 1
    bundled = json.loads((REPO / "src" / "intermodal" / "models" / "pelvis3d.json").read_text())
    identity = bundled["training"]["validation_dice_identity"]
    begin, end = "<!-- gpu_training_3d:begin -->", "<!-- gpu_training_3d:end -->"
    lines = [
        begin,
        "## 3D training on a GPU: intermodal variants beside VoxelMorph (issue 4)",
        "",
        f"- machine: {summaries[0]['machine']['cuda']}, torch {summaries[0]['machine']['torch']}; "
        "in each GPU run every training runs at once on the one GPU",
    ]
    for k, (path, summary) in enumerate(zip(paths, summaries), 1):
        lines.append(
            f"- GPU run {k}: `{summary.get('command', '?')}` (on the GPU machine); stored in "
            f"`{path.relative_to(REPO) if path.is_absolute() else path}`"
        )
    lines += [
        "- data: `make model-3d`'s prepared 3D subjects (16 training, 4 validation, 64^3 at "
        "4 mm); validation Dice as the trainer computes it (organs 2-5, the network alone on "
        f"the validation pairs, no affine first); with no deformation it is {identity:.3f}",
        "",
        "| GPU run | run | overrides of configs/pelvis3d.toml | steps x batch | minutes "
        "| validation Dice, best (step) | validation Dice, last |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: |",
    ]
    last = {}
    for k, summary in enumerate(summaries, 1):
        for name, run in summary["runs"].items():
            overrides = ", ".join(VARIANTS.get(name, [])) or "-"
            validation = run.get("validation") or []
            if validation:
                step, best = max(validation, key=lambda e: e[1])
                cells = f"{best:.3f} ({step}) | {validation[-1][1]:.3f}"
                last[f"{name} (run {k})"] = validation[-1][1]
            else:
                cells = "- | -"
            if name.startswith("vxm_"):
                overrides = f"VoxelMorph VxmPairwise, loss {name[4:]}"
            lines.append(
                f"| {k} | {name} | {overrides} | {summary['steps']} x {summary['batch']} | "
                f"{run['wall_s'] / 60:.1f} | {cells} |"
            )
    above = sorted(name for name, dice in last.items() if dice > identity)
    lines += [
        "",
        f"- intermodal runs ending above the no-deformation validation Dice ({identity:.3f}): "
        + (", ".join(above) if above else "none")
        + f" of {len(last)}. VoxelMorph's validation Dice is not computed by its loop: its "
        "held-out scores are in compare_heldout3d, and its weights are in `benchmarks/weights/`",
        "- the trainer's validation registers without the affine that `register` runs first; "
        "section model_selection_3d scores the run-2 models after the affine",
        end,
    ]
    write_section(REPO / "benchmarks" / "RESULTS.md", begin, end, "\n".join(lines))
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", type=Path, help="where runs.tar.gz goes (required to train)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--vxm", default=",".join(VXM_LOSSES), help="'' for none")
    parser.add_argument(
        "--manifest", type=Path, help="prepared dataset to train on instead of the config's"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=0,
        help="seconds after which runs still going are stopped (their checkpoints kept); 0: none",
    )
    parser.add_argument("--vxm-worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--render", type=Path, nargs="+", help="write these summary.json files into RESULTS.md"
    )
    args = parser.parse_args()
    if args.render:
        return render(args.render)
    if not args.out:
        parser.error("--out is required to train")
    runs = REPO / "build" / "gpu_runs"
    data = [] if args.manifest is None else [f"data.manifest={args.manifest.resolve()}"]
    if args.vxm_worker:
        vxm_worker(args.vxm_worker, args.steps, args.batch, runs / f"vxm_{args.vxm_worker}", data)
        return 0

    runs.mkdir(parents=True, exist_ok=True)
    common = [f"train.steps={args.steps}", f"train.batch_size={args.batch}", *data]
    commands = {}
    for name in [v for v in args.variants.split(",") if v]:
        sets = [f"out={runs / name}", *common, *VARIANTS[name]]
        command = [sys.executable, "-m", "intermodal", "train", "--config", str(CONFIG)]
        command += ["--overwrite", "--quiet"] + [a for s in sets for a in ("--set", s)]
        commands[name] = command
    for loss in [v for v in args.vxm.split(",") if v]:
        commands[f"vxm_{loss}"] = [sys.executable, __file__, "--vxm-worker", loss,
                                   "--steps", str(args.steps), "--batch", str(args.batch),
                                   "--out", str(args.out)]  # fmt: skip
        if args.manifest is not None:
            commands[f"vxm_{loss}"] += ["--manifest", str(args.manifest.resolve())]
    started, processes, logs = {}, {}, {}
    for name, command in commands.items():
        logs[name] = open(runs / f"{name}.log", "w")
        started[name] = time.perf_counter()
        processes[name] = subprocess.Popen(
            command, cwd=REPO, stdout=logs[name], stderr=subprocess.STDOUT
        )
        print("started", name, " ".join(command[1:]), flush=True)
    command = "python tools/train_gpu.py " + " ".join(sys.argv[1:])
    summary = {"command": command, "machine": machine(), "steps": args.steps,
               "batch": args.batch, "runs": {},
               "manifest": None if args.manifest is None else str(args.manifest)}  # fmt: skip
    begun = time.perf_counter()
    for name, process in processes.items():
        try:
            left = args.deadline - (time.perf_counter() - begun) if args.deadline else None
            code = process.wait(timeout=None if left is None else max(left, 1))
        except subprocess.TimeoutExpired:
            process.kill()
            code = f"stopped at the {args.deadline:.0f} s deadline"
            process.wait()
        wall = time.perf_counter() - started[name]
        logs[name].close()
        entry = {"exit": code, "wall_s": wall, "steps_per_s": args.steps / wall}
        history = runs / name / "history.json"
        if history.is_file():
            validation = [e for e in json.loads(history.read_text()) if "validation/dice" in e]
            entry["validation"] = [(e["step"], e["validation/dice"]) for e in validation]
        summary["runs"][name] = entry
        print(name, json.dumps(entry), flush=True)
    (runs / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    keep = {"model.safetensors", "model.json", "history.json", "config.json", "card.json",
            "trainer_state.json", "trainer_state.safetensors"}  # fmt: skip
    with tarfile.open(args.out / "runs.tar.gz", "w:gz") as tar:
        # each run's own files, not its checkpoints (the archive must stay small to travel)
        for path in sorted(runs.glob("*")) + sorted(runs.glob("*/*")):
            if path.is_file() and (path.name in keep or path.parent == runs):
                tar.add(path, arcname=str(path.relative_to(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
