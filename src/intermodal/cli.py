"""The ``intermodal`` command: thin wrappers that parse, call the library, and summarise.

Heavy imports (torch, SimpleITK) happen inside the commands so that ``--help`` is instant.
Any :class:`~intermodal.errors.IntermodalError` ends the command with one line on stderr and
exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from intermodal import __version__
from intermodal.models import default_models_in_words
from intermodal.presets import INIT_CHOICES, PRESET_NAMES

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class _Reporter:
    """Progress on stderr: a line per stage and a bar for refinement; silent with --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None

    def __call__(self, stage: str, step: int, total: int) -> None:
        if self.quiet:
            return
        if total == 0:
            self.close()
            print(f"intermodal: {stage}", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"intermodal: {stage}", file=sys.stderr, leave=False)
        self.bar.update(step - self.bar.n)
        if step >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")


class _LibraryChoices(Sequence[str]):
    """The choices of an option, read from the library module that defines them when first
    needed (parsing that option, or its help), so that building the parser imports no torch."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def _values(self) -> Sequence[str]:
        return getattr(importlib.import_module(self.module), self.name)

    def __getitem__(self, index):  # type: ignore[override]
        return self._values()[index]

    def __len__(self) -> int:
        return len(self._values())

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())


def _add_library_choice(
    parser: argparse.ArgumentParser, flag: str, choices: _LibraryChoices, help: str
) -> None:
    """An option of library-defined ``choices``, None when not given."""
    # The choices are set after add_argument, which formats the option's metavar to check it
    # and so would read them (importing their module) while the parser is built.
    parser.add_argument(flag, default=None, help=help).choices = choices


_DEVICES = _LibraryChoices("intermodal.registration", "DEVICE_CHOICES")
_SIMILARITIES = _LibraryChoices("intermodal.refinement", "SIMILARITY_CHOICES")
_MODALITIES = _LibraryChoices("intermodal.preprocess", "MODALITY_CHOICES")


class _LibraryValues(dict):
    """``{name}`` in a help text: the default of the setting ``name``
    (:class:`~intermodal.registration.Settings`), else the constant of that name in
    :mod:`intermodal.registration`, :mod:`intermodal.preprocess` or
    :mod:`intermodal.data.prepare`."""

    def __missing__(self, name: str) -> str:
        from intermodal import preprocess, registration
        from intermodal.data import prepare

        settings = registration.Settings()
        if hasattr(settings, name):
            value = getattr(settings, name)
        else:
            module = next(m for m in (registration, preprocess, prepare) if hasattr(m, name))
            value = getattr(module, name)
        if isinstance(value, (tuple, list)):
            return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)


class _LibraryHelp(argparse.HelpFormatter):
    """Fills a help text's ``{name}`` fields from the library (:class:`_LibraryValues`) when
    the help is shown: the defaults shown are the library's, and ``intermodal --help`` stays
    instant (a command's own ``--help`` imports the library, as running it does)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text is None:
            return None
        values = _LibraryValues()
        return re.sub(r"\{(\w+)\}", lambda field: values[field.group(1)], text)


def _add_registration_options(parser: argparse.ArgumentParser) -> None:
    # Every setting's option defaults to None, "not given": the preset's value, else the
    # Settings default, applies (_settings); the help shows those defaults (_LibraryHelp).
    parser.add_argument(
        "--preset", default=PRESET_NAMES[0], choices=PRESET_NAMES,
        help="named settings that the options below override (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--model",
        default=None,
        help=f"'default' ({default_models_in_words()}), 'none' (refinement alone), 'auto' (the "
        "bundled model for the images' dimension), a bundled model's name, or a .safetensors "
        "model path; a model's field is kept only if it improves the similarity",
    )
    parser.add_argument(
        "--refine", type=int, default=None, metavar="N",
        help="test-time optimisation steps (0 with --model none: the initial alignment "
        "alone; default {refine})",
    )  # fmt: skip
    parser.add_argument(
        "--steps-after-network", type=float, default=None, metavar="SHARE",
        help="the share of the refinement's steps taken when the network's field is kept "
        "(1: every step; default {steps_after_network})",
    )  # fmt: skip
    parser.add_argument(
        "--level-steps", type=_level_steps, default=None, metavar="N,N,N",
        help="steps at each refinement level, coarse to fine (default levels: {pyramid}), "
        "instead of --refine shared equally; e.g. 6,6",
    )  # fmt: skip
    parser.add_argument(
        "--integration-steps", type=int, default=None, metavar="N",
        help="scaling-and-squaring steps that turn the velocity into the deformation "
        "(default: a model card's, else {DEFAULT_INTEGRATION_STEPS})",
    )  # fmt: skip
    parser.add_argument(
        "--init", default=None, choices=INIT_CHOICES,
        help="initial alignment (default {init}; rigid and affine start from several rotations)",
    )  # fmt: skip
    parser.add_argument(
        "--trust-orientation", dest="search_orientation", action="store_const", const=False,
        default=None,
        help="do not try a 3D moving image turned 180 degrees about each axis (by default a "
        "turn that fits better is kept, with a warning: scans stored head first against feet "
        "first)",
    )  # fmt: skip
    _add_library_choice(parser, "--device", _DEVICES, "where to compute (default {device})")
    parser.add_argument(
        "--spacing", type=float, default=None,
        help="working spacing in mm (default: {DEFAULT_SPACING_3D} mm in 3D, native in 2D)",
    )  # fmt: skip
    _add_library_choice(
        parser, "--similarity", _SIMILARITIES,
        "refinement similarity (default {similarity}); mind: MIND-SSC; mi: mutual "
        "information, what ANTs and elastix optimise, which scored higher NMI on the real "
        "CT/MR pair but lower organ Dice on the synthetic tuning pairs (benchmarks/RESULTS.md)",
    )  # fmt: skip
    parser.add_argument(
        "--mi-weight", type=float, default=None, metavar="W",
        help="weight of a mutual-information term (nats) added to the mind or ngf similarity "
        "(default {mi_weight})",
    )  # fmt: skip
    parser.add_argument(
        "--smoothness", type=float, default=None, metavar="W",
        help="weight of the refinement's diffusion regulariser (default {smoothness})",
    )  # fmt: skip
    parser.add_argument(
        "--velocity-smoothing", type=float, default=None, metavar="SIGMA",
        help="Gaussian sigma (velocity-grid voxels) of the refined velocity "
        "(default {velocity_smoothing})",
    )  # fmt: skip
    parser.add_argument(
        "--volume-penalty", type=float, default=None, metavar="W",
        help="weight of the mean squared log Jacobian in the refinement "
        "(default {volume_penalty})",
    )  # fmt: skip
    parser.add_argument(
        "--sampling", type=float, default=None, metavar="FRACTION",
        help="fraction of voxels, drawn afresh each step, where the refinement evaluates "
        "MIND or MI (1: all; smaller is faster; default {sampling})",
    )  # fmt: skip
    parser.add_argument(
        "--max-samples", type=int, default=None, metavar="N",
        help="at most N voxels a step for MIND or MI, whatever --sampling gives "
        "(default {max_samples})",
    )  # fmt: skip
    for side in ("fixed", "moving"):
        _add_library_choice(
            parser, f"--{side}-modality", _MODALITIES,
            f"the {side} image's modality (default {{{side}_modality}})",
        )  # fmt: skip
    parser.add_argument(
        "--hu-window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
        help="CT intensity window in HU (default: a model card's, else {DEFAULT_HU_WINDOW})",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of every random choice (default {seed})"
    )


def _level_steps(text: str) -> tuple[int, ...]:
    """``"6,6,12"`` -> ``(6, 6, 12)``, for ``--level-steps``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, e.g. 6,6,12, not {text!r}"
        ) from None


# options that, when given, override the preset's value of the setting of the same name
_PRESET_OVERRIDES = (
    "refine", "steps_after_network", "level_steps", "integration_steps", "init",
    "search_orientation", "device",
    "spacing", "similarity", "smoothness", "velocity_smoothing", "volume_penalty", "sampling",
    "max_samples", "mi_weight", "fixed_modality", "moving_modality", "seed",
)  # fmt: skip


def _settings(args: argparse.Namespace, ndim: int = 3):
    """The registration settings for ``ndim``-D images: ``--preset``, then the options."""
    from intermodal.errors import IntermodalError
    from intermodal.registration import preset_settings

    if args.refine is not None and args.level_steps is not None:
        raise IntermodalError("give --refine or --level-steps, not both")
    overrides = {
        name: value for name in _PRESET_OVERRIDES if (value := getattr(args, name)) is not None
    }
    if args.model is not None:
        overrides["model"] = None if args.model.lower() == "none" else args.model
    if args.hu_window is not None:
        overrides["hu_window"] = tuple(args.hu_window)
    return preset_settings(args.preset, ndim, **overrides)


def _settings_by_dimension(args: argparse.Namespace) -> dict:
    """:func:`_settings` for 2D and for 3D images, each checked (for runs of many pairs)."""
    settings = {ndim: _settings(args, ndim) for ndim in (2, 3)}
    for value in settings.values():
        value.validate()
    return settings


def _check_output_dir(path: Path, overwrite: bool, inputs: Sequence[str | None] = ()) -> None:
    """Before any work: an output folder that can be written (and replaced, with --overwrite)
    without deleting an input (:func:`intermodal.report.check_destination`)."""
    from intermodal.report import check_destination

    check_destination(path, overwrite=overwrite, inputs=inputs)


def _summary(report: dict, out: Path) -> str:
    nmi = report["nmi"]
    jac = report["jacobian"]
    return (
        f"registered in {report['timings_s']['total']:.1f} s: NMI {nmi['before']:.3f} -> "
        f"{nmi['after_initial']:.3f} (initial) -> {nmi['after']:.3f}; "
        f"non-positive Jacobian {100 * jac['nonpositive_fraction']:.3f}%, "
        f"SDlogJ {jac['sdlogj']:.3f}; outputs in {out}"
    )


def cmd_register(args: argparse.Namespace) -> int:
    from intermodal.io import read_image, read_points
    from intermodal.io.dicom import SERIES_KEY
    from intermodal.registration import register
    from intermodal.report import save_result

    out = Path(args.out)
    inputs = [args.fixed, args.moving, args.labels, args.points, args.fixed_mask,
              args.moving_mask, args.fixed_labels, *(args.landmarks or ()),
              *(args.structures or ())]  # fmt: skip
    _check_output_dir(out, args.overwrite, inputs)
    settings = _settings_by_dimension(args)  # checked before any file is read
    fixed = read_image(args.fixed, series=args.fixed_series)
    moving = read_image(args.moving, series=args.moving_series)
    _check_pair(args.fixed, fixed, args.moving, moving)
    labels = read_image(args.labels) if args.labels else None
    points = read_points(args.points) if args.points else None
    ndim = fixed.GetDimension()
    if labels is not None:
        _check_dimension(args.labels, labels.GetDimension(), ndim, "label map")
    if points is not None:
        _check_dimension(args.points, points.shape[1], ndim, "points file")
    fixed_labels = _read_fixed_labels(args.fixed_labels, labels, fixed)
    landmarks = _read_landmarks(args.landmarks)
    for path, listed in zip(args.landmarks or (), landmarks or (), strict=True):
        _check_dimension(path, listed.shape[1], ndim, "landmarks file")
    masks = {
        f"{name}_mask": _read_mask(path, image)
        for name, path, image in (
            ("fixed", args.fixed_mask, fixed),
            ("moving", args.moving_mask, moving),
        )
        if path
    }
    _check_dicom_request(args, fixed, moving)
    reporter = _Reporter(args.quiet)
    result = register(fixed, moving, settings[fixed.GetDimension()], progress=reporter, **masks)
    reporter.close()
    # absolute, so that `gui --result` and `export-dicom` find the inputs from any folder
    named = {
        "fixed": args.fixed,
        "moving": args.moving,
        "labels": args.labels,
        "points": args.points,
        "fixed_mask": args.fixed_mask,
        "moving_mask": args.moving_mask,
    }
    extra = {
        "inputs_paths": {
            role: None if path is None else str(Path(path).absolute())
            for role, path in named.items()
        },
        # the DICOM series read, so that export-dicom refuses another one of the same grid
        "inputs_series": {
            role: image.GetMetaData(SERIES_KEY) if image.HasMetaDataKey(SERIES_KEY) else None
            for role, image in (("fixed", fixed), ("moving", moving))
        },
    }
    save_result(
        result, out, overwrite=args.overwrite, labels=labels, points=points, extra_report=extra
    )
    if fixed_labels is not None or landmarks is not None:
        _add_qa_measures(out, result, labels, fixed_labels, landmarks)
    print(_summary(result.report, out))
    if args.dicom:
        _export_dicom(args, out, overwrite=False)
    return 0


def _check_pair(fixed_path: str, fixed, moving_path: str, moving) -> None:
    """Before registering: two images of one dimension, neither constant, the fixed one with 2
    voxels or more along each axis (its grid carries the field's derivatives)."""
    import SimpleITK as sitk

    from intermodal.errors import IntermodalError

    if min(fixed.GetSize()) < 2:
        raise IntermodalError(
            f"{fixed_path}: {fixed.GetSize()} voxels; the fixed image needs 2 or more along "
            "each axis (store a single slice as a 2D image)"
        )
    _check_dimension(moving_path, moving.GetDimension(), fixed.GetDimension(), "image")
    for path, image in ((fixed_path, fixed), (moving_path, moving)):
        values = sitk.GetArrayViewFromImage(image)
        if values.min() == values.max():
            raise IntermodalError(
                f"{path}: every voxel has the value {values.min():g}; it shows nothing to register"
            )


def _check_dimension(path: str, found: int, ndim: int, what: str) -> None:
    """A ``found``-D input beside ``ndim``-D images: refused, naming the file."""
    from intermodal.errors import IntermodalError

    if found != ndim:
        raise IntermodalError(f"{path}: a {found}D {what}, but the fixed image is {ndim}D")


def _read_fixed_labels(path: str | None, labels, fixed):
    """``--fixed-labels``, checked before registering: on the fixed grid, with ``--labels``."""
    if path is None:
        return None
    from intermodal.errors import IntermodalError
    from intermodal.grids import same_grid
    from intermodal.io import read_image

    if labels is None:
        raise IntermodalError(f"{path}: --fixed-labels needs --labels (the moving image's labels)")
    image = read_image(path)
    if not same_grid(image, fixed, tolerance=1e-3):
        raise IntermodalError(f"{path}: the fixed labels are not on the fixed image's grid")
    return image


def _read_landmarks(paths):
    """``--landmarks FIXED MOVING``: two point lists of one length, checked before registering."""
    if not paths:
        return None
    from intermodal.errors import IntermodalError
    from intermodal.io import read_points

    fixed_points, moving_points = (read_points(path) for path in paths)
    if fixed_points.shape != moving_points.shape:
        raise IntermodalError(
            f"{paths[1]}: {len(moving_points)} landmarks against {len(fixed_points)} in "
            f"{paths[0]}; the two files must list the same landmarks in the same order"
        )
    return fixed_points, moving_points


def _add_qa_measures(out: Path, result, labels, fixed_labels, landmarks) -> None:
    """Label agreement and TRE into the QA report (qa.json, report.html) of ``out``."""
    import numpy as np
    import SimpleITK as sitk

    from intermodal.dicom.export import roi_agreement
    from intermodal.qa_report import landmark_measures, largest_voxel, write_qa_report

    agreement = None
    if fixed_labels is not None:
        warped = sitk.GetArrayFromImage(result.warp_image(labels, labels=True))
        target = sitk.GetArrayFromImage(fixed_labels)
        values = sorted((set(np.unique(target)) & set(np.unique(warped))) - {0})
        names = {f"label {int(v)}": v for v in values}
        agreement = roi_agreement(
            {"fixed": {name: warped == v for name, v in names.items()}, "moving": {}},
            {"fixed": {name: target == v for name, v in names.items()}, "moving": {}},
            result.fixed, result.moving,
        )  # fmt: skip
    measured = None
    if landmarks is not None:
        measured = landmark_measures(
            result.transform, *landmarks, largest_voxel(result.fixed, result.moving)
        )
    write_qa_report(out, agreement=agreement, landmarks=measured)


def _read_mask(path: str, image):
    """A user's mask, checked to lie on ``image``'s grid and to hold a foreground voxel."""
    import numpy as np
    import SimpleITK as sitk

    from intermodal.errors import IntermodalError
    from intermodal.grids import same_grid
    from intermodal.io import read_image

    mask = read_image(path)
    if not same_grid(mask, image, tolerance=1e-3):
        size = "x".join(str(n) for n in mask.GetSize())
        wanted = "x".join(str(n) for n in image.GetSize())
        raise IntermodalError(
            f"{path}: the mask is not on its image's grid ({size} voxels against {wanted}, or "
            "another spacing, origin or direction); resample it onto the image first"
        )
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        raise IntermodalError(f"{path}: the mask has no foreground voxel (all zero)")
    return mask


def _add_dicom_options(parser: argparse.ArgumentParser, *, export: bool = False) -> None:
    if not export:
        parser.add_argument(
            "--dicom", action="store_true", help="also write DICOM into OUT/dicom/ (DICOM inputs)"
        )
    parser.add_argument(
        "--structures", action="append", default=[], metavar="RTSTRUCT",
        help="RT Structure Set on the moving (or fixed) series to propagate; repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--allow-different-patients", action="store_true",
        help="write DICOM even when the inputs' PatientID or PatientName differ",
    )  # fmt: skip


def _check_dicom_request(args: argparse.Namespace, fixed, moving) -> None:
    """Before registering: the DICOM inputs, patients and structure sets --dicom will need."""
    from intermodal.errors import IntermodalError

    if args.structures and not args.dicom:
        raise IntermodalError("--structures needs --dicom (or run 'intermodal export-dicom')")
    if not args.dicom:
        return
    for name in ("fixed", "moving"):
        if not Path(getattr(args, name)).is_dir():
            raise IntermodalError(f"{getattr(args, name)}: --dicom needs a DICOM series folder")
    from intermodal.dicom import check_dicom_inputs

    check_dicom_inputs(
        args.fixed, args.moving, fixed_series=args.fixed_series,
        moving_series=args.moving_series, structures=tuple(args.structures),
        allow_different_patients=args.allow_different_patients,
        images={"fixed": fixed, "moving": moving},
    )  # fmt: skip


def _export_dicom(args: argparse.Namespace, out: Path, *, overwrite: bool) -> None:
    from intermodal.dicom import export_dicom

    summary = export_dicom(
        out, fixed=args.fixed, moving=args.moving, fixed_series=args.fixed_series,
        moving_series=args.moving_series, structures=tuple(args.structures),
        overwrite=overwrite, allow_different_patients=args.allow_different_patients,
        landmarks=getattr(args, "landmarks", None),
    )  # fmt: skip
    kind = "deformable" if summary.deformable else "matrix"
    print(
        f"DICOM in {summary.folder}: {len(summary.series_files)} slices, a {kind} spatial "
        f"registration, {len(summary.structure_sets)} structure set(s)"
        + (f"; skipped ROIs without usable contours: {', '.join(summary.skipped_rois)}"
           if summary.skipped_rois else "")
    )  # fmt: skip


def cmd_export_dicom(args: argparse.Namespace) -> int:
    _export_dicom(args, Path(args.result), overwrite=args.overwrite)
    return 0


def cmd_warp(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from intermodal.io import read_image, read_transform, write_image
    from intermodal.registration import apply_transform

    fixed = read_image(args.fixed)
    image = read_image(args.image)
    transform = read_transform(args.transform, fixed.GetDimension())
    _check_dimension(args.image, image.GetDimension(), fixed.GetDimension(), "image")
    if args.labels:
        image = sitk.Cast(image, sitk.sitkInt32)
    warped = apply_transform(transform, fixed, image, labels=args.labels)
    path = write_image(warped, args.out, overwrite=args.overwrite)
    print(f"warped {args.image} onto {args.fixed}: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import SimpleITK as sitk

    from intermodal.checkpoint import load_model
    from intermodal.data.synth import LABELS, SEED_STRIDE, generate_subject
    from intermodal.metrics import dice_per_label
    from intermodal.models import resolve_model
    from intermodal.registration import Settings, register
    from intermodal.report import save_result

    out = Path(args.out)
    _check_output_dir(out, args.overwrite)
    refine = args.refine if args.refine is not None else Settings.refine
    model = None if args.model.lower() == "none" else args.model
    device = Settings.device if args.device is None else args.device
    settings = Settings(model=model, refine=refine, device=device)
    settings.validate()  # before the data are made, which takes seconds
    if (path := resolve_model(model, 3)) is not None:
        load_model(path, device="cpu")  # a missing or bad model file: refused now
    start = time.perf_counter()
    # The user's case: one patient's CT, and an MR of the same patient taken another day, in
    # another pose (a known rotation and shift) and with the body changed (a known smooth
    # deformation). Subject 0 of synthetic dataset ``--seed``; the bundled models were trained
    # on dataset seed 1, so the default seed's subject is unseen.
    subject = generate_subject(args.seed * SEED_STRIDE, dim=3)
    ct, ct_labels = subject.ct, subject.ct_labels
    mr, mr_labels = _moved_another_day(subject.mr, subject.mr_labels, args.seed)
    reporter = _Reporter(args.quiet)
    organs = {name: LABELS[name] for name in ("bone", "bladder", "prostate", "rectum")}
    identity = sitk.Transform(3, sitk.sitkIdentity)
    # one label image a stage, and whether register's guard kept that stage
    stages: dict[str, tuple[sitk.Image, bool]] = {
        "before": (sitk.Resample(mr_labels, ct, identity, sitk.sitkNearestNeighbor, 0), True)
    }
    network_only = None
    if model is not None:
        network_only = register(ct, mr, replace(settings, refine=0), progress=reporter)
    result = register(ct, mr, settings, progress=reporter)
    reporter.close()
    affine = sitk.Resample(mr_labels, ct, result.affine, sitk.sitkNearestNeighbor, 0)
    stages[f"{settings.init} alignment"] = (affine, True)
    if network_only is not None:
        kept = bool(network_only.report["stages"]["network"].get("kept"))
        stages["model"] = (network_only.warp_image(mr_labels, labels=True), kept)
    if refine > 0:
        kept = bool(result.report["stages"]["refine"].get("kept"))
        stages["refinement"] = (result.warp_image(mr_labels, labels=True), kept)
    dice = {
        name: dice_per_label(ct_labels, image, organs) for name, (image, _kept) in stages.items()
    }
    model_path = result.report.get("model_path")
    save_result(
        result,
        out,
        overwrite=args.overwrite,
        labels=mr_labels,
        extra_report={
            "demo": {
                "dice": dice,
                "subject_seed": subject.params["seed"],
            }
        },
        extra_images={
            "fixed_ct.nii.gz": ct,
            "moving_mr.nii.gz": mr,
            "fixed_labels.nii.gz": ct_labels,
            "moving_labels.nii.gz": mr_labels,
        },
    )
    elapsed = time.perf_counter() - start
    model_name = Path(model_path).stem if model_path else "none"
    print(
        f"MR of synthetic subject {subject.params['seed']} on another day (moved and deformed) "
        f"onto its CT; model {model_name}, refine {refine} steps"
    )
    for stage, scores in dice.items():
        line = "  ".join(f"{name} {value:.3f}" for name, value in scores.items())
        mean = sum(scores.values()) / len(scores)
        note = "" if stages[stage][1] else "   (dropped by the guard: it lowered the similarity)"
        print(f"Dice {stage:>16}: mean {mean:.3f}   {line}{note}")
    print(f"demo finished in {elapsed:.1f} s; outputs in {out}")
    return 0


def _moved_another_day(mr, labels, seed: int):
    """The MR and its labels moved by a rotation of 12 degrees and a shift of 15 mm, and
    deformed by up to 8 mm (all drawn from ``seed``): the patient on another day."""
    import numpy as np
    import SimpleITK as sitk

    from intermodal.data.render import random_rigid, random_smooth_displacement

    rng = np.random.default_rng(seed)
    centre = mr.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in mr.GetSize()])
    rigid = random_rigid(rng, 3, max_rotation_deg=12.0, max_translation_mm=15.0, centre=centre)
    field = random_smooth_displacement(
        mr.GetSize()[::-1], mr.GetSpacing(), rng, max_mm=8.0, scale_mm=40.0
    )
    image = sitk.GetImageFromArray(np.moveaxis(field, 0, -1).astype(np.float64), isVector=True)
    image.CopyInformation(mr)
    moved = sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(image)])
    low = float(sitk.GetArrayViewFromImage(mr).min())
    return (
        sitk.Resample(mr, mr, moved, sitk.sitkLinear, low),
        sitk.Resample(labels, labels, moved, sitk.sitkNearestNeighbor, 0),
    )


