"""The paper's claim on held-out synthetic subjects: intra-modality supervision against MI.

One run does everything, on the CPU:

1. ``intermodal synth`` writes a 2D synthetic pelvis dataset (subjects' seeds are unique, and
   the test split's subjects are never trained on);
2. ``intermodal prepare`` pre-aligns each subject's MR to its CT (affine + B-spline);
3. ``intermodal train`` trains the same network for the same number of steps twice, once with
   the ``intra`` loss (the paper's) and once with ``mi`` (inter-modality mutual information);
4. every ordered pair (i != j) of test subjects is registered, raw MR_i onto raw CT_j, by: the
   affine alone, each model alone, and each model followed by ``--refine``.

Reported per method: mean Dice per organ (MR_i's labels warped onto CT_j's), HD95 (mm) averaged
over organs, SDlogJ and the share of non-positive Jacobian determinants.

Usage::

    .venv/bin/python benchmarks/intra_vs_mi.py --steps 1500

(Re)writes the section between ``<!-- intra_vs_mi:begin -->`` and ``<!-- intra_vs_mi:end -->``
of ``benchmarks/RESULTS.md``; data and models go to ``benchmarks/out/intra_vs_mi`` (ignored).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from results_file import write_section  # benchmarks/ is on sys.path when run as a script
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- intra_vs_mi:begin -->", "<!-- intra_vs_mi:end -->"
ORGANS = {"bone": 2, "bladder": 3, "prostate": 4, "rectum": 5}


def intermodal(*args: str) -> None:
    command = [str(Path(sys.executable).parent / "intermodal"), *args, "--quiet"]
    subprocess.run(command, check=True)


def hd95(reference: np.ndarray, candidate: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile of the symmetric surface distance (mm) between two masks."""
    if not reference.any() or not candidate.any():
        return float("nan")

    def surface(mask: np.ndarray) -> np.ndarray:
        return mask & ~ndimage.binary_erosion(mask)

    to_reference = ndimage.distance_transform_edt(~surface(reference), sampling=spacing)
    to_candidate = ndimage.distance_transform_edt(~surface(candidate), sampling=spacing)
    distances = np.concatenate([to_reference[surface(candidate)], to_candidate[surface(reference)]])
    return float(np.percentile(distances, 95))


def score(fixed_labels: sitk.Image, warped_labels: sitk.Image) -> dict[str, float]:
    a = sitk.GetArrayFromImage(fixed_labels)
    b = sitk.GetArrayFromImage(warped_labels)
    spacing = fixed_labels.GetSpacing()[::-1]
    result = {}
    for name, value in ORGANS.items():
        in_a, in_b = a == value, b == value
        total = in_a.sum() + in_b.sum()
        result[f"dice_{name}"] = float(2 * (in_a & in_b).sum() / total) if total else np.nan
        result[f"hd95_{name}"] = hd95(in_a, in_b, spacing)
    return result


def evaluate(raw_manifest: Path, models: dict[str, Path], refine: int) -> dict[str, list[dict]]:
    from intermodal.classical import initial_alignment
    from intermodal.data.manifest import load_manifest
    from intermodal.io import read_image
    from intermodal.preprocess import normalize_intensity
    from intermodal.registration import Settings, register

    manifest = load_manifest(raw_manifest)
    test = manifest.split("test")
    rows: dict[str, list[dict]] = {}
    for moving_entry, fixed_entry in itertools.permutations(test, 2):
        fixed, moving = read_image(fixed_entry.ct), read_image(moving_entry.mr)
        fixed_labels = sitk.ReadImage(str(fixed_entry.labels))
        moving_labels = sitk.ReadImage(str(moving_entry.mr_labels))
        start = time.perf_counter()
        affine = initial_alignment(
            normalize_intensity(fixed, "ct"), normalize_intensity(moving, "mr"), "affine"
        )
        seconds = time.perf_counter() - start
        warped = sitk.Resample(moving_labels, fixed_labels, affine, sitk.sitkNearestNeighbor)
        rows.setdefault("affine only", []).append(
            {**score(fixed_labels, warped), "sdlogj": 0.0, "folding": 0.0, "seconds": seconds}
        )
        for name, path in models.items():
            for steps in (0, refine):
                label = f"{name} model" + (f" + refine {steps}" if steps else "")
                start = time.perf_counter()
                result = register(fixed, moving, Settings(model=str(path), refine=steps))
                seconds = time.perf_counter() - start
                jacobian = result.report["jacobian"]
                rows.setdefault(label, []).append(
                    {
                        **score(fixed_labels, result.warp_image(moving_labels, labels=True)),
                        "sdlogj": jacobian["sdlogj"],
                        "folding": jacobian["nonpositive_fraction"],
                        "seconds": seconds,
                    }
                )
    return rows


