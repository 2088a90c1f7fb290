"""The suite's datasets: held-out cases, and how a method's mapping is scored on each.

Every case is a fixed CT and a moving MR. A method returns its fixed -> moving mapping as a
displacement field on the fixed grid (physical mm, ITK's ``(x, y[, z])`` components), and
:func:`score` scores that field, the same code for every method:

- ``synthetic_2d`` / ``synthetic_3d``: the synthetic pelvis, held out (dataset seed 5, which
  no bundled model was trained on): the MR of subject 2k+1 onto the CT of subject 2k.
  Dice and HD95 per organ of the moving labels warped onto the fixed grid.
- ``real_motion``, ``rendered``, ``robustness``, ``slices_2d``: the realistic held-out sets of
  :mod:`intermodal.data.realistic` (split ``"heldout"``; nothing is chosen on them), built from
  the real pair in ``../shared/data/mridir``. Rendered and robustness cases: Dice and HD95 of
  the tissue labels inside the region the MR sees, and the mapping error against the truth.
  Real-motion and 2D cases: the error against the known motion composed with the method's own
  result on the unmoved pair (its *reference*, :func:`reference_pair`), so that the score is
  the capture of the known motion; a case whose median error exceeds
  :data:`CAPTURE_FAILURE_MM` is a capture failure.
- ``real_pair``: the real CT/MR pair itself, no truth: NMI of the MR warped onto the CT,
  64 bins over the CT body (> -500 HU). The 2D slices are scored by it too.

Everywhere: SDlogJ and the folding share (determinants <= 0) of the whole mapping's Jacobian
over the CT body (a rigid or affine part only adds a constant to log J).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

REALISTIC = ("real_motion", "rendered", "robustness", "slices_2d")
DATASETS: dict[str, str] = {
    "synthetic_2d": "synthetic pelvis 2D, held out (dataset seed 5)",
    "synthetic_3d": "synthetic pelvis 3D, held out (dataset seed 5)",
    "real_motion": "real CT, real MR moved by a known rigid + smooth motion (held out)",
    "rendered": "MR rendered from real CT anatomy, known deformation and labels (held out)",
    "robustness": "rendered cases with one stress each (held out)",
    "slices_2d": "real CT/MR slices with a known 2D motion (held out)",
    "real_pair": "the real CT/MR pair (MRI-DIR pork phantom), no truth: NMI",
}
FULL_CASES = {
    "synthetic_2d": 20,
    "synthetic_3d": 10,
    "real_motion": 20,
    "rendered": 20,
    "robustness": 12,
    "slices_2d": 8,
    "real_pair": 1,
}
"""Cases per dataset in the full suite (``make bench``)."""

HELDOUT_SEED = 5
"""Synthetic dataset seed that no bundled model was trained on (they use seed 1)."""
ORGANS = {"bone": 2, "bladder": 3, "prostate": 4, "rectum": 5}
"""Synthetic pelvis labels scored."""
TISSUES = {"fat": 1, "soft_tissue": 2, "bone": 3}
"""Realistic tissue labels scored (:data:`intermodal.data.realistic.DICE_LABELS`)."""
BODY_HU = -500.0
"""CT voxels above this are the body, where errors, Jacobians and NMI are scored."""
NMI_BINS = 64
CAPTURE_FAILURE_MM = 5.0


@dataclass
class BenchCase:
    """One case of a dataset.

    Attributes:
        dataset: a key of :data:`DATASETS`.
        name: unique within the dataset.
        fixed: the CT, as a user would pass it.
        moving: the MR.
        reference_key: for relative truth, the key of the unmoved pair (:func:`reference_pair`).
        truth: what :func:`score` needs (a realistic ``Case``, or the two synthetic subjects).
    """

    dataset: str
    name: str
    fixed: sitk.Image
    moving: sitk.Image
    reference_key: str | None = None
    truth: Any = None

    @property
    def ndim(self) -> int:
        return self.fixed.GetDimension()


def unavailable(dataset: str) -> str | None:
    """Why ``dataset`` cannot be built here (the real pair is missing), or None."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, not {dataset!r}")
    if dataset.startswith("synthetic"):
        return None
    from intermodal.data.realistic import RealPairMissing, real_pair_dir

    try:
        real_pair_dir()
    except RealPairMissing as error:
        return str(error)
    return None