def cmd_synth(args: argparse.Namespace) -> int:
    from intermodal.data.synth import write_dataset

    start = time.perf_counter()
    manifest = write_dataset(
        args.out, args.subjects, seed=args.seed, dim=args.dim, overwrite=args.overwrite,
        jobs=args.jobs,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    print(f"wrote {args.subjects} synthetic {args.dim}D subjects in {elapsed:.1f} s: {manifest}")
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    from intermodal.gui import run_gui

    registration = {"refine": args.refine} if args.refine is not None else {}
    if args.model is not None:
        registration["model"] = args.model
    return run_gui(
        fixed=args.fixed,
        moving=args.moving,
        labels=args.labels,
        result=args.result,
        screenshot=args.screenshot,
        register=args.register,
        view=args.view,
        size=args.size,
        registration=registration,
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    from intermodal.data.prepare import DEFAULT_DEFORMABLE, prepare_dataset

    reporter = _Reporter(args.quiet)
    summary = prepare_dataset(
        args.manifest,
        args.out,
        spacing=args.spacing,
        deformable=DEFAULT_DEFORMABLE if args.deformable is None else args.deformable,
        overwrite=args.overwrite,
        jobs=args.jobs,
        progress=reporter,
    )
    reporter.close()
    print(
        f"prepared {len(summary.done)} subject(s), {len(summary.skipped)} already done: "
        f"{summary.manifest}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from intermodal.training import load_config, train

    config = load_config(args.config, args.set or ())
    if args.print_config:
        print(config.to_toml(), end="")
        return 0
    reporter = _Reporter(args.quiet)
    steps = config.train.steps

    def progress(state: dict) -> None:
        reporter("train", int(state["step"]), steps)

    import shlex

    command = shlex.join(
        ["intermodal", "train"]
        + (["--config", args.config] if args.config else [])
        + [a for value in args.set or () for a in ("--set", value)]
    )
    weights = train(
        config,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=progress,
        command=command,
    )
    reporter.close()
    print(f"trained {steps} steps: {weights}")
    return 0


class _PairBar:
    """A bar over the pairs of a batch run (one per rank under torchrun); silent with --quiet."""

    def __init__(self, quiet: bool, rank: int = 0, world_size: int = 1) -> None:
        self.quiet = quiet
        self.desc = "intermodal: pairs" + (f" (rank {rank}/{world_size})" if world_size > 1 else "")
        self.position = rank
        self.bar = None

    def __call__(self, outcome, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=self.desc, file=sys.stderr, leave=False, position=self.position
            )
        if outcome is not None:
            self.bar.set_postfix_str(f"{outcome.pair}: {outcome.status}")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_PAIRS_HELP = (
    "which pairs (moving: a subject's MR, fixed: a subject's CT): 'intra' (each subject's MR "
    'onto its own CT; the default, unless the manifest holds a "pairs" list of '
    '{"fixed": ID, "moving": ID}), \'inter\' (every ordered pair of two different subjects), '
    "'all' (both), or a CSV file with the header fixed,moving (subject ids)"
)


def cmd_register_batch(args: argparse.Namespace) -> int:
    from intermodal.batch import IntermodalMethod, load_pairs, rank_from_environment, run_batch
    from intermodal.data.manifest import load_manifest

    rank, world_size = rank_from_environment()
    settings = _settings_by_dimension(args)
    manifest = load_manifest(args.manifest, required_splits=())
    pairs = load_pairs(manifest, args.pairs, split=args.split)
    bar = _PairBar(args.quiet, rank, world_size)
    summary = run_batch(
        pairs,
        args.out,
        IntermodalMethod(settings),
        rank=rank,
        world_size=world_size,
        overwrite=args.overwrite,
        keep_going=not args.debug,
        progress=bar,
    )
    bar.close()
    who = f"rank {rank} of {world_size}: " if world_size > 1 else ""
    line = (
        f"{who}{len(summary.done)} pairs registered, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed, of {summary.total}; outputs in {summary.out_dir}"
    )
    print(line)
    if summary.failed:
        print(f"intermodal: failed pairs: {', '.join(summary.failed)}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from intermodal.batch import make_method
    from intermodal.evaluation import headline, run_evaluation

    method = None
    if args.method:
        method = make_method(args.method, settings=_settings_by_dimension(args))
    reporter = _Reporter(args.quiet)
    bar = _PairBar(args.quiet)
    evaluation = run_evaluation(
        args.manifest,
        args.out,
        results=args.results,
        method=method,
        pairs=args.pairs,
        split=args.split,
        overwrite=args.overwrite,
        skip_missing=args.skip_missing,
        progress=reporter,
        batch_progress=bar,
    )
    bar.close()
    reporter.close()
    print(f"evaluated {headline(evaluation)}; outputs in {args.out}")
    if evaluation.failed:
        names = ", ".join(evaluation.failed)
        print(f"intermodal: registration failed for: {names}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="intermodal",
        description="Deformable CT/MR registration supervised by intra-modality similarity.",
    )
    parser.add_argument("--version", action="version", version=f"intermodal {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser = functools.partial(commands.add_parser, formatter_class=_LibraryHelp)

    register = commands.add_parser("register", help="register a moving image onto a fixed one")
    register.add_argument("--fixed", required=True, help="fixed image (file or DICOM directory)")
    register.add_argument("--moving", required=True, help="moving image (file or DICOM directory)")
    register.add_argument("--out", required=True, help="output directory")
    register.add_argument("--labels", help="label map in the moving image's space")
    register.add_argument("--points", help="CSV of fixed-space points (x,y[,z] in mm)")
    register.add_argument(
        "--fixed-labels",
        help="label map on the fixed image's grid, the same labels as --labels: the QA report "
        "(report.html) gives Dice, mean distance to agreement and HD95 per label",
    )
    register.add_argument(
        "--landmarks", nargs=2, metavar=("FIXED_CSV", "MOVING_CSV"),
        help="paired landmarks (x,y[,z] mm, one per row in the same order) for the QA report's "
        "target registration error",
    )  # fmt: skip
    register.add_argument(
        "--fixed-mask", help="mask on the fixed image's grid: only its voxels (non-zero) count"
    )
    register.add_argument(
        "--moving-mask", help="mask on the moving image's grid: only its voxels (non-zero) count"
    )
    register.add_argument("--fixed-series", help="DICOM SeriesInstanceUID for --fixed")
    register.add_argument("--moving-series", help="DICOM SeriesInstanceUID for --moving")
    register.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_dicom_options(register)
    _add_registration_options(register)
    _add_common(register)
    register.set_defaults(handler=cmd_register)

    export = commands.add_parser(
        "export-dicom", help="write a register output folder's results as DICOM (into dicom/)"
    )
    export.add_argument("result", help="an output folder of 'intermodal register'")
    export.add_argument("--fixed", help="fixed DICOM folder (default: as in report.json)")
    export.add_argument("--moving", help="moving DICOM folder (default: as in report.json)")
    export.add_argument("--fixed-series", help="DICOM SeriesInstanceUID for --fixed")
    export.add_argument("--moving-series", help="DICOM SeriesInstanceUID for --moving")
    export.add_argument("--overwrite", action="store_true", help="replace an existing dicom/")
    export.add_argument(
        "--landmarks", nargs=2, metavar=("FIXED_CSV", "MOVING_CSV"),
        help="corresponding landmarks (mm) for the TRE in report.html",
    )  # fmt: skip
    _add_dicom_options(export, export=True)
    _add_common(export)
    export.set_defaults(handler=cmd_export_dicom)

    warp = commands.add_parser("warp", help="apply a saved transform.h5 to another image")
    warp.add_argument("--transform", required=True, help="transform.h5 written by register")
    warp.add_argument("--fixed", required=True, help="the fixed image that defines the grid")
    warp.add_argument("--image", required=True, help="image in the moving image's space")
    warp.add_argument("--labels", action="store_true", help="nearest-neighbour for label maps")
    warp.add_argument("--out", required=True, help="output image (.nii.gz, .mha, .nrrd)")
    warp.add_argument("--overwrite", action="store_true")
    _add_common(warp)
    warp.set_defaults(handler=cmd_warp)

    demo = commands.add_parser("demo", help="register a synthetic CT/MR pair and report Dice")
    demo.add_argument("--out", default="intermodal-demo", help="output directory")
    demo.add_argument("--overwrite", action="store_true")
    demo.add_argument("--refine", type=int, default=None, metavar="N")
    demo.add_argument("--model", default="none", help="as for register (default: none)")
    _add_library_choice(demo, "--device", _DEVICES, "where to compute (default {device})")
    demo.add_argument(
        "--seed",
        type=int,
        default=7,
        help="synthetic dataset seed whose subject 0 is registered (default 7; the bundled "
        "models were trained on seed 1)",
    )
    _add_common(demo)
    demo.set_defaults(handler=cmd_demo)

    synth = commands.add_parser("synth", help="write a synthetic CT/MR pelvis dataset")
    synth.add_argument("--subjects", type=int, required=True, help="number of subjects")
    synth.add_argument("--out", required=True, help="output directory (gets dataset.json)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--dim", type=int, default=3, choices=(2, 3))
    synth.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="subjects generated at once (processes)"
    )
    synth.add_argument("--overwrite", action="store_true")
    _add_common(synth)
    synth.set_defaults(handler=cmd_synth)

    gui = commands.add_parser("gui", help="the desktop app: load, register, inspect, export")
    gui.add_argument("--fixed", help="fixed image (file or DICOM directory)")
    gui.add_argument("--moving", help="moving image (file or DICOM directory)")
    gui.add_argument("--labels", help="label map in the moving image's space")
    gui.add_argument("--result", help="an output folder of 'intermodal register' to open")
    gui.add_argument("--model", help="model weights (.safetensors) or 'none'")
    gui.add_argument("--refine", type=int, default=None, metavar="N", help="refinement steps")
    gui.add_argument(
        "--screenshot", metavar="PNG", help="render the window off screen to PNG and quit"
    )
    gui.add_argument(
        "--register", action="store_true", help="with --screenshot: register before the shot"
    )
    gui.add_argument("--view", help="view mode of every view (blend, jacobian, ...)")
    gui.add_argument(
        "--size", type=int, nargs=2, default=(1400, 900), metavar=("W", "H"), help="window size"
    )
    _add_common(gui)
    gui.set_defaults(handler=cmd_gui)

    prepare = commands.add_parser("prepare", help="pre-align each subject's MR to its CT")
    prepare.add_argument("manifest", help="dataset manifest (.json or .csv)")
    prepare.add_argument("--out", required=True, help="output directory")
    prepare.add_argument("--spacing", type=float, default=None, help="grid spacing in mm")
    _add_library_choice(
        prepare, "--deformable", _LibraryChoices("intermodal.data.prepare", "DEFORMABLE_CHOICES"),
        "the deformable step after the affine one (default {DEFAULT_DEFORMABLE})",
    )  # fmt: skip
    prepare.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="subjects prepared at once, each in its own one-thread process (default 1: one "
        "after another, the B-spline step on every core)",
    )  # fmt: skip
    prepare.add_argument("--overwrite", action="store_true")
    _add_common(prepare)
    prepare.set_defaults(handler=cmd_prepare)

    trainer = commands.add_parser("train", help="train a registration network")
    trainer.add_argument("--config", help="TOML training configuration")
    trainer.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    trainer.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    trainer.add_argument("--overwrite", action="store_true", help="replace an existing run")
    trainer.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    _add_common(trainer)
    trainer.set_defaults(handler=cmd_train)

    batch = commands.add_parser(
        "register-batch",
        help="register many pairs of a manifest, resumably (torchrun: shared between ranks)",
        description=(
            "Register the pairs of a dataset manifest, one output folder per pair (the files "
            "of 'register', and done.json written last). Running it again resumes: finished "
            "pairs are skipped, unfinished ones redone. Under torchrun "
            "(torchrun --nproc_per_node=N -m intermodal register-batch ...) rank r takes the "
            "pairs whose index % N == r. Exit code 1 if a pair failed (the others still run)."
        ),
    )
    batch.add_argument("manifest", help="dataset manifest (.json or .csv, or its folder)")
    batch.add_argument("--out", required=True, help="output folder, one subfolder per pair")
    batch.add_argument("--pairs", default=None, help=_PAIRS_HELP)
    batch.add_argument("--split", default="test", help="split to pair up (default: test)")
    batch.add_argument("--overwrite", action="store_true", help="redo pairs that are done")
    _add_registration_options(batch)
    _add_common(batch)
    batch.set_defaults(handler=cmd_register_batch)

    evaluate = commands.add_parser(
        "evaluate",
        help="Dice, HD95, TRE, Jacobian, NMI and run time of registered test pairs",
        description=(
            "Evaluate registrations of a manifest's test pairs: a folder of results (one "
            "subfolder per pair, named FIXED--MOVING, holding transform.h5, as register-batch "
            "writes) or a method run here. Writes metrics.csv, summary.md and box plots."
        ),
    )
    evaluate.add_argument("manifest", help="dataset manifest (.json or .csv, or its folder)")
    evaluate.add_argument("--out", required=True, help="output folder for the evaluation")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", help="folder of results, one subfolder per pair")
    source.add_argument(
        "--method",
        help="register the pairs with this method first (intermodal; into OUT/registrations, "
        "resumable), using the registration options below",
    )
    evaluate.add_argument("--pairs", default=None, help=_PAIRS_HELP)
    evaluate.add_argument("--split", default="test", help="split to pair up (default: test)")
    evaluate.add_argument(
        "--skip-missing", action="store_true", help="evaluate the pairs that have results"
    )
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace evaluation files (and registrations)"
    )
    _add_registration_options(evaluate)
    _add_common(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``intermodal`` console command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="intermodal: %(message)s",
        stream=sys.stderr,
    )
    from intermodal.allocator import keep_freed_memory
    from intermodal.errors import IntermodalError

    keep_freed_memory()  # a command registers and exits: reuse freed blocks (see allocator.py)
    try:
        return args.handler(args)
    except IntermodalError as error:
        if args.debug:
            raise
        print(f"intermodal: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("intermodal: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug of ours: still one line unless --debug
        if args.debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(
            f"intermodal: internal error: {type(error).__name__}: {message} "
            "(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
