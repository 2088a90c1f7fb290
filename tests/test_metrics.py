"""Metrics against cases worked out by hand: squares and cubes, rings, linear fields, shifts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from intermodal import grids
from intermodal.errors import IntermodalError
from intermodal.metrics import (
    LOG_JACOBIAN_CLIP,
    NMIScorer,
    dice,
    dice_per_label,
    directed_surface_distances,
    hausdorff_distance,
    hd95,
    hd95_per_label,
    image_jacobian_det,
    jacobian_statistics,
    nonpositive_fraction,
    sdlogj,
    surface,
    target_registration_error,
    warped_nmi,
    worst_cases_mean,
)

# ---------------------------------------------------------------------------------------------
# Dice


def box(shape: tuple[int, ...], start: int, side: int, shift: int = 0) -> np.ndarray:
    """A square (cube) of ``side`` voxels from ``start``, moved ``shift`` along the last axis."""
    mask = np.zeros(shape, bool)
    index = [slice(start, start + side)] * len(shape)
    index[-1] = slice(start + shift, start + side + shift)
    mask[tuple(index)] = True
    return mask


# Two boxes of side s offset by k voxels overlap in s^(d-1) (s - k) voxels: Dice = (s - k) / s.
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    ("side", "shift", "expected"),
    [(10, 0, 1.0), (10, 2, 0.8), (10, 5, 0.5), (8, 6, 0.25), (10, 10, 0.0), (10, 12, 0.0)],
)
def test_dice_of_shifted_boxes(ndim, side, shift, expected):
    shape = (32,) * ndim
    assert dice(box(shape, 4, side), box(shape, 4, side, shift)) == pytest.approx(expected)


def test_dice_of_empty_masks():
    empty = np.zeros((5, 5), bool)
    full = np.ones((5, 5), bool)
    assert math.isnan(dice(empty, empty))
    assert dice(empty, full) == 0.0


def test_dice_per_label_on_label_maps():
    a = np.zeros((20, 20), np.int32)
    b = np.zeros((20, 20), np.int32)
    a[box((20, 20), 2, 10)] = 1
    b[box((20, 20), 2, 10, shift=5)] = 1
    a[15:17, 15:17] = 2
    b[15:17, 15:17] = 2
    scores = dice_per_label(
        sitk.GetImageFromArray(a), sitk.GetImageFromArray(b), {"one": 1, "two": 2, "none": 7}
    )
    assert scores["one"] == pytest.approx(0.5)
    assert scores["two"] == 1.0
    assert math.isnan(scores["none"])


def test_bad_dice_shapes():
    with pytest.raises(IntermodalError, match="differ in shape"):
        dice(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(IntermodalError, match="differ in size"):
        dice_per_label(sitk.Image(4, 4, sitk.sitkUInt8), sitk.Image(4, 5, sitk.sitkUInt8), {})


# ---------------------------------------------------------------------------------------------
# HD95


def test_surface_of_a_square_is_its_ring():
    mask = box((9, 9), 2, 5)
    ring = surface(mask)
    assert ring.sum() == 16  # 5 x 5 minus the 3 x 3 inside
    assert not ring[3:6, 3:6].any()


def concentric_squares(inner: int, gap: int, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Squares (cubes) centred together, half-widths ``inner`` and ``inner + gap`` voxels."""
    outer = inner + gap
    n = 2 * outer + 5
    centre = n // 2
    grid = np.indices((n,) * ndim) - centre
    chebyshev = np.abs(grid).max(axis=0)
    return chebyshev <= inner, chebyshev <= outer


# Concentric squares with half-widths a and b = a + k: every inner surface voxel is k voxels from
# the outer surface; of the 8b outer ring voxels, 4 (2a + 1) are k from the inner ring and the
# 8k - 4 near the corners are further (up to sqrt(2) k at the corners). With a tail under 5 %,
# HD95 is k voxels exactly, times the spacing; the classical Hausdorff distance is sqrt(2) k.
@pytest.mark.parametrize(
    ("inner", "gap", "spacing"),
    [(30, 1, 1.0), (40, 2, 0.5), (60, 3, 2.0), (45, 2, 1.25)],
)
def test_hd95_of_concentric_squares(inner, gap, spacing):
    small, large = concentric_squares(inner, gap)
    tail = (8 * gap - 4) / (8 * (inner + gap))
    assert tail < 0.05  # the case is valid only if the corner tail is under 5 %
    assert hd95(small, large, (spacing, spacing)) == pytest.approx(gap * spacing)
    assert hd95(large, small, (spacing, spacing)) == pytest.approx(gap * spacing)
    classical = hausdorff_distance(small, large, (spacing, spacing), percentile=100)
    assert classical == pytest.approx(math.sqrt(2) * gap * spacing)
    inward = directed_surface_distances(small, large, (spacing, spacing))
    assert inward.size == 8 * inner and np.allclose(inward, gap * spacing)