def make_case(dataset: str, index: int) -> BenchCase:
    """Case ``index`` of ``dataset`` (deterministic)."""
    if dataset.startswith("synthetic"):
        from intermodal.data.synth import SEED_STRIDE, generate_subject

        dim = int(dataset[-2])
        fixed = generate_subject(HELDOUT_SEED * SEED_STRIDE + 2 * index, dim=dim)
        moving = generate_subject(HELDOUT_SEED * SEED_STRIDE + 2 * index + 1, dim=dim)
        return BenchCase(dataset, f"pair-{index:03d}", fixed.ct, moving.mr, None, (fixed, moving))
    if dataset == "real_pair":
        if index != 0:
            raise ValueError(f"real_pair has one case, not case {index}")
        from intermodal.data.realistic import load_real_pair

        ct, mr = load_real_pair()
        return BenchCase(dataset, "mridir", ct, mr)
    from intermodal.data.realistic import make_case as realistic_case

    case = realistic_case(dataset, "heldout", index)
    return BenchCase(dataset, case.name, case.fixed, case.moving, case.reference_key, case)


def reference_pair(key: str) -> tuple[sitk.Image, sitk.Image]:
    """The unmoved pair of a relative case (:func:`intermodal.data.realistic.reference_pair`)."""
    from intermodal.data.realistic import reference_pair as realistic_reference

    return realistic_reference(key)


# --------------------------------------------------------------------------- scores


def jacobian_det(field: sitk.Image) -> np.ndarray:
    """Determinant of the Jacobian of ``p -> p + d(p)`` at every voxel (array order).

    ``J = I + (dd/di) (D S)^-1``, with ``dd/di`` the central differences of the physical
    displacement along the grid's index axes (``np.gradient``), ``D`` the direction and ``S``
    the spacing; exact for a field linear in ``p``.
    """
    ndim = field.GetDimension()
    physical = sitk.GetArrayFromImage(field)  # (*shape, ndim): components x, y[, z]
    # derivative along index axis i (array axis ndim-1-i), for every component
    along_index = np.stack(
        [np.gradient(physical, axis=ndim - 1 - i) for i in range(ndim)], axis=-1
    )  # (*shape, component, index axis)
    direction = np.array(field.GetDirection()).reshape(ndim, ndim)
    to_physical = np.linalg.inv(direction @ np.diag(field.GetSpacing()))
    jacobian = np.eye(ndim) + along_index @ to_physical
    return np.linalg.det(jacobian)


