"""The realistic validation sets (issue 23).

The set tests need the real MRI-DIR pair in ../shared/data/mridir and skip, saying so, without
it. The benchmark suite's scoring of these sets is tested in tests/test_benchmarks.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.data import realistic
from intermodal.metrics import dice_per_label

try:
    realistic.real_pair_dir()
    MISSING = None
except realistic.RealPairMissing as err:
    MISSING = str(err)
needs_pair = pytest.mark.skipif(MISSING is not None, reason=f"{MISSING}")


def _identity(ndim: int) -> sitk.Transform:
    return sitk.Transform(ndim, sitk.sitkIdentity)


def _warped_dice(case: realistic.Case, transform: sitk.Transform) -> dict[str, float]:
    warped = sitk.Resample(case.moving_labels, case.fixed, transform, sitk.sitkNearestNeighbor)
    region = sitk.GetArrayViewFromImage(case.label_region) > 0
    masked = sitk.GetImageFromArray(sitk.GetArrayFromImage(warped) * region)
    masked.CopyInformation(case.fixed)
    return dice_per_label(case.fixed_labels, masked, realistic.DICE_LABELS)


# --------------------------------------------------------------------------- the sets


@needs_pair
def test_cases_are_deterministic_and_splits_differ():
    a = realistic.make_case("slices_2d", "heldout", 0)
    b = realistic.make_case("slices_2d", "heldout", 0)
    c = realistic.make_case("slices_2d", "tuning", 0)
    moving = [sitk.GetArrayViewFromImage(case.moving) for case in (a, b, c)]
    np.testing.assert_array_equal(moving[0], moving[1])
    assert not np.array_equal(moving[0], moving[2])
    assert a.params == b.params != c.params
    assert a.name == "slices_2d-heldout-000"


@needs_pair
def test_rendered_truth_aligns_the_labels_and_identity_does_not():
    case = realistic.make_case("rendered", "tuning", 0)
    assert case.fixed.GetSpacing() == (2.0, 2.0, 2.0)
    assert 2.5 <= case.params["slice_thickness_mm"] <= 5.0
    assert 0.6 <= case.params["field_of_view"] <= 1.0 and case.params["couch"]
    truth = _warped_dice(case, case.truth)
    identity = _warped_dice(case, _identity(3))
    for name in realistic.DICE_LABELS:
        # nearest-neighbour label resampling twice (motion, then truth) costs a little
        assert truth[name] > 0.93, (name, truth)
        assert identity[name] < truth[name] - 0.05, (name, identity)


@needs_pair
def test_real_motion_is_bounded_and_its_inverse_undoes_it():
    case = realistic.make_case("real_motion", "tuning", 1)
    assert case.params["rotation_deg"] <= 30 and case.params["translation_mm"] <= 30
    assert case.params["deformation_max_mm"] <= 10 + 1e-3
    fixed, moving = realistic.reference_pair("real_motion")
    assert fixed.GetSize() == case.fixed.GetSize() and moving.GetSize() == case.moving.GetSize()
    round_trip = sitk.CompositeTransform(3)
    round_trip.AddTransform(case.motion_inverse)
    round_trip.AddTransform(case.motion)
    centre = realistic._foreground_centre(moving, realistic._mr_threshold(moving))
    for offset in [(0.0, 0.0, 0.0), (30.0, -20.0, 15.0), (-25.0, 10.0, -30.0)]:
        point = tuple(c + o for c, o in zip(centre, offset))
        np.testing.assert_allclose(round_trip.TransformPoint(point), point, atol=0.1)
    # Resampling the moved MR through the inverse motion gives back the original MR where
    # both see.
    restored = sitk.Resample(case.moving, moving, case.motion_inverse, sitk.sitkLinear, 0.0)
    original = sitk.GetArrayViewFromImage(moving)
    back = sitk.GetArrayViewFromImage(restored)
    seen = (back > 0) & (original > 0.1 * np.percentile(original, 99))
    assert np.corrcoef(original[seen], back[seen])[0, 1] > 0.95
    # With an identity reference, the expected mapping is the inverse motion.
    expected = realistic.expected_mapping(case, _identity(3))
    np.testing.assert_allclose(
        expected.TransformPoint(centre), case.motion_inverse.TransformPoint(centre)
    )


@needs_pair
@pytest.mark.parametrize("index", [0, 4, 5])
def test_robustness_kinds(index):
    case = realistic.make_case("robustness", "heldout", index)
    kind = realistic.ROBUSTNESS_KINDS[index]
    assert case.kind == kind
    if kind == "fov_third":
        rows = sitk.GetArrayViewFromImage(case.moving).reshape(case.moving.GetSize()[2], -1)
        kept = int(rows.any(axis=1).sum())
        assert abs(kept - case.moving.GetSize()[2] / 3) <= 1
    elif kind == "strong_bias":
        assert case.params["bias_strength"] == 0.8
    elif kind == "ct_offset":
        assert case.fixed.GetPixelID() == sitk.sitkUInt16
        stored = sitk.GetArrayViewFromImage(case.fixed)
        assert stored.min() >= 0 and stored.max() <= 4095
        # air (-1000 HU) is stored near 24 and soft tissue (~40 HU) near 1064
        assert np.percentile(stored, 5) < 100 and np.percentile(stored, 95) > 1000


@needs_pair
def test_rotation_30_is_exact():
    case = realistic.make_case("robustness", "tuning", 2)
    assert case.kind == "rotation_30" and math.isclose(
        case.params["rotation_deg"], 30, abs_tol=1e-3
    )


@needs_pair
def test_slices_png_are_rgb_pictures_without_spacing():
    case = realistic.make_case("slices_2d", "tuning", 3)
    assert case.kind == "png" and case.moving_mm_per_unit == 2.0
    for image in (case.fixed, case.moving):
        assert image.GetNumberOfComponentsPerPixel() == 3
        assert image.GetPixelID() == sitk.sitkVectorUInt8 and image.GetSpacing() == (1.0, 1.0)
    fixed, moving = realistic.reference_pair("slices_2d/png")
    assert fixed.GetSize() == case.fixed.GetSize()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nonsense", "heldout", 0), "set must be one of"),
        (("rendered", "test", 0), "split must be one of"),
        (("rendered", "heldout", -1), "index"),
    ],
)
def test_bad_make_case(args, message):
    with pytest.raises(ValueError, match=message):
        realistic.make_case(*args)


def test_bad_real_pair_dir(tmp_path):
    with pytest.raises(realistic.RealPairMissing, match="ct_2mm.nii.gz does not exist"):
        realistic.make_case("rendered", "heldout", 0, data_dir=tmp_path)


def test_bad_reference_key():
    with pytest.raises(ValueError, match="unknown reference key"):
        realistic.reference_pair("slices_2d/elsewhere")


def test_bad_expected_mapping_without_reference():
    grid = sitk.Image([4, 4], sitk.sitkFloat32)
    case = realistic.Case(
        name="x", set="slices_2d", split="tuning", index=0, kind="plain", fixed=grid,
        moving=grid, body=grid, motion_inverse=_identity(2), reference_key="slices_2d/plain",
    )  # fmt: skip
    with pytest.raises(ValueError, match="pass it as reference"):
        realistic.expected_mapping(case)