def test_hd95_of_concentric_cubes():
    # Outer surface voxels: 24 b^2 + 2 = 23066 for b = 31; 6 (2a + 1)^2 = 22326 of them face a
    # face of the inner cube at 1 voxel; the 740 on edges and corners (3.2 %) are further.
    small, large = concentric_squares(30, 1, ndim=3)
    assert hd95(small, large, (2.0, 2.0, 2.0)) == pytest.approx(2.0)


def test_hd95_is_the_larger_directed_percentile_in_array_order_spacing():
    # A: one voxel. B: the same voxel and one 20 voxels away along x (the last array axis).
    # A -> B: [0]. B -> A: [0, 20 x 0.5 mm]; its 95th percentile is 0.95 x 10 = 9.5 mm (the
    # percentile of both pooled, [0, 0, 10], would be 9 mm).
    a = np.zeros((21, 41), bool)
    a[10, 10] = True
    b = a.copy()
    b[10, 30] = True
    assert hd95(a, b, (2.0, 0.5)) == pytest.approx(9.5)
    assert hd95(b, a, (2.0, 0.5)) == pytest.approx(9.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_is_the_same_on_the_box_around_the_masks(seed):
    # Random blobs, some touching the image border: the result equals the directed percentiles
    # taken on the whole image (the function crops to the masks' box first).
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(30, 50)), 3)
    a, b = noise > 0.05, noise > 0.0
    a[:, :3] = True  # along the image's side
    spacing = (1.5, 0.7)
    whole = max(
        np.percentile(directed_surface_distances(a, b, spacing), 95),
        np.percentile(directed_surface_distances(b, a, spacing), 95),
    )
    assert hd95(a, b, spacing) == pytest.approx(whole)


def test_hd95_of_identical_masks_is_zero():
    mask = box((12, 12, 12), 2, 6)
    assert hd95(mask, mask, (1.0, 2.0, 3.0)) == 0.0


def test_hd95_empty_masks():
    empty = np.zeros((11, 21), bool)
    some = np.zeros((11, 21), bool)
    some[5, 5] = True
    assert math.isnan(hd95(empty, some, (1.0, 2.0)))  # nothing to score
    assert math.isnan(hd95(empty, empty, (1.0, 2.0)))
    # lost label: the grid's diagonal, sqrt((10 x 1)^2 + (20 x 2)^2) mm
    assert hd95(some, empty, (1.0, 2.0)) == pytest.approx(math.hypot(10.0, 40.0))


def test_hd95_per_label_uses_the_image_spacing():
    a = np.zeros((20, 40), np.uint8)
    a[10, 5] = 1
    b = a.copy()
    b[10, 25] = 1  # 20 voxels along x
    reference, candidate = sitk.GetImageFromArray(a), sitk.GetImageFromArray(b)
    for image in (reference, candidate):
        image.SetSpacing((0.5, 3.0))  # (x, y)
    scores = hd95_per_label(reference, candidate, {"dot": 1, "absent": 2})
    assert scores["dot"] == pytest.approx(0.95 * 20 * 0.5)
    assert math.isnan(scores["absent"])


@pytest.mark.parametrize(
    ("shape_b", "spacing", "percentile", "message"),
    [
        ((5, 6), (1.0, 1.0), 95, "differ in shape"),
        ((5, 5), (1.0,), 95, "spacing must be 2 positive"),
        ((5, 5), (1.0, 0.0), 95, "spacing must be 2 positive"),
        ((5, 5), (1.0, 1.0), 101, "percentile"),
    ],
)
def test_bad_hausdorff_input(shape_b, spacing, percentile, message):
    a = np.ones((5, 5), bool)
    with pytest.raises(IntermodalError, match=message):
        hausdorff_distance(a, np.ones(shape_b, bool), spacing, percentile)


# ---------------------------------------------------------------------------------------------
# TRE


