"""Issue 24's targets for the learned models, measured side by side on held-out data.

Subcommands (each writes ``benchmarks/measured/training/<name>.json``: every case's row, the
means, the command, the date, the machine and the model's card summary):

``network``
    The network alone after the initial alignment, against the initial alignment alone.
    Both start from ``register``'s own initial alignment (``--model none --refine 0``). The
    network then runs as ``register`` runs it (at its trained spacing, on the fixed image and
    the aligned moving image), but *without* ``register``'s guard, so that what the network
    does is seen even where the guard would drop it; the guarded result (``--refine 0`` with
    the model) is scored too. Sets:

    - ``synth``: inter-subject pairs of synthetic pelvis subjects (MR of subject ``2k + 1``
      onto the CT of subject ``2k``, :mod:`intermodal.data.synth`, dataset seed 7). The
      bundled models are trained without the pelvis source, so this anatomy is unseen.
      Scored by the mean Dice of bone, bladder, prostate and rectum.
    - ``rendered`` (3D): :mod:`intermodal.data.realistic`'s held-out rendered cases (real CT
      tissue maps rendered as MR, known motion), Dice of fat, soft tissue and bone where the
      truth lands in the MR's field of view, and the mapping error (mm) in the body.
    - ``real_motion`` (3D) and ``slices_2d`` (2D): the real pair moved by a known motion;
      the error (mm, body voxels) against the known motion composed with the same method's
      result on the unmoved pair (the realistic sets' relative truth).

    The realistic sets need ``../shared/data/mridir``; without it they are skipped and the
    JSON says why.

``register``
    The whole ``register`` with the model against ``--model none`` (the defaults otherwise):
    Dice, mapping error and seconds per case, on the same cases, alternating the methods.
    With the model it runs twice: as the default does (the refinement takes
    ``steps_after_network`` of its steps after a kept field), and with every step.

``runs``
    Two or more training runs of one recipe that differ in one setting (e.g. ``loss.name``
    intra against mi: the paper's claim), compared by their own validation histories at the
    steps all of them reached: the generator's held-out validation pairs (random shapes, and
    the pelvis none of them trained on), Dice of the warped labels.

``throughput``
    Training steps per second of the bundled configuration's network against VoxelMorph's
    ``VxmPairwise`` (defaults) at the same input size and batch, one step being the same for
    both (forward on the inter-modality pair, warp subject i's CT and MR, LNCC + LNCC +
    diffusion, backward, Adam); timed in alternating blocks, medians over blocks.

Usage::

    .venv/bin/python benchmarks/training.py network --dim 3 --model general3d --cases 3
    .venv/bin/python benchmarks/training.py register --dim 2 --model general2d --cases 4
    .venv/bin/python benchmarks/training.py throughput --dim 3
    .venv/bin/python benchmarks/training.py runs --dim 2 --runs build/bundled/general2d/run \
        build/intra_vs_mi/general2d_mi --tag intra_vs_mi

Case counts are small (the CPU is shared); each JSON says how many.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "measured" / "training"
SYNTH_SEED = 7
"""Dataset seed of the held-out synthetic subjects (the old pelvis models used seed 1)."""
TUNING_SYNTH_SEED = 6
"""Dataset seed of the synthetic subjects of ``--split tuning``, for choosing a default."""
SYNTH_ORGANS = {"bone": 2, "bladder": 3, "prostate": 4, "rectum": 5}
ERROR_POINTS = 4000
"""Body voxels sampled (fixed seed) to measure a mapping error."""


# --------------------------------------------------------------------------- cases


class Case(dict):
    """``name``, ``fixed``, ``moving``; optionally ``fixed_labels``, ``moving_labels``,
    ``label_values``, ``region`` (fixed-grid mask where Dice is scored), ``body`` (where the
    error is), ``truth`` (absolute mapping) or ``relative`` (the realistic case, scored against
    the method's result on its unmoved pair), ``mm_per_unit``."""


def synth_cases(dim: int, count: int, split: str = "heldout") -> Iterator[Case]:
    from intermodal.data.synth import SEED_STRIDE, generate_subject

    seed = SYNTH_SEED if split == "heldout" else TUNING_SYNTH_SEED
    for k in range(count):
        fixed = generate_subject(seed * SEED_STRIDE + 2 * k, dim=dim)
        moving = generate_subject(seed * SEED_STRIDE + 2 * k + 1, dim=dim)
        yield Case(
            name=f"synth{dim}d-{k}",
            fixed=fixed.ct,
            moving=moving.mr,
            fixed_labels=fixed.ct_labels,
            moving_labels=moving.mr_labels,
            label_values=SYNTH_ORGANS,
        )


def realistic_cases(set_name: str, count: int, split: str = "heldout") -> Iterator[Case]:
    from intermodal.data import realistic

    for index in range(count):
        case = realistic.make_case(set_name, split, index)
        if case.kind == "png":
            continue  # 8-bit pictures without spacing: not what the network's spacing means
        row = Case(name=case.name, fixed=case.fixed, moving=case.moving, body=case.body)
        row["mm_per_unit"] = case.moving_mm_per_unit
        if case.truth is not None:
            row["truth"] = case.truth
        else:
            row["relative"] = case
        if case.fixed_labels is not None:
            row["fixed_labels"] = case.fixed_labels
            row["moving_labels"] = case.moving_labels
            row["label_values"] = dict(realistic.DICE_LABELS)
            row["region"] = case.label_region
        yield row


def cases_of(
    set_name: str, dim: int, count: int, split: str = "heldout"
) -> tuple[list[Case], str | None]:
    """The cases of a set's ``split``, or ``([], reason)`` when they cannot be made here."""
    if set_name == "synth":
        return list(synth_cases(dim, count, split)), None
    from intermodal.data import realistic

    try:
        realistic.real_pair_dir()
    except realistic.RealPairMissing as error:
        return [], f"skipped: {error}"
    return list(realistic_cases(set_name, count, split)), None


# --------------------------------------------------------------------------- scores


def dice(fixed_labels: sitk.Image, warped: sitk.Image, values: dict, region: Any) -> dict:
    a = sitk.GetArrayViewFromImage(fixed_labels)
    b = sitk.GetArrayViewFromImage(warped)
    inside = np.ones(a.shape, bool) if region is None else sitk.GetArrayViewFromImage(region) > 0
    scores = {}
    for name, value in values.items():
        in_a, in_b = (a == value) & inside, (b == value) & inside
        total = int(in_a.sum() + in_b.sum())
        if total:
            scores[name] = 2 * float((in_a & in_b).sum()) / total
    return {"dice": float(np.mean(list(scores.values()))), "dice_per_label": scores}


def body_points(case: Case) -> np.ndarray:
    """Up to :data:`ERROR_POINTS` physical points (mm) of the body mask, a fixed sample."""
    mask = case["body"]
    index = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1]
    rng = np.random.default_rng(0)
    if len(index) > ERROR_POINTS:
        index = index[rng.choice(len(index), ERROR_POINTS, replace=False)]
    return np.array([mask.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in index])