def organ_table(rows: dict[str, list[dict]], seconds_digits: int) -> list[str]:
    """Markdown table lines: per method, mean Dice per organ and over organs, HD95 (mm)
    averaged over organs, SDlogJ, non-positive Jacobian % and seconds per pair."""
    lines = [
        "| method | Dice bone | Dice bladder | Dice prostate | Dice rectum | mean Dice "
        "| HD95 mm | SDlogJ | non-positive J % | s per pair |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, entries in rows.items():

        def mean(key: str, entries: list[dict] = entries) -> float:
            return float(np.nanmean([e[key] for e in entries]))

        dice = [mean(f"dice_{name}") for name in ORGANS]
        hd = float(np.nanmean([mean(f"hd95_{name}") for name in ORGANS]))
        lines.append(
            f"| {method} | "
            + " | ".join(f"{d:.3f}" for d in dice)
            + f" | {np.mean(dice):.3f} | {hd:.2f} | {mean('sdlogj'):.3f} "
            f"| {100 * mean('folding'):.3f} | {mean('seconds'):.{seconds_digits}f} |"
        )
    return lines


def render(rows: dict[str, list[dict]], args: argparse.Namespace, pairs: int) -> str:
    lines = [
        BEGIN,
        "## Intra-modality supervision against MI supervision (2D synthetic pelvis, held out)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M}Z; command: "
        f"`.venv/bin/python benchmarks/intra_vs_mi.py --subjects {args.subjects} "
        f"--steps {args.steps} --refine {args.refine} --lr {args.lr:g}`",
        f"- {args.subjects} synthetic 2D subjects (seed {args.seed}), split about 70/15/15; "
        f"{pairs} ordered test pairs (raw MR_i onto raw CT_j, i != j), all unseen in training",
        f"- both models: the same network and config, {args.steps} steps, batch 4, "
        f"Adam lr {args.lr:g}, "
        "MR->CT pairs (the paper's direction), on the CPU",
        "",
    ]
    lines += organ_table(rows, seconds_digits=2)
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--refine", type=int, default=60)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "intra_vs_mi")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    out = args.out
    raw, prepared = out / "raw", out / "prepared"
    if not (raw / "dataset.json").is_file():
        intermodal(
            "synth",
            "--subjects",
            str(args.subjects),
            "--dim",
            "2",
            "--seed",
            str(args.seed),
            "--out",
            str(raw),
        )
    intermodal("prepare", str(raw / "dataset.json"), "--out", str(prepared))
    models = {}
    for loss in ("intra", "mi"):
        run = out / f"run_{loss}_lr{args.lr:g}"
        config = out / f"{loss}.toml"
        config.write_text(
            f'out = "{run}"\ndevice = "cpu"\n[data]\nmanifest = "{prepared / "dataset.json"}"\n'
            f'dim = 2\n[loss]\nname = "{loss}"\n[train]\nsteps = {args.steps}\nbatch_size = 4\n'
            f"lr = {args.lr}\n"
            'direction = "mr_to_ct"\nvalidate_every = 250\ncheckpoint_every = 500\nseed = 0\n'
        )
        card = run / "model.json"
        if not card.is_file():
            intermodal("train", "--config", str(config), "--overwrite")
        elif json.loads(card.read_text())["training"]["steps"] < args.steps:
            intermodal("train", "--config", str(config), "--resume")  # an interrupted run
        models[loss] = run / "model.safetensors"
    rows = evaluate(raw / "dataset.json", models, args.refine)
    pairs = len(next(iter(rows.values())))
    section = render(rows, args, pairs)
    write_section(args.results, BEGIN, END, section)
    print(section)


if __name__ == "__main__":
    main()