def translation(offset: tuple[float, ...]) -> sitk.Transform:
    return sitk.TranslationTransform(len(offset), offset)


@pytest.mark.parametrize(
    ("transform", "fixed", "moving", "expected"),
    [
        # identity: the error is the distance between the landmarks as marked
        (sitk.Transform(2, sitk.sitkIdentity), [[0, 0], [1, 1]], [[3, 4], [1, 1]], [5, 0]),
        # T(p) = p + (2, -1): moving landmarks at f + (2, -1) are matched exactly
        (translation((2.0, -1.0)), [[0, 0], [10, 5]], [[2, -1], [12, 4]], [0, 0]),
        # ... and an error e of the moving landmark shows as |e|
        (translation((2.0, -1.0)), [[0, 0]], [[5, 3]], [5]),
        # T maps fixed -> moving, so the wrong direction doubles the error: |(-2) - 2| = 4
        (translation((2.0, 0.0)), [[0, 0]], [[-2, 0]], [4]),
        (translation((1.0, 2.0, 2.0)), [[0, 0, 0], [1, 1, 1]], [[1, 2, 2], [1, 1, 1]], [0, 3]),
    ],
)
def test_target_registration_error(transform, fixed, moving, expected):
    errors = target_registration_error(transform, np.array(fixed), np.array(moving))
    assert errors == pytest.approx(np.array(expected, float))


def test_tre_through_a_scaling():
    scaling = sitk.ScaleTransform(2, (2.0, 3.0))
    errors = target_registration_error(scaling, np.array([[1.0, 1.0]]), np.array([[2.0, 7.0]]))
    assert errors == pytest.approx([4.0])


def test_bad_tre_input():
    identity = sitk.Transform(3, sitk.sitkIdentity)
    with pytest.raises(IntermodalError, match="differ in shape"):
        target_registration_error(identity, np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(IntermodalError, match=r"\(N, 3\)"):
        target_registration_error(identity, np.zeros((2, 2)), np.zeros((2, 2)))


# ---------------------------------------------------------------------------------------------
# Jacobian


def linear_field(
    matrix: np.ndarray, size: tuple[int, ...], spacing, direction=None, origin=None
) -> sitk.Image:
    """The displacement ``d(p) = A p`` (mm) sampled on a grid with the given geometry."""
    ndim = len(size)
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    if direction is not None:
        reference.SetDirection(direction)
    if origin is not None:
        reference.SetOrigin(origin)
    indices = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1)
    index_to_mm = np.array(reference.GetDirection()).reshape(ndim, ndim) @ np.diag(spacing)
    points = indices @ index_to_mm.T + np.array(reference.GetOrigin())  # (x, y[, z], ndim)
    field = points @ np.asarray(matrix, float).T
    image = sitk.GetImageFromArray(field.transpose(*range(ndim)[::-1], ndim), isVector=True)
    image.CopyInformation(reference)
    return image


def rotation_2d(degrees: float) -> tuple[float, ...]:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (c, -s, s, c)


# For d(p) = A p, the Jacobian of p -> p + d(p) is I + A everywhere, whatever the grid's
# spacing, direction and origin: its determinant is det(I + A).
@pytest.mark.parametrize(
    ("matrix", "spacing", "direction"),
    [
        (np.zeros((2, 2)), (1.0, 1.0), None),
        (np.diag([0.5, 0.0]), (1.0, 1.0), None),  # stretch x by 1.5
        ([[0.0, 0.7], [0.0, 0.0]], (2.0, 0.5), None),  # shear keeps area: 1
        (np.diag([-2.0, 0.0]), (1.0, 1.0), None),  # folds: -1
        ([[0.1, 0.3], [-0.2, 0.05]], (1.5, 2.0), rotation_2d(90)),
        ([[0.1, 0.3], [-0.2, 0.05]], (0.7, 1.3), rotation_2d(30)),
        (np.diag([0.1, 0.2, -0.5]), (1.0, 2.0, 3.0), None),  # 1.1 x 1.2 x 0.5
        (
            [[0.1, 0.0, 0.2], [0.05, -0.1, 0.0], [0.0, 0.3, 0.2]],
            (1.0, 1.5, 2.5),
            (0, 0, 1, 1, 0, 0, 0, 1, 0),  # axes permuted
        ),
    ],
)
def test_jacobian_of_a_linear_field(matrix, spacing, direction):
    ndim = len(spacing)
    size = (9, 7, 6)[:ndim]
    field = linear_field(matrix, size, spacing, direction, origin=(3.0, -4.0, 1.0)[:ndim])
    det = image_jacobian_det(field)
    assert det.shape == size[::-1]
    assert det == pytest.approx(np.full(size[::-1], np.linalg.det(np.eye(ndim) + matrix)))