def mapping_error(case: Case, transform: sitk.Transform, expected: sitk.Transform) -> float:
    points = body_points(case)
    got = np.array([transform.TransformPoint(p.tolist()) for p in points])
    want = np.array([expected.TransformPoint(p.tolist()) for p in points])
    return float(np.linalg.norm(got - want, axis=1).mean() * case.get("mm_per_unit", 1.0))


def score(case: Case, transform: sitk.Transform, reference: sitk.Transform | None) -> dict:
    """Dice (label cases) and mapping error (cases with a truth) of one method on one case."""
    row: dict[str, Any] = {}
    if "fixed_labels" in case:
        warped = sitk.Resample(
            case["moving_labels"], case["fixed_labels"], transform, sitk.sitkNearestNeighbor
        )
        row.update(dice(case["fixed_labels"], warped, case["label_values"], case.get("region")))
    if "truth" in case:
        row["error_mm"] = mapping_error(case, transform, case["truth"])
    elif "relative" in case and reference is not None:
        from intermodal.data.realistic import expected_mapping

        row["error_mm"] = mapping_error(
            case, transform, expected_mapping(case["relative"], reference)
        )
    return row


# --------------------------------------------------------------------------- methods


_ALIGNED: dict[tuple[int, int], sitk.Transform] = {}