def _mask(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayViewFromImage(image) > 0


def jacobian_scores(field: sitk.Image, mask: np.ndarray) -> dict[str, float]:
    """``sdlogj`` and ``folding_percent`` (share of determinants <= 0, in %) over ``mask``."""
    from intermodal.metrics import sdlogj

    det = jacobian_det(field)
    return {
        "sdlogj": float(sdlogj(det, mask)),
        "folding_percent": 100.0 * float((det[mask] <= 0).mean()),
    }


def mapping_error(
    field: sitk.Image, expected: sitk.Transform, mask: np.ndarray, mm_per_unit: float = 1.0
) -> dict[str, Any]:
    """``|recovered(p) - expected(p)|`` in mm over ``mask``: median, 95th percentile, capture.

    Args:
        field: the method's displacement on the fixed grid.
        expected: the expected fixed -> moving transform.
        mask: boolean, array order, where the error is scored.
        mm_per_unit: millimetres per unit of the moving space (2 for the 2 mm pictures stored
            at 1 unit per pixel).
    """
    truth = sitk.GetArrayFromImage(
        sitk.TransformToDisplacementField(
            expected, sitk.sitkVectorFloat64, field.GetSize(), field.GetOrigin(),
            field.GetSpacing(), field.GetDirection(),
        )
    )  # fmt: skip
    found = sitk.GetArrayViewFromImage(field)
    error = np.linalg.norm(found[mask] - truth[mask], axis=-1) * mm_per_unit
    median = float(np.median(error))
    return {
        "error_median_mm": median,
        "error_p95_mm": float(np.percentile(error, 95)),
        "capture_failure": bool(median > CAPTURE_FAILURE_MM),
    }


def label_scores(
    fixed_labels: sitk.Image,
    moving_labels: sitk.Image,
    field: sitk.Image,
    labels: Mapping[str, int],
    region: np.ndarray | None = None,
) -> dict[str, Any]:
    """Dice and HD95 (mm) per label of the moving labels warped (nearest) onto the fixed grid.

    ``region``: where labels are scored (both maps are zeroed elsewhere); None: everywhere.
    Returns the means over labels (``dice``, ``hd95_mm``) and ``dice_per_label``.
    """
    from intermodal.metrics import dice_per_label, hd95_per_label

    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    warped = sitk.Resample(moving_labels, fixed_labels, transform, sitk.sitkNearestNeighbor, 0)
    reference = fixed_labels
    if region is not None:
        warped_array = sitk.GetArrayFromImage(warped) * region
        reference_array = sitk.GetArrayFromImage(fixed_labels) * region
        warped = sitk.GetImageFromArray(warped_array.astype(np.uint8))
        reference = sitk.GetImageFromArray(reference_array.astype(np.uint8))
        warped.CopyInformation(fixed_labels)
        reference.CopyInformation(fixed_labels)
    dice = dice_per_label(reference, warped, labels)
    hd95 = hd95_per_label(reference, warped, labels)
    return {
        "dice": float(np.nanmean(list(dice.values()))),
        "dice_per_label": {name: float(value) for name, value in dice.items()},
        "hd95_mm": float(np.nanmean(list(hd95.values()))),
    }


def nmi_score(
    fixed_ct: sitk.Image, moving: sitk.Image, field: sitk.Image, body: np.ndarray | None = None
) -> float:
    """NMI (:data:`NMI_BINS` bins) of ``moving`` warped onto the CT, over the CT body.

    ``body``: the mask to score over (default: the CT above :data:`BODY_HU`). A picture (a
    vector image: the 2D slices as RGB) is scored by its first channel.
    """
    from intermodal.losses import nmi

    fixed_ct, moving = _first_channel(fixed_ct), _first_channel(moving)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    warped = sitk.Resample(moving, fixed_ct, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ct = sitk.GetArrayFromImage(fixed_ct)
    mask = ct > BODY_HU if body is None else body
    return float(nmi(ct, sitk.GetArrayFromImage(warped), bins=NMI_BINS, mask=mask))


def _first_channel(image: sitk.Image) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() == 1:
        return image
    return sitk.VectorIndexSelectionCast(image, 0, sitk.sitkFloat32)


def score(case: BenchCase, field: sitk.Image, reference: sitk.Image | None = None) -> dict:
    """Every score of one method's field on one case (see the module docstring).

    Args:
        case: the case.
        field: the method's displacement on the case's fixed grid.
        reference: for relative cases, the same method's field on the unmoved pair.

    Raises:
        ValueError: a relative case without its reference.
    """
    if case.dataset.startswith("synthetic"):
        fixed, moving = case.truth
        body = sitk.GetArrayViewFromImage(fixed.ct) > BODY_HU
        return {
            **label_scores(fixed.ct_labels, moving.mr_labels, field, ORGANS),
            **jacobian_scores(field, body),
        }
    if case.dataset == "real_pair":
        body = sitk.GetArrayViewFromImage(case.fixed) > BODY_HU
        return {"nmi": nmi_score(case.fixed, case.moving, field), **jacobian_scores(field, body)}
    from intermodal.data.realistic import expected_mapping

    realistic = case.truth
    reference_transform = None
    if case.reference_key is not None:
        if reference is None:
            raise ValueError(f"{case.name} is scored against the method's reference result")
        reference_transform = sitk.DisplacementFieldTransform(
            sitk.Cast(reference, sitk.sitkVectorFloat64)
        )
    body = _mask(realistic.body)
    scores = {
        **mapping_error(
            field,
            expected_mapping(realistic, reference_transform),
            body,
            realistic.moving_mm_per_unit,
        ),
        **jacobian_scores(field, body),
    }
    if case.dataset == "slices_2d":
        # the issue's second measure on slices: NMI as on the real pair, over the CT body
        scores["nmi"] = nmi_score(case.fixed, case.moving, field, body)
    if realistic.fixed_labels is not None:
        scores.update(
            label_scores(
                realistic.fixed_labels,
                realistic.moving_labels,
                field,
                TISSUES,
                _mask(realistic.label_region),
            )
        )
    return scores