def test_jacobian_in_slabs_equals_the_whole_grid(monkeypatch):

    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.normal(size=(11, 9, 8, 3)), (2, 2, 2, 0)) * 4
    image = sitk.GetImageFromArray(field, isVector=True)
    image.SetSpacing((1.0, 2.0, 3.0))
    whole = image_jacobian_det(image)
    monkeypatch.setattr(grids, "SLAB_VOXELS", 2 * 9 * 8)  # slabs of 2 slices
    assert image_jacobian_det(image) == pytest.approx(whole, abs=1e-12)
    assert whole.min() < 0.9 < 1.1 < whole.max()  # a field that does vary


def test_folding_and_sdlogj_of_hand_values():
    det = np.array([-1.0, 0.0, 1.0, 2.0])
    assert nonpositive_fraction(det) == 0.5
    assert nonpositive_fraction(det, mask=np.array([False, False, True, True])) == 0.0
    # log det of [1, e] is [0, 1]: standard deviation 0.5
    assert sdlogj(np.array([1.0, math.e])) == pytest.approx(0.5)
    # a constant determinant has SDlogJ 0, however large
    assert sdlogj(np.full(10, 3.0)) == pytest.approx(0.0)
    # determinants <= 0 are clipped at 1e-9: log is [ln 1e-9, 0], SD = |ln 1e-9| / 2
    assert sdlogj(np.array([-5.0, 1.0])) == pytest.approx(-math.log(LOG_JACOBIAN_CLIP) / 2)


def test_sdlogj_of_a_linear_field_is_zero():
    field = linear_field(np.diag([0.3, -0.2]), (8, 8), (1.0, 1.0))
    det = image_jacobian_det(field)
    assert nonpositive_fraction(det) == 0.0
    assert sdlogj(det) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (sitk.Image((5, 5), sitk.sitkVectorFloat64, 3), "2 components"),
        (sitk.Image((5, 1), sitk.sitkVectorFloat64, 2), "2 voxels or more"),
    ],
)
def test_bad_displacement(image, message):
    with pytest.raises(IntermodalError, match=message):
        image_jacobian_det(image)


def test_bad_jacobian_mask():
    with pytest.raises(IntermodalError, match="selects no voxel"):
        sdlogj(np.ones(4), mask=np.zeros(4, bool))
    with pytest.raises(IntermodalError, match=r"mask shape \(3,\) differs"):
        jacobian_statistics(np.ones(4), mask=np.ones(3, bool))


def test_jacobian_statistics_hand_worked():
    values = np.array([[[1.0, 1.0, -0.5, 2.0]]], dtype=np.float32)
    stats = jacobian_statistics(sitk.GetImageFromArray(values))
    assert stats["nonpositive_fraction"] == 0.25
    log_det = np.log([1.0, 1.0, 1e-9, 2.0])
    assert stats["sdlogj"] == pytest.approx(np.std(log_det))
    assert (stats["min"], stats["max"], stats["mean"]) == (-0.5, 2.0, pytest.approx(0.875))
    # an image mask and an array mask select the same voxels
    keep = np.array([[[1, 1, 0, 1]]], dtype=np.uint8)
    masked = jacobian_statistics(sitk.GetImageFromArray(values), sitk.GetImageFromArray(keep))
    assert masked == jacobian_statistics(values, keep > 0)
    assert masked["nonpositive_fraction"] == 0.0
    assert masked["sdlogj"] == pytest.approx(np.std(np.log([1.0, 1.0, 2.0])))