def initial_alignment(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """``register``'s own initial alignment: ``--model none --refine 0``, everything default.

    Kept for the pair (the same image objects), so the methods of one case share it.
    """
    from intermodal.registration import preset_settings, register

    key = (id(fixed), id(moving))
    if key not in _ALIGNED:
        _ALIGNED.clear()
        settings = preset_settings(
            "default", fixed.GetDimension(), model=None, refine=0, device="cpu"
        )
        _ALIGNED[key] = register(fixed, moving, settings).transform
    return _ALIGNED[key]


def network_alone(model_path: str, fixed: sitk.Image, moving: sitk.Image, init: sitk.Transform):
    """The network's mapping after ``init``, with no guard: ``x -> init(x + u(x))``.

    As ``register`` runs it: both images scaled to [0, 1] (the card's HU window and MR
    percentiles), resampled at the card's spacing over the fixed image (padded to the network's
    multiple), the moving image through ``init``; ``u`` is the network's displacement there.
    """
    from intermodal import preprocess
    from intermodal.checkpoint import load_model
    from intermodal.io import displacement_to_image, image_to_tensor
    from intermodal.spatial import voxel_to_physical

    model, card = load_model(model_path, device="cpu")
    scaling = card["preprocessing"]["normalisation"]

    def low_high(text: str) -> tuple[float, float]:  # "HU window -1000..1000"
        low, high = text.split()[-1].split("..")
        return float(low), float(high)

    def unit(image: sitk.Image) -> sitk.Image:
        decision = preprocess.decide_modality(image, "auto")
        return preprocess.normalize_intensity(
            image,
            decision.modality,
            hu_window=low_high(scaling["ct"]),
            percentiles=low_high(scaling["mr"]),
            hu_offset=decision.hu_offset,
        )

    grid = preprocess.working_grid(fixed, card["preprocessing"]["spacing"], model.required_multiple)
    fixed_t = image_to_tensor(preprocess.resample(unit(fixed), grid))
    moving_t = image_to_tensor(preprocess.resample(unit(moving), grid, init))
    with torch.no_grad():
        displacement = model(fixed_t, moving_t).displacement
    physical = voxel_to_physical(displacement, grid.GetSpacing(), grid.GetDirection())
    field = sitk.Cast(displacement_to_image(physical, grid), sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform(fixed.GetDimension())
    composite.AddTransform(init)
    composite.AddTransform(sitk.DisplacementFieldTransform(field))
    return composite


def registered(model: str | None, **settings: Any) -> Callable:
    """A method: ``register`` with ``model``, the default preset for the images' dimension
    otherwise (as the command line runs it), and ``settings`` over it."""
    from intermodal.registration import preset_settings, register

    def run(fixed: sitk.Image, moving: sitk.Image) -> tuple[sitk.Transform, dict]:
        chosen = preset_settings(
            "default", fixed.GetDimension(), model=model, device="cpu", **settings
        )
        result = register(fixed, moving, chosen)
        network = result.report.get("stages", {}).get("network", {})
        return result.transform, {"network_kept": network.get("kept")}

    return run


# --------------------------------------------------------------------------- runs


def run_methods(cases: list[Case], methods: dict[str, Callable]) -> list[dict]:
    """Every method on every case (methods alternate within a case), with references."""
    references: dict[tuple[str, str], sitk.Transform] = {}
    rows = []
    for case in cases:
        row: dict[str, Any] = {"case": case["name"]}
        for name, method in methods.items():
            reference = None
            relative = case.get("relative")
            if relative is not None:
                key = (name, relative.reference_key)
                if key not in references:
                    from intermodal.data.realistic import reference_pair

                    references[key] = method(*reference_pair(relative.reference_key))[0]
                reference = references[key]
            started = time.perf_counter()
            transform, extra = method(case["fixed"], case["moving"])
            seconds = time.perf_counter() - started
            row[name] = {**score(case, transform, reference), **extra, "seconds": seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summary(rows: list[dict], methods: list[str]) -> dict:
    out: dict[str, Any] = {}
    for name in methods:
        entries = [r[name] for r in rows if name in r]
        means = {}
        for key in ("dice", "error_mm", "seconds"):
            values = [e[key] for e in entries if key in e]
            if values:
                means[key] = float(np.mean(values))
        kept = [e["network_kept"] for e in entries if e.get("network_kept") is not None]
        if kept:
            means["network_kept"] = f"{sum(kept)}/{len(kept)}"
        out[name] = means
    return out


def network_benchmark(args: argparse.Namespace) -> dict:
    from intermodal.models import resolve_model

    model_path = resolve_model(args.model, args.dim)
    sets = args.sets or (
        ["synth", "rendered", "real_motion"] if args.dim == 3 else ["synth", "slices_2d"]
    )

    def init_only(fixed, moving):
        return initial_alignment(fixed, moving), {}

    def network(fixed, moving):
        return network_alone(model_path, fixed, moving, initial_alignment(fixed, moving)), {}

    methods = {
        "initial alignment": init_only,
        "network (no guard)": network,
        "network (register's guard)": registered(model_path, refine=0),
    }
    results: dict[str, Any] = {"model": str(model_path), "sets": {}}
    for set_name in sets:
        cases, reason = cases_of(set_name, args.dim, args.cases, args.split)
        if reason:
            results["sets"][set_name] = {"skipped": reason}
            continue
        rows = run_methods(cases, methods)
        means = summary(rows, list(methods))
        gain = {}
        for key in ("dice", "error_mm"):
            if key in means["initial alignment"]:
                gain[key] = means["network (no guard)"][key] - means["initial alignment"][key]
        results["sets"][set_name] = {
            "cases": len(rows),
            "rows": rows,
            "means": means,
            "network_gain": gain,
        }
    return results


EVERY_STEP = "with the model, every step"
"""The ``register`` benchmark's model run followed by all of the refinement's steps."""


def register_benchmark(args: argparse.Namespace) -> dict:
    from intermodal.models import resolve_model

    model_path = resolve_model(args.model, args.dim)
    sets = args.sets or (["synth", "rendered"] if args.dim == 3 else ["synth", "slices_2d"])
    from intermodal.registration import preset_settings

    default = preset_settings("default", args.dim).refine_steps
    # the model replaces refinement steps (Settings.steps_after_network): the default, and the
    # same model followed by every step
    methods = {
        "model none": registered(None),
        "with the model": registered(model_path),
        EVERY_STEP: registered(model_path, steps_after_network=1.0),
    }
    results: dict[str, Any] = {"model": str(model_path), "default_refine": default, "sets": {}}
    for set_name in sets:
        cases, reason = cases_of(set_name, args.dim, args.cases, args.split)
        if reason:
            results["sets"][set_name] = {"skipped": reason}
            continue
        rows = run_methods(cases, methods)
        means = summary(rows, list(methods))
        without = means["model none"]
        against_none = {}
        for name in list(methods)[1:]:
            against_none[name] = {
                "time_ratio": means[name]["seconds"] / without["seconds"],
                **{
                    f"{key}_difference": means[name][key] - without[key]
                    for key in ("dice", "error_mm")
                    if key in without
                },
            }
        results["sets"][set_name] = {
            "cases": len(rows),
            "rows": rows,
            "means": means,
            "against_model_none": against_none,
        }
    return results


# --------------------------------------------------------------------------- throughput


def throughput_benchmark(args: argparse.Namespace) -> dict:
    from voxelmorph.nn.models import VxmPairwise
    from voxelmorph.nn.modules import SpatialTransformer

    from intermodal.losses import diffusion, lncc
    from intermodal.networks import RegistrationModel
    from intermodal.spatial import warp
    from intermodal.training.config import load_config

    config = load_config(REPO / "configs" / f"general{args.dim}d.toml")
    # VxmPairwise's defaults need multiples of 32 (48^3 fails): the bundled grid rounded up to
    # one (40^3 -> 64^3; 64^2 stays), the same for both networks
    shape = tuple(-(-n // 32) * 32 for n in config.generator.shape)
    batch = config.train.batch_size
    ndim = len(shape)
    torch.manual_seed(0)
    ours = RegistrationModel(
        ndim,
        features=tuple(config.model.features),
        output_stride=config.model.output_stride,
        integration_steps=config.model.integration_steps,
    )
    theirs = VxmPairwise(ndim, 1, 1)
    transformer = SpatialTransformer()

    def ours_forward(fixed, moving):
        displacement = ours(fixed, moving).displacement
        return displacement, lambda image: warp(image, displacement)

    def theirs_forward(fixed, moving):
        displacement = theirs(moving, fixed)
        return displacement, lambda image: transformer(image, displacement)

    generator = torch.Generator().manual_seed(0)
    moving_ct, moving_mr, fixed_ct, fixed_mr = (
        torch.rand((batch, 1, *shape), generator=generator) for _ in range(4)
    )

    def make_step(network: torch.nn.Module, forward: Callable) -> Callable:
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)

        def step() -> None:
            displacement, apply = forward(fixed_ct, moving_mr)
            loss = (
                lncc(fixed_ct, apply(moving_ct), 9)
                + lncc(fixed_mr, apply(moving_mr), 9)
                + diffusion(displacement)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    steps = {
        "intermodal": make_step(ours, ours_forward),
        "voxelmorph": make_step(theirs, theirs_forward),
    }
    for step in steps.values():
        step()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.blocks):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[name].append(args.steps / (time.perf_counter() - started))
    ratios = [a / b for a, b in zip(rates["intermodal"], rates["voxelmorph"])]
    import voxelmorph

    return {
        "shape": list(shape),
        "bundled_shape": list(config.generator.shape),
        "batch": batch,
        "intermodal_network": ours.config(),
        "voxelmorph": f"VxmPairwise({ndim}, 1, 1), {getattr(voxelmorph, '__version__', '?')}",
        "parameters": {
            "intermodal": sum(p.numel() for p in ours.parameters()),
            "voxelmorph": sum(p.numel() for p in theirs.parameters()),
        },
        "steps_per_s": {name: statistics.median(r) for name, r in rates.items()},
        "steps_per_s_blocks": rates,
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "loss_scales_note": "both use LNCC at full resolution only here (the bundled recipe adds "
        "2x and 4x block averages, a small cost next to the network)",
    }


# --------------------------------------------------------------------------- runs


def runs_benchmark(args: argparse.Namespace) -> dict:
    histories, settings = {}, {}
    for folder in args.runs:
        run = Path(folder)
        entries = json.loads((run / "history.json").read_text(encoding="utf-8"))
        histories[str(run)] = {e["step"]: e for e in entries if "validation/dice" in e}
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        settings[str(run)] = {"loss": config["loss"], "train": config["train"]}
    common = sorted(set.intersection(*(set(h) for h in histories.values())))
    table = [
        {
            "step": step,
            **{
                name: {
                    "dice": h[step]["validation/dice"],
                    "held_out_dice": h[step].get("validation/held_out_dice"),
                }
                for name, h in histories.items()
            },
        }
        for step in common
    ]
    return {
        "runs": settings,
        "steps_compared": common,
        "validation": table,
        "note": "validation pairs of the generator's validation seed: shapes (the training "
        "distribution) and pelvis (never trained on); each run's own 'no motion' score is in "
        "its card (validation_identity)",
    }


# --------------------------------------------------------------------------- main


def card_summary(model: str, dim: int) -> dict:
    from intermodal.checkpoint import read_card
    from intermodal.models import resolve_model

    card = read_card(resolve_model(model, dim))
    training = card.get("training", {})
    return {
        "network": card.get("network"),
        "spacing": card.get("preprocessing", {}).get("spacing"),
        "steps": training.get("steps"),
        "wall_time_s": training.get("wall_time_s"),
        "best": training.get("best"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("network", "register", "throughput", "runs"))
    parser.add_argument("--runs", nargs="*", default=[], help="runs: the run folders")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=3)
    parser.add_argument("--model", default=None, help="bundled name or .safetensors path")
    parser.add_argument("--cases", type=int, default=3, help="cases per set")
    parser.add_argument("--sets", nargs="*", help="synth, rendered, real_motion, slices_2d")
    parser.add_argument("--blocks", type=int, default=3, help="throughput: alternating blocks")
    parser.add_argument("--steps", type=int, default=3, help="throughput: steps per block")
    parser.add_argument(
        "--split", choices=("heldout", "tuning"), default="heldout",
        help="the cases: held out (reported), or tuning (for choosing a default)",
    )  # fmt: skip
    parser.add_argument("--tag", default="", help="added to the output file's name")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or f"general{args.dim}d"
    args.model = model
    from intermodal.registration import preset_settings

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    # at the start: the shared tree may change while this runs
    preset = dataclasses.asdict(preset_settings("default", args.dim))
    started = time.perf_counter()
    if args.what == "network":
        results = network_benchmark(args)
    elif args.what == "register":
        results = register_benchmark(args)
    elif args.what == "runs":
        results = runs_benchmark(args)
    else:
        results = throughput_benchmark(args)
    record = {
        "benchmark": args.what,
        # the tree may hold uncommitted changes; the preset is what register ran with
        "git_head": commit,
        "preset": preset,
        "dim": args.dim,
        "command": "python benchmarks/training.py " + " ".join(argv or sys.argv[1:]),
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M}Z",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "note": "2 cores shared with other jobs: times are indicative only",
        },
        "wall_s": time.perf_counter() - started,
        **(
            {"model_card": card_summary(model, args.dim)}
            if args.what in ("network", "register")
            else {}
        ),
        **results,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    # a tuning run is for choosing, never a reported row: its file is not one tables.py reads
    prefix = "tuning_" if args.split == "tuning" else ""
    name = f"{prefix}{args.what}_{args.dim}d{'_' + args.tag if args.tag else ''}.json"
    (OUT / name).write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
