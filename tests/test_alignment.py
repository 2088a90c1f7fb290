"""The initial alignment: rigid by MI with a multi-start, deterministic, robust to misalignment."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from intermodal import alignment, preprocess
from intermodal.data.phantom import LABELS, ORGANS, make_phantom_pair
from intermodal.data.realistic import turned_mr
from intermodal.errors import IntermodalError
from intermodal.metrics import dice_per_label

ORGAN_LABELS = {name: LABELS[name] for name in ORGANS}


def _scaled(pair):
    return (
        preprocess.normalize_intensity(pair.ct, "ct"),
        preprocess.normalize_intensity(pair.mr, "mr"),
    )


def _dice(pair, transform) -> float:
    warped = sitk.Resample(pair.mr_labels, pair.ct, transform, sitk.sitkNearestNeighbor, 0)
    return float(np.nanmean(list(dice_per_label(pair.ct_labels, warped, ORGAN_LABELS).values())))


@pytest.fixture(scope="module")
def rotated_pair():
    """The phantom's MR anatomy turned 30 degrees and shifted 15 mm from the CT's."""
    return make_phantom_pair(
        shape=(32, 48, 48), spacing=5.0, rotation_deg=30.0, shift_mm=(15.0, -10.0, 5.0)
    )


def test_a_30_degree_rotation_is_captured(rotated_pair):
    fixed, moving = _scaled(rotated_pair)
    identity = sitk.AffineTransform(3)
    transform = alignment.initial_alignment(fixed, moving, "rigid")
    assert _dice(rotated_pair, identity) < 0.4
    # the phantom's bladder also fills between the scans, so a rigid map is not perfect
    assert _dice(rotated_pair, transform) > 0.7
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    angle = np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))
    assert abs(abs(angle) - 30.0) < 4.0
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-6)  # rigid: a rotation


def test_the_alignment_is_deterministic(rotated_pair):
    fixed, moving = _scaled(rotated_pair)
    first = alignment.initial_alignment(fixed, moving, "rigid")
    second = alignment.initial_alignment(fixed, moving, "rigid")
    assert first.GetParameters() == second.GetParameters()


def test_the_starts_are_distinct_and_begin_with_the_centre_of_mass(rotated_pair, monkeypatch):
    """The multi-start's starts are different transforms: the centre-of-mass start, always
    first, is not tried twice when MI also ranks it among the best."""
    fixed, moving = _scaled(rotated_pair)
    seen = []
    real = alignment._starts

    def recorded(level, params, moments, offsets, turns):
        starts, stored = real(level, params, moments, offsets, turns)
        seen.append((starts, moments, stored))
        return starts, stored

    monkeypatch.setattr(alignment, "_starts", recorded)
    # the unmoved pair: the centre-of-mass start scores best, and was kept twice before
    alignment.initial_alignment(fixed, fixed, "rigid")
    alignment.initial_alignment(fixed, moving, "rigid")
    alignment.initial_alignment(fixed, moving, "rigid", turns=False)
    # the unmoved pair's centre-of-mass start is among MI's best; the rotated one's is not;
    # each half-turn adds its best start
    turns = len(alignment.TURNS_DEG[3])
    assert [len(starts) for starts, _, _ in seen] == [
        alignment.STARTS_KEPT - 1 + turns, alignment.STARTS_KEPT + turns, alignment.STARTS_KEPT
    ]  # fmt: skip
    # the stored orientation's starts come first, the half-turns' after them
    assert [stored for _, _, stored in seen] == [
        alignment.STARTS_KEPT - 1, alignment.STARTS_KEPT, alignment.STARTS_KEPT
    ]  # fmt: skip
    for starts, moments, _ in seen:
        assert torch.equal(starts[0], moments[0])
        assert len(torch.unique(starts, dim=0)) == len(starts)


def _asymmetric_pair(shape=(40, 48, 48), spacing=4.0):
    """A CT-like and an MR-like image of one body that looks different turned: an ellipsoid
    with a rod (bright on CT, dark on MR) and a ball (dark on CT, bright on MR) off its
    centre, and the label map (body 1, rod 2, ball 3)."""
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * spacing for n in shape], indexing="ij")
    body = (x / 80) ** 2 + (y / 70) ** 2 + (z / 70) ** 2 < 1
    rod = ((x - 35) ** 2 + (y + 10) ** 2 < 12**2) & (z > -10) & (z < 60)
    ball = (x + 30) ** 2 + (y - 25) ** 2 + (z + 35) ** 2 < 18**2
    labels = body.astype(np.uint8)
    labels[rod & body] = 2
    labels[ball & body] = 3
    images = []
    for array in (
        np.choose(labels, [0.0, 0.45, 1.0, 0.3]).astype(np.float32),
        np.choose(labels, [0.0, 0.6, 0.1, 0.95]).astype(np.float32),
        labels,
    ):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing([spacing] * 3)
        image.SetOrigin([-(n - 1) / 2 * spacing for n in shape[::-1]])
        images.append(image)
    return images


def test_structure_distances_count_only_the_masks():
    ct, mr, _ = _asymmetric_pair()
    grid = alignment.downsample(ct, alignment.STRUCTURE_MM)
    candidates = [sitk.AffineTransform(3)]

    def distance(fixed_mask=None, moving_mask=None):
        return alignment._structure_distances(grid, mr, fixed_mask, moving_mask, candidates)[0]

    def mask(image, keep):
        array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
        array[keep] = 3  # any non-zero value counts
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        return out

    everything = (slice(None),) * 3
    # masks that hold every voxel change nothing; half a mask changes what is counted
    assert distance(mask(ct, everything), mask(mr, everything)) == distance()
    half = (slice(None), slice(None), slice(0, 24))
    assert distance(fixed_mask=mask(ct, half)) != distance()
    assert distance(moving_mask=mask(mr, half)) != distance()


def test_a_scan_stored_turned_half_way_round_is_found():
    """The MR stored turned 180 degrees about y: the multi-start around the half-turns finds
    it (the labels overlap again); trusting the stored orientation cannot."""
    ct, mr, labels = _asymmetric_pair()
    turned, turned_labels = turned_mr(mr), turned_mr(labels)

    def dice(transform) -> float:
        warped = sitk.Resample(turned_labels, ct, transform, sitk.sitkNearestNeighbor, 0)
        return float(np.mean(list(dice_per_label(labels, warped, {"rod": 2, "ball": 3}).values())))

    found = alignment.initial_alignment(ct, turned, "rigid")
    trusted = alignment.initial_alignment(ct, turned, "rigid", turns=False)
    assert alignment.half_turn(found) == (0.0, 180.0, 0.0)
    assert alignment.half_turn(trusted) is None
    assert dice(found) > 0.8
    assert dice(trusted) < 0.2
    # the unturned pair keeps its orientation, the same result as without the search
    plain = alignment.initial_alignment(ct, mr, "rigid")
    assert alignment.half_turn(plain) is None
    assert (
        plain.GetParameters()
        == alignment.initial_alignment(ct, mr, "rigid", turns=False).GetParameters()
    )


def test_a_turn_that_wins_mi_at_the_coarsest_level_alone_is_not_taken(grown_pair, monkeypatch):
    """The phantom with a 25 % larger MR looks alike turned 180 degrees about z: a turned
    start comes first by MI after the coarsest level. It goes through the pyramid beside the
    best stored start, which wins there, and the orientation is kept."""
    pair, mr, _ = grown_pair
    fixed = preprocess.normalize_intensity(pair.ct, "ct")
    moving = preprocess.normalize_intensity(mr, "mr")
    first_level = []
    real = alignment._optimise

    def recorded(level, params, start, steps, rate):
        best, mi = real(level, params, start, steps, rate)
        if not first_level:
            first_level.append([alignment.half_turn(params.transform(row)) for row in best])
            first_level.append(mi)
        return best, mi

    monkeypatch.setattr(alignment, "_optimise", recorded)
    rigid = alignment.initial_alignment(fixed, moving, "rigid")
    turns, mi = first_level
    assert turns[int(mi.argmax())] is not None
    assert alignment.half_turn(rigid) is None


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        (np.eye(3), None),
        (np.diag([1.0, -1.0, -1.0]), (180.0, 0.0, 0.0)),
        (np.diag([-1.0, 1.0, -1.0]), (0.0, 180.0, 0.0)),
        (np.diag([-1.0, -1.0, 1.0]), (0.0, 0.0, 180.0)),
        (np.eye(2), None),
        (-np.eye(2), None),  # 2D: no half-turn is searched
    ],
)
def test_half_turn_names_the_nearest_orientation(matrix, expected):
    ndim = len(matrix)
    small = 0.2  # radians: a rotation of about 11 degrees on top does not change the answer
    tilt = np.eye(ndim)
    tilt[:2, :2] = [[np.cos(small), -np.sin(small)], [np.sin(small), np.cos(small)]]
    transform = sitk.AffineTransform(ndim)
    transform.SetMatrix((tilt @ matrix).ravel().tolist())
    assert alignment.half_turn(transform) == expected


def test_a_moving_slab_of_a_third_is_placed_where_the_whole_image_is():
    """An MR that holds data in a third of its slices (zeros elsewhere) lands where the
    whole MR does: its data box is its field of view, and translations are searched along
    the extent it lacks."""
    pair = make_phantom_pair(shape=(48, 40, 40), spacing=5.0, rotation_deg=5.0,
                             shift_mm=(4.0, -3.0, 12.0))  # fmt: skip
    fixed, whole = _scaled(pair)
    mr = sitk.GetArrayFromImage(pair.mr)
    mr[:16] = 0
    mr[32:] = 0
    slab = sitk.GetImageFromArray(mr)
    slab.CopyInformation(pair.mr)
    data = preprocess.data_mask(slab, "mr")
    assert sitk.GetArrayViewFromImage(data).sum() == 16 * 40 * 40  # the box of the slab
    moving = preprocess.normalize_intensity(slab, "mr")
    reference = alignment.initial_alignment(fixed, whole, "rigid")
    found = alignment.initial_alignment(fixed, moving, "rigid", moving_mask=data)
    # the two maps of the CT points that land in the slab
    inverse = reference.GetInverse()
    corners = [data.TransformIndexToPhysicalPoint((x, y, z))
               for x in (0, 39) for y in (0, 39) for z in (16, 31)]  # fmt: skip
    points = [inverse.TransformPoint(c) for c in corners]
    distance = [np.linalg.norm(np.subtract(found.TransformPoint(p), reference.TransformPoint(p)))
                for p in points]  # fmt: skip
    assert max(distance) < 10.0  # two voxels


@pytest.mark.parametrize("method", ["none", "moments"])
def test_none_and_moments(rotated_pair, method):
    fixed, moving = _scaled(rotated_pair)
    transform = alignment.initial_alignment(fixed, moving, method)
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    np.testing.assert_allclose(matrix, np.eye(3))
    if method == "none":
        assert transform.GetTranslation() == (0.0, 0.0, 0.0)
    else:
        assert np.linalg.norm(transform.GetTranslation()) > 5.0


def test_bad_alignment_requests(rotated_pair):
    fixed, moving = _scaled(rotated_pair)
    with pytest.raises(IntermodalError, match="--init must be one of"):
        alignment.initial_alignment(fixed, moving, "bspline")
    flat = sitk.Image(8, 8, sitk.sitkFloat32)
    with pytest.raises(IntermodalError, match="3D but moving image is 2D"):
        alignment.initial_alignment(fixed, flat, "rigid")


@pytest.fixture(scope="module")
def grown_pair():
    """The phantom's MR anatomy 25 % larger than the CT's (another subject's size), shifted."""
    pair = make_phantom_pair(shape=(32, 48, 48), spacing=5.0, shift_mm=(10.0, 0.0, 0.0))
    mr = sitk.Image(pair.mr)
    mr.SetSpacing([1.25 * s for s in mr.GetSpacing()])
    labels = sitk.Image(pair.mr_labels)
    labels.SetSpacing(mr.GetSpacing())
    return pair, mr, labels


def test_rigid_and_affine_are_the_two_methods_in_one_run(rotated_pair):
    fixed, moving = _scaled(rotated_pair)
    rigid, affine = alignment.rigid_and_affine(fixed, moving)
    alone = alignment.initial_alignment(fixed, moving, "rigid")
    assert rigid.GetParameters() == alone.GetParameters()
    expected = alignment.initial_alignment(fixed, moving, "affine")
    assert (affine or rigid).GetParameters() == expected.GetParameters()


def test_the_affine_recovers_a_change_of_size(grown_pair):
    pair, mr, labels = grown_pair
    fixed = preprocess.normalize_intensity(pair.ct, "ct")
    moving = preprocess.normalize_intensity(mr, "mr")
    rigid, affine = alignment.rigid_and_affine(fixed, moving)
    assert affine is not None  # scaling raises MI here
    scale = np.linalg.det(np.asarray(affine.GetMatrix()).reshape(3, 3)) ** (1 / 3)
    assert scale == pytest.approx(1.25, abs=0.08)

    def dice(transform):
        warped = sitk.Resample(labels, pair.ct, transform, sitk.sitkNearestNeighbor, 0)
        scores = dice_per_label(pair.ct_labels, warped, ORGAN_LABELS)
        return float(np.nanmean(list(scores.values())))

    assert dice(affine) > dice(rigid) + 0.05


def test_register_reports_and_warns_about_a_turn_it_takes():
    """``register`` says in report.json which half-turn its initial alignment took, and
    warns; with ``search_orientation=False`` it trusts the stored orientations."""
    from intermodal.registration import Settings, register

    ct, mr, _ = _asymmetric_pair()
    ct_hu = sitk.Cast(ct * 1400.0 - 1000.0, sitk.sitkFloat32)  # air -1000, rod 400 HU
    turned = turned_mr(sitk.Cast(mr * 1000.0, sitk.sitkFloat32))
    found = register(ct_hu, turned, Settings(model=None, refine=0))
    align = found.report["stages"]["align"]
    assert align["half_turn_deg"] == [0.0, 180.0, 0.0]
    assert align["warning"] in found.report["warnings"]
    assert "180 degrees about y" in align["warning"]
    assert "--trust-orientation" in align["warning"]
    trusted = register(ct_hu, turned, Settings(model=None, refine=0, search_orientation=False))
    assert trusted.report["stages"]["align"]["half_turn_deg"] is None
    assert not any("turned" in warning for warning in trusted.report["warnings"])


def test_a_2d_alignment_searches_no_half_turn():
    """In 2D the multi-start keeps to the stored orientation (see ``TURNS_DEG``): a slice
    stored turned 180 degrees in its plane, which the search around a half-turn would find,
    gets the same alignment as with the search switched off."""
    pair = make_phantom_pair(shape=(48, 48), spacing=5.0, rotation_deg=20.0, shift_mm=(5.0, 0.0))
    fixed, moving = _scaled(pair)
    turned = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(moving)[::-1, ::-1].copy())
    turned.CopyInformation(moving)
    searched = alignment.initial_alignment(fixed, turned, "rigid")
    trusted = alignment.initial_alignment(fixed, turned, "rigid", turns=False)
    assert searched.GetParameters() == trusted.GetParameters()