def test_jacobian_statistics_in_chunks_equal_the_whole(monkeypatch):
    from intermodal import metrics

    rng = np.random.default_rng(3)
    values = np.exp(rng.normal(0.3, 0.2, size=(7, 9, 11))).astype(np.float32)
    values[0, 0, :3] = [-1.0, 0.0, 1e-12]  # clipped before the logarithm
    whole = jacobian_statistics(sitk.GetImageFromArray(values))
    monkeypatch.setattr(metrics, "_STAT_CHUNK", 50)  # 14 chunks, the last one short
    chunked = jacobian_statistics(sitk.GetImageFromArray(values))
    log_det = np.log(np.clip(values.astype(np.float64), 1e-9, None))
    for stats in (whole, chunked):
        assert stats["sdlogj"] == pytest.approx(np.std(log_det), rel=1e-12)
        assert stats["nonpositive_fraction"] == 2 / values.size
        assert stats["mean"] == pytest.approx(values.astype(np.float64).mean(), rel=1e-12)
        assert (stats["min"], stats["max"]) == (-1.0, float(values.max()))
    assert sdlogj(values) == pytest.approx(whole["sdlogj"], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# NMI


def test_warped_nmi_counts_only_the_mask():
    rng = np.random.default_rng(5)
    fixed = rng.random((6, 8))
    warped = fixed.copy()
    warped[:, 4:] = rng.random((6, 4))  # the right half unrelated to the fixed image
    left = np.zeros((6, 8), bool)
    left[:, :4] = True
    assert warped_nmi(fixed, warped, left) == pytest.approx(2.0)
    assert warped_nmi(fixed, warped, np.ones((6, 8))) < 1.9
    # a 0/1 mask of any dtype and a tensor give the same figure
    import torch

    as_tensors = warped_nmi(torch.from_numpy(fixed), torch.from_numpy(warped), torch.ones(6, 8))
    assert as_tensors == warped_nmi(fixed, warped, np.ones((6, 8), np.uint8))


def test_bad_warped_nmi():
    with pytest.raises(IntermodalError, match="selects no voxel"):
        warped_nmi(np.ones((3, 3)), np.ones((3, 3)), np.zeros((3, 3)))
    with pytest.raises(IntermodalError, match="same shape"):
        warped_nmi(np.ones((3, 3)), np.ones((3, 4)), np.ones((3, 3)))


def test_nmi_scorer_leaves_out_ct_padding_and_finds_a_known_shift():
    """A CT and a 'MR' made from it, shifted 3 mm: NMI is highest through the true shift, and
    the CT's padding (< -1500 HU) is not counted."""
    yy, xx = np.mgrid[:40, :48]
    array = np.where((yy - 20) ** 2 + (xx - 24) ** 2 < 150, 300.0, -200.0)
    array[:, :6] = -2048.0  # padding outside the scanned field of view
    ct = sitk.GetImageFromArray(array)
    yy, xx = np.mgrid[:40, :54]  # wider, so that the shifted CT grid stays inside
    mr_array = np.where((yy - 20) ** 2 + (xx - 27) ** 2 < 150, 10.0, 80.0)  # inverted contrast
    mr = sitk.GetImageFromArray(mr_array)
    score = NMIScorer(ct, mr, "ct", "mr")
    assert score.mask[:, :6].sum() == 0 and score.mask[:, 6:].all()
    shift = sitk.TranslationTransform(2, (3.0, 0.0))  # fixed -> moving: x + 3 mm
    assert score(shift) == pytest.approx(2.0)
    assert score(None) < score(shift)
    assert score(None) == warped_nmi(score.fixed_array, score.warp(None), score.mask)
    with pytest.raises(IntermodalError, match="mask shape"):
        nonpositive_fraction(np.ones(4), mask=np.zeros(3, bool))


# ---------------------------------------------------------------------------------------------
# Worst cases


@pytest.mark.parametrize(
    ("values", "higher_is_worse", "expected"),
    [
        (np.arange(1, 11) / 10, False, 0.2),  # ceil(0.3 x 10) = 3 lowest: 0.1, 0.2, 0.3
        (np.arange(1, 11) / 10, True, 0.9),  # 3 highest: 0.8, 0.9, 1.0
        ([0.5, 0.9, 0.7, 0.1], False, 0.3),  # ceil(1.2) = 2 lowest: 0.1, 0.5
        ([4.0], True, 4.0),
        ([0.2, float("nan"), 0.8, 0.6], False, 0.2),  # NaN ignored: ceil(0.9) = 1
        ([float("nan")], False, float("nan")),
    ],
)
def test_worst_cases_mean(values, higher_is_worse, expected):
    result = worst_cases_mean(values, higher_is_worse=higher_is_worse)
    if math.isnan(expected):
        assert math.isnan(result)
    else:
        assert result == pytest.approx(expected)


def test_jacobian_on_a_reference_grid_equals_the_resampled_field(monkeypatch):
    """Slab-wise sampling onto a finer grid gives the determinant of the resampled field."""
    import intermodal.metrics as metrics

    monkeypatch.setattr(grids, "SLAB_VOXELS", 500)  # many slabs on this small grid
    rng = np.random.default_rng(1)
    field = sitk.GetImageFromArray(rng.normal(size=(10, 12, 14, 3)) * 0.8, isVector=True)
    field.SetSpacing((2.0, 2.0, 2.0))
    field.SetOrigin((1.0, 2.0, 3.0))
    rotation = sitk.VersorTransform((0.3, 0.2, 0.9), 0.7).GetMatrix()
    field.SetDirection(rotation)
    reference = sitk.Image(25, 21, 17, sitk.sitkUInt8)
    reference.SetSpacing((1.0, 1.1, 1.2))
    reference.SetOrigin((1.5, 2.2, 3.1))
    reference.SetDirection(rotation)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    full = sitk.Resample(field, reference, identity, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    expected = metrics.image_jacobian_det(full)
    got = metrics.image_jacobian_det(field, reference=reference, dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == (17, 21, 25)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.std(expected) > 0.1  # a field that is far from the identity


def test_field_of_another_direction_is_sampled_by_itk(monkeypatch):
    import intermodal.metrics as metrics

    monkeypatch.setattr(grids, "_interpolation_matrix", None)  # the axis-by-axis path: unused
    rng = np.random.default_rng(12)
    field = sitk.GetImageFromArray(rng.normal(size=(6, 7, 8, 3)), isVector=True)
    field.SetSpacing((2.0, 2.0, 2.0))
    reference = sitk.Image(9, 8, 7, sitk.sitkUInt8)
    reference.SetDirection(sitk.VersorTransform((0.0, 0.0, 1.0), 0.3).GetMatrix())
    identity = sitk.Transform(3, sitk.sitkIdentity)
    full = sitk.Resample(field, reference, identity, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    np.testing.assert_array_equal(
        metrics._sampled_rows(field, reference, 2, 5), sitk.GetArrayFromImage(full)[2:5]
    )


def test_jacobian_on_the_fields_own_grid_skips_the_resampling(monkeypatch):
    """A reference with the field's own geometry gives the field's determinant, unsampled."""
    import intermodal.metrics as metrics

    rng = np.random.default_rng(2)
    field = sitk.GetImageFromArray(rng.normal(size=(6, 7, 8, 3)), isVector=True)
    field.SetSpacing((2.0, 1.5, 3.0))
    field.SetOrigin((4.0, -2.0, 1.0))
    field.SetDirection(sitk.VersorTransform((0.1, 0.7, 0.2), 0.4).GetMatrix())
    same = sitk.Image(8, 7, 6, sitk.sitkUInt8)
    same.CopyInformation(field)
    expected = metrics.image_jacobian_det(field)
    sampled = []
    real_sampled_rows = metrics._sampled_rows
    monkeypatch.setattr(
        metrics, "_sampled_rows", lambda *a: sampled.append(a) or real_sampled_rows(*a)
    )
    np.testing.assert_array_equal(metrics.image_jacobian_det(field, reference=same), expected)
    assert sampled == []
    # a grid shifted by half a voxel is another grid: sampled, and different
    shifted = sitk.Image(same)
    shifted.SetOrigin((5.0, -2.0, 1.0))
    moved = metrics.image_jacobian_det(field, reference=shifted)
    assert sampled and not np.allclose(moved, expected)


def test_jacobian_asked_for_in_float32_is_computed_in_it_within_rounding():
    rng = np.random.default_rng(5)
    field = sitk.GetImageFromArray(rng.normal(size=(9, 10, 11, 3)) * 0.6, isVector=True)
    field.SetSpacing((1.5, 2.0, 0.8))
    field.SetDirection(sitk.VersorTransform((0.4, 0.1, 0.3), 1.1).GetMatrix())
    expected = image_jacobian_det(field)
    single = image_jacobian_det(field, dtype=np.float32)
    assert expected.dtype == np.float64 and single.dtype == np.float32
    np.testing.assert_allclose(single, expected, rtol=2e-6, atol=2e-6)
    assert not np.array_equal(single, expected.astype(np.float32))  # not float64, cast
