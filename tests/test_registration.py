"""The whole pipeline: known displacements recovered, outputs consistent with each other."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.data.phantom import LABELS, ORGANS
from intermodal.errors import IntermodalError
from intermodal.metrics import dice_per_label
from intermodal.refinement import level_schedule
from intermodal.registration import Settings, register
from intermodal.report import save_result

ORGAN_LABELS = {name: LABELS[name] for name in ORGANS}


def _blobs_2d(size: int = 64) -> np.ndarray:
    """A smooth 2D test image: a disc with three inner blobs of different brightness."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2
    image = 0.3 * (np.hypot(x - c, y - c) < 0.4 * size)
    for cy, cx, value in ((0.38, 0.38, 0.6), (0.62, 0.45, 0.9), (0.45, 0.66, 0.2)):
        image += value * np.exp(-((x - cx * size) ** 2 + (y - cy * size) ** 2) / (0.06 * size) ** 2)
    return image


def test_known_displacement_is_recovered_across_contrasts():
    """A smooth known deformation between two contrasts is recovered by refinement alone.

    The moving image shows the fixed anatomy with inverted contrast through a Gaussian bump
    displacement of 2.5 pixels (7.5 mm) peak; tolerance: the end-point error where the image has
    structure is under 40% of the true displacement there, and under 1 pixel (3 mm).
    """
    size, spacing, peak = 64, 3.0, 2.5
    fixed_array = _blobs_2d(size)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    bump = peak * np.exp(-((x - 30) ** 2 + (y - 34) ** 2) / (2 * 9.0**2))
    true_u = np.stack([0.6 * bump, 0.8 * bump])  # voxels, array order (y, x)
    from scipy.ndimage import map_coordinates

    moving_array = 1.0 - map_coordinates(fixed_array, [y - true_u[0], x - true_u[1]], order=3)
    # moving(x) = 1 - fixed(x - u): so warped(x) = moving(x + u(x)) matches fixed to first order
    fixed = sitk.GetImageFromArray(fixed_array.astype(np.float32))
    moving = sitk.GetImageFromArray(moving_array.astype(np.float32))
    for image in (fixed, moving):
        image.SetSpacing((spacing, spacing))
    settings = Settings(
        model=None,
        init="none",
        refine=200,
        spacing=spacing,
        fixed_modality="mr",
        moving_modality="mr",
        velocity_stride=1,
        device="cpu",
    )
    result = register(fixed, moving, settings)
    estimate = sitk.GetArrayFromImage(result.displacement)  # (y, x, 2) mm, channels (x, y)
    truth_mm = np.stack([true_u[1], true_u[0]], axis=-1) * spacing
    structure = (bump > 0.3 * peak) & (fixed_array > 0.1)
    error = np.linalg.norm(estimate - truth_mm, axis=-1)[structure]
    magnitude = np.linalg.norm(truth_mm, axis=-1)[structure]
    assert error.mean() < 0.4 * magnitude.mean()
    assert error.mean() < spacing
    assert result.report["nmi"]["after"] > result.report["nmi"]["before"]


@pytest.fixture(scope="module")
def phantom_result(small_pair):
    settings = Settings(model=None, refine=60, spacing=5.0, device="cpu")
    return register(small_pair.ct, small_pair.mr, settings)


def _mean_dice(reference, candidate, labels=ORGAN_LABELS) -> float:
    return float(np.nanmean(list(dice_per_label(reference, candidate, labels).values())))


def test_phantom_dice_improves_beyond_affine_and_field_does_not_fold(small_pair, phantom_result):
    nearest = sitk.sitkNearestNeighbor
    identity = sitk.Transform(3, sitk.sitkIdentity)
    before = sitk.Resample(small_pair.mr_labels, small_pair.ct, identity, nearest)
    affine = sitk.Resample(small_pair.mr_labels, small_pair.ct, phantom_result.affine, nearest)
    after = phantom_result.warp_image(small_pair.mr_labels, labels=True)
    dice_before = _mean_dice(small_pair.ct_labels, before)
    dice_affine = _mean_dice(small_pair.ct_labels, affine)
    dice_after = _mean_dice(small_pair.ct_labels, after)
    assert dice_after > dice_before + 0.15
    assert dice_after > dice_affine + 0.02
    assert phantom_result.report["jacobian"]["nonpositive_fraction"] < 1e-3
    assert set(np.unique(sitk.GetArrayFromImage(after))) <= set(range(6))


def test_outputs_live_on_the_fixed_grid(small_pair, phantom_result):
    for image in (
        phantom_result.warped,
        phantom_result.displacement,
        phantom_result.jacobian,
        phantom_result.inverse_displacement,
    ):
        assert image.GetSize() == small_pair.ct.GetSize()
        assert image.GetOrigin() == small_pair.ct.GetOrigin()
        assert image.GetSpacing() == small_pair.ct.GetSpacing()
        assert image.GetDirection() == small_pair.ct.GetDirection()


def test_written_transform_reproduces_warped(tmp_path, small_pair, phantom_result):
    out = save_result(phantom_result, tmp_path / "out")
    transform = sitk.ReadTransform(str(out / "transform.h5"))
    warped = sitk.ReadImage(str(out / "warped.nii.gz"))
    again = sitk.Resample(
        small_pair.mr,
        small_pair.ct,
        transform,
        sitk.sitkLinear,
        float(sitk.GetArrayViewFromImage(small_pair.mr).min()),
    )
    difference = np.abs(sitk.GetArrayFromImage(again) - sitk.GetArrayFromImage(warped))
    value_range = float(np.ptp(sitk.GetArrayFromImage(small_pair.mr)))
    assert difference.max() < 1e-4 * value_range
    # the displacement file plus the recorded affine is the same transform
    field = sitk.ReadImage(str(out / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    rebuilt = sitk.CompositeTransform(3)
    rebuilt.AddTransform(sitk.ReadTransform(str(out / "affine.mat")))
    rebuilt.AddTransform(sitk.DisplacementFieldTransform(field))
    point = small_pair.ct.TransformIndexToPhysicalPoint((20, 18, 15))
    np.testing.assert_allclose(
        rebuilt.TransformPoint(point), transform.TransformPoint(point), atol=1e-3
    )


def test_inverse_displacement_undoes_the_forward_one(small_pair, phantom_result):
    """Inverse(forward(p)) returns to p: mean error under 0.05 voxel, worst under 0.4 voxel.

    Both fields come from one velocity (negated) integrated on a 5 mm grid and interpolated
    onto the fixed grid; the worst case sits where the field compresses tissue to a third
    (Jacobian about 0.35), where interpolation on a coarse grid costs most.
    """
    forward = sitk.DisplacementFieldTransform(sitk.Image(phantom_result.displacement))
    inverse = sitk.DisplacementFieldTransform(sitk.Image(phantom_result.inverse_displacement))
    voxel = small_pair.ct.GetSpacing()[0]
    magnitudes, errors = [], []
    for index in np.ndindex(6, 6, 6):
        p = np.asarray(
            small_pair.ct.TransformIndexToPhysicalPoint([10 + 3 * int(i) for i in index])
        )
        q = np.asarray(forward.TransformPoint(tuple(p)))
        magnitudes.append(np.linalg.norm(q - p))
        errors.append(np.linalg.norm(np.asarray(inverse.TransformPoint(tuple(q))) - p))
    assert np.mean(errors) < 0.05 * voxel
    assert np.max(errors) < 0.4 * voxel
    assert np.max(magnitudes) > 0.5 * voxel  # not vacuous: the field does move points


def test_map_points_follows_the_transform(small_pair, phantom_result):
    points = np.array([[0.0, 0.0, 0.0], [10.0, -5.0, 20.0]])
    mapped = phantom_result.map_points(points)
    for p, q in zip(points, mapped):
        np.testing.assert_allclose(q, phantom_result.transform.TransformPoint(tuple(p)))


def test_2d_pair_registers(small_pair_2d):
    result = register(
        small_pair_2d.ct, small_pair_2d.mr, Settings(model=None, refine=40, device="cpu")
    )
    assert result.warped.GetDimension() == 2
    assert result.report["nmi"]["after"] > result.report["nmi"]["before"]
    identity = sitk.Transform(2, sitk.sitkIdentity)
    before = sitk.Resample(
        small_pair_2d.mr_labels, small_pair_2d.ct, identity, sitk.sitkNearestNeighbor
    )
    after = result.warp_image(small_pair_2d.mr_labels, labels=True)
    organs = {k: v for k, v in ORGAN_LABELS.items() if k != "prostate"}
    affine = sitk.Resample(
        small_pair_2d.mr_labels, small_pair_2d.ct, result.affine, sitk.sitkNearestNeighbor
    )
    dice_after = _mean_dice(small_pair_2d.ct_labels, after, organs)
    assert dice_after > _mean_dice(small_pair_2d.ct_labels, before, organs) + 0.05
    assert dice_after > _mean_dice(small_pair_2d.ct_labels, affine, organs)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(refine=-1), "--refine"),
        (Settings(steps_after_network=1.5), "--steps-after-network"),
        (Settings(steps_after_network=-0.1), "--steps-after-network"),
        (Settings(init="bspline"), "--init"),
        (Settings(device="tpu"), "--device"),
        (Settings(similarity="ssd"), "similarity"),
        (Settings(spacing=0.0), "--spacing"),
        (Settings(integration_steps=11), "integration steps"),
        (Settings(integration_steps=2.0), "integration steps"),
        (Settings(level_steps=(6, 6)), "level steps"),  # 2 counts for the 3 default levels
        (Settings(level_steps=(6, -1, 6)), "level steps"),
        (Settings(level_steps=(6, 6.5, 6)), "level steps"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(IntermodalError, match=message):
        settings.validate()


def test_bad_dimension_mismatch(small_pair, small_pair_2d):
    with pytest.raises(IntermodalError, match="3D but moving image is 2D"):
        register(small_pair.ct, small_pair_2d.mr, Settings(device="cpu"))


def test_itk_reproduces_warped_from_the_written_transforms(tmp_path, small_pair, phantom_result):
    """SimpleITK, reading only the files on disk, reproduces warped.nii.gz: from transform.h5
    as the README shows, and from affine.mat and displacement.nii.gz chained. A composite
    transform applies the transform added last to a point first, so the fixed point p maps to
    affine(p + d(p))."""
    out = save_result(phantom_result, tmp_path / "out")
    sitk.WriteImage(small_pair.ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(small_pair.mr, str(tmp_path / "mr.nii.gz"))
    fixed = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    moving = sitk.ReadImage(str(tmp_path / "mr.nii.gz"), sitk.sitkFloat32)
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    inside = ours > float(ours.min())
    assert inside.mean() > 0.5  # most of the grid is compared
    field = sitk.ReadImage(str(out / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    chain = sitk.CompositeTransform(3)
    chain.AddTransform(sitk.ReadTransform(str(out / "affine.mat")))
    chain.AddTransform(sitk.DisplacementFieldTransform(field))
    for transform in (sitk.ReadTransform(str(out / "transform.h5")), chain):
        warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)
        difference = np.abs(sitk.GetArrayFromImage(warped) - ours)[inside]
        assert difference.mean() < 1e-3 * float(np.ptp(ours))


def test_ants_applies_the_written_transforms(tmp_path, small_pair, phantom_result):
    """antsApplyTransforms (through antspyx) reproduces warped.nii.gz from our files.

    Runs where the 'bench' extra is installed; CI checks the same files with ITK's own reader
    (test_itk_reproduces_warped_from_the_written_transforms)."""
    ants = pytest.importorskip("ants", reason="antspyx not installed (the 'bench' extra)")
    out = save_result(phantom_result, tmp_path / "out")
    sitk.WriteImage(small_pair.ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(small_pair.mr, str(tmp_path / "mr.nii.gz"))
    fixed = ants.image_read(str(tmp_path / "ct.nii.gz"))
    moving = ants.image_read(str(tmp_path / "mr.nii.gz"))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz"))).transpose(2, 1, 0)
    inside = ours > float(ours.min())
    for chain in (["transform.h5"], ["displacement.nii.gz", "affine.mat"]):
        warped = ants.apply_transforms(
            fixed, moving, transformlist=[str(out / name) for name in chain]
        ).numpy()
        assert np.abs(warped - ours)[inside].mean() < 1e-3 * float(np.ptp(ours))


def test_same_inputs_and_settings_give_identical_results(small_pair_2d):
    settings = Settings(model=None, refine=20, device="cpu")
    first = register(small_pair_2d.ct, small_pair_2d.mr, settings)
    second = register(small_pair_2d.ct, small_pair_2d.mr, settings)
    for name in ("warped", "displacement", "jacobian"):
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(getattr(first, name)),
            sitk.GetArrayFromImage(getattr(second, name)),
        )
    assert first.affine.GetParameters() == second.affine.GetParameters()


def test_model_keeps_its_trained_spacing_when_refining_at_another(
    tmp_path, small_pair_2d, monkeypatch
):
    """A network trained at 6 mm, asked for a 3 mm working grid, gives the same field in mm.

    The network is made to predict a constant velocity of 0.5 voxels of its coarse grid along
    array axis 0 (y); integrated, that is a uniform shift. Run at its own spacing and at half
    of it, the physical displacement inside the image agrees to within 10%.
    """
    import torch

    from intermodal.checkpoint import save_model
    from intermodal.networks import RegistrationModel

    model = RegistrationModel(ndim=2)
    with torch.no_grad():
        model.unet.head.weight.zero_()
        model.unet.head.bias.copy_(torch.tensor([0.5, 0.0]))
    path = save_model(
        model, tmp_path / "shift.safetensors", {"preprocessing": {"spacing": [6.0, 6.0]}}
    )
    import intermodal.registration as registration

    # the guard would drop this field, which does not register anything: let it through
    monkeypatch.setattr(
        registration.refinement, "similarity_of", lambda images, v, options: -float(v.abs().sum())
    )
    fields = {}
    for spacing in (6.0, 3.0):
        settings = Settings(model=str(path), refine=0, init="none", spacing=spacing, device="cpu")
        result = register(small_pair_2d.ct, small_pair_2d.mr, settings)
        array = sitk.GetArrayFromImage(result.displacement)  # (y, x, 2) mm, channels (x, y)
        fields[spacing] = array[16:48, 16:48]
    shift = np.abs(fields[6.0][..., 1]).mean()
    assert shift > 3.0  # about 0.5 coarse voxels of 12 mm, scaled a little by the resizing
    assert np.abs(fields[3.0] - fields[6.0]).mean() < 0.1 * shift


def test_jacobian_output_respects_the_image_direction(small_pair_2d):
    """The Jacobian image is det(I + grad d) in mm, with the fixed image's direction (ITK's
    DisplacementFieldJacobianDeterminant ignores the direction; this guards against it)."""
    from intermodal.metrics import image_jacobian_det

    fixed, moving = sitk.Image(small_pair_2d.ct), sitk.Image(small_pair_2d.mr)
    fixed.SetDirection((0.0, -1.0, 1.0, 0.0))  # rotated 90 degrees
    moving.SetDirection((0.0, -1.0, 1.0, 0.0))
    result = register(fixed, moving, Settings(model=None, refine=20, device="cpu"))
    expected = image_jacobian_det(result.displacement)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(result.jacobian), expected, rtol=1e-5, atol=1e-5
    )
    assert result.report["jacobian"]["min"] == pytest.approx(expected.min(), rel=1e-5)


def test_fields_stay_on_the_working_grid_and_match_the_fixed_grid_outputs(small_pair, tmp_path):
    """The transform carries the working-grid field; the fixed-grid views of it agree."""
    phantom_result = register(
        small_pair.ct, small_pair.mr, Settings(model=None, refine=30, spacing=10.0)
    )
    working = phantom_result.report["working_grid"]
    assert list(phantom_result.field.GetSize()) == list(working["size"])
    assert phantom_result.field.GetSpacing() == (10.0, 10.0, 10.0)  # the CT's is 5 mm
    displacement = phantom_result.displacement
    assert displacement.GetSize() == small_pair.ct.GetSize()
    assert displacement.GetPixelID() == sitk.sitkVectorFloat64
    # the composite transform (working-grid field) moves fixed voxels exactly as a transform
    # built on the fixed-grid field does
    on_fixed = sitk.CompositeTransform(3)
    on_fixed.AddTransform(phantom_result.affine)
    on_fixed.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(displacement)))
    for index in ((3, 4, 5), (20, 17, 11), (33, 30, 25)):
        p = small_pair.ct.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(
            phantom_result.transform.TransformPoint(p), on_fixed.TransformPoint(p), atol=1e-6
        )
    save_result(phantom_result, tmp_path / "out")
    written = sitk.ReadImage(str(tmp_path / "out" / "displacement.nii.gz"))
    assert written.GetSize() == small_pair.ct.GetSize()
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(displacement), atol=1e-4
    )
    inverse = sitk.ReadImage(str(tmp_path / "out" / "inverse_displacement.nii.gz"))
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(inverse),
        sitk.GetArrayFromImage(phantom_result.inverse_displacement),
        atol=1e-4,
    )
    assert np.abs(sitk.GetArrayFromImage(written)).max() > 1.0  # the field is not zero


def test_qc_planes_are_the_planes_of_the_whole_resampled_volume():
    from intermodal.report import _planes_through, _slices

    rng = np.random.default_rng(0)
    moving = sitk.GetImageFromArray(rng.random((20, 24, 28)).astype(np.float32))
    moving.SetSpacing((1.2, 1.1, 1.5))
    reference = sitk.Image(30, 26, 22, sitk.sitkFloat32)
    reference.SetSpacing((1.0, 1.0, 1.3))
    reference.SetOrigin((0.5, -0.3, 0.2))
    reference.SetDirection(sitk.VersorTransform((0.1, 0.2, 0.9), 0.2).GetMatrix())
    transform = sitk.AffineTransform(3)
    transform.SetTranslation((0.7, -0.4, 1.1))
    transform.SetMatrix((1.02, 0.01, 0.0, 0.0, 0.98, 0.02, 0.01, 0.0, 1.0))
    whole = sitk.GetArrayFromImage(sitk.Resample(moving, reference, transform, sitk.sitkLinear))
    centre = tuple(n // 2 for n in whole.shape)
    planes = _planes_through(moving, reference, transform, centre)
    for expected, got in zip(_slices(whole, centre), planes, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_velocity_smoothing_lowers_the_jacobian_spread(small_pair):
    rough = register(
        small_pair.ct,
        small_pair.mr,
        # the two coarser levels: 30 steps over three levels leave too few at each on this
        # small 5 mm phantom, and the property tested is the smoothing's, not the pyramid's
        Settings(model=None, refine=30, spacing=5.0, velocity_smoothing=0.0, pyramid=(4, 2)),
    )
    smooth = register(
        small_pair.ct,
        small_pair.mr,
        Settings(model=None, refine=30, spacing=5.0, velocity_smoothing=2.0, pyramid=(4, 2)),
    )
    assert smooth.report["jacobian"]["sdlogj"] < 0.8 * rough.report["jacobian"]["sdlogj"]
    # and it still registers: organ Dice well above the affine's (0.76 -> 0.81 when written)
    nearest = sitk.sitkNearestNeighbor
    affine = sitk.Resample(small_pair.mr_labels, small_pair.ct, smooth.affine, nearest)
    after = smooth.warp_image(small_pair.mr_labels, labels=True)
    assert _mean_dice(small_pair.ct_labels, after) > _mean_dice(small_pair.ct_labels, affine) + 0.03
    with pytest.raises(IntermodalError, match="smoothing"):
        Settings(velocity_smoothing=9.0).validate()


def test_volume_penalty_lowers_the_jacobian_spread(small_pair):
    free = register(small_pair.ct, small_pair.mr, Settings(model=None, refine=30, spacing=5.0))
    penalised = register(
        small_pair.ct,
        small_pair.mr,
        Settings(model=None, refine=30, spacing=5.0, volume_penalty=4.0),
    )
    assert penalised.report["jacobian"]["sdlogj"] < 0.7 * free.report["jacobian"]["sdlogj"]
    with pytest.raises(IntermodalError, match="volume penalty"):
        Settings(volume_penalty=-1.0).validate()


def test_sampled_similarity_registers_and_repeats(small_pair):
    """MIND at a tenth of the voxels per step still registers, and a seed fixes the draws."""
    settings = Settings(model=None, refine=30, spacing=5.0, sampling=0.1, device="cpu")
    sampled = register(small_pair.ct, small_pair.mr, settings)
    nearest = sitk.sitkNearestNeighbor
    affine = sitk.Resample(small_pair.mr_labels, small_pair.ct, sampled.affine, nearest)
    after = sampled.warp_image(small_pair.mr_labels, labels=True)
    assert _mean_dice(small_pair.ct_labels, after) > _mean_dice(small_pair.ct_labels, affine) + 0.03
    again = register(small_pair.ct, small_pair.mr, settings)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sampled.displacement), sitk.GetArrayFromImage(again.displacement)
    )
    other = register(small_pair.ct, small_pair.mr, replace(settings, seed=1))
    assert not np.array_equal(
        sitk.GetArrayFromImage(sampled.displacement), sitk.GetArrayFromImage(other.displacement)
    )
    for bad in (0.0, 1.5):
        with pytest.raises(IntermodalError, match="sampling"):
            Settings(sampling=bad).validate()


def test_coarse_levels_refine_a_coarser_velocity_and_still_register(small_pair, monkeypatch):
    """With ``coarse_level_velocity`` (the default) the 4x level works on a velocity of its own
    grid, with learning rate and smoothing scaled to keep their size in mm; finer levels are
    unchanged."""
    import intermodal.refinement as refinement

    calls = []
    real = refinement.refine_velocity

    def recording(images, velocity, options, **kwargs):
        calls.append((tuple(images.fixed.shape[2:]), tuple(velocity.shape[2:]), options))
        return real(images, velocity, options, **kwargs)

    monkeypatch.setattr(refinement, "refine_velocity", recording)
    settings = Settings(
        model=None,
        refine=30,
        spacing=5.0,
        pyramid=(4, 2, 1),
        velocity_stride=2,
        coarse_level_velocity=False,
        device="cpu",
    )
    plain = register(small_pair.ct, small_pair.mr, settings)
    plain_calls, calls[:] = list(calls), []
    levelled = register(small_pair.ct, small_pair.mr, replace(settings, coarse_level_velocity=True))
    assert len(calls) == len(plain_calls) == 3
    (image4, velocity4, kw4), (image2, velocity2, kw2), (image1, velocity1, kw1) = calls
    working = image1
    assert velocity4 == image4 == tuple(n // 4 for n in working)
    assert velocity2 == velocity1 == image2 == tuple(n // 2 for n in working)
    assert [c[1] for c in plain_calls] == [velocity1] * 3  # without it: stride 2 throughout
    assert kw4.learning_rate == pytest.approx(0.5 * settings.learning_rate)
    assert kw4.velocity_smoothing == pytest.approx(0.5 * settings.velocity_smoothing)
    assert kw2.learning_rate == kw1.learning_rate == settings.learning_rate
    assert kw1.velocity_smoothing == settings.velocity_smoothing
    # both register the phantom (organ Dice well above the affine's), to a similar result
    nearest = sitk.sitkNearestNeighbor
    affine = sitk.Resample(small_pair.mr_labels, small_pair.ct, levelled.affine, nearest)
    before = _mean_dice(small_pair.ct_labels, affine)
    for result in (plain, levelled):
        after = _mean_dice(
            small_pair.ct_labels, result.warp_image(small_pair.mr_labels, labels=True)
        )
        assert after > before + 0.03


@pytest.mark.parametrize(
    ("settings", "shape", "expected"),
    [
        # refine shared equally, the finest level taking the remainder
        (Settings(refine=20, pyramid=(4, 2, 1)), (40, 48, 48), [(4, 6), (2, 6), (1, 8)]),
        # a level under 8 voxels along an axis is skipped; the others share its steps
        (Settings(refine=20, pyramid=(4, 2, 1)), (24, 48, 48), [(2, 10), (1, 10)]),
        (Settings(refine=20, pyramid=(4, 2, 1)), (6, 48, 48), [(1, 20)]),
        # level_steps: its own count a level; refine is not used
        (
            Settings(refine=99, pyramid=(4, 2, 1), level_steps=(6, 6, 12)),
            (40, 48, 48),
            [(4, 6), (2, 6), (1, 12)],
        ),
        # a skipped level passes its steps to the next level kept ...
        (Settings(pyramid=(4, 2, 1), level_steps=(6, 6, 12)), (24, 48, 48), [(2, 12), (1, 12)]),
        # ... to the last one kept after it, and to the working grid if none is kept
        (Settings(pyramid=(2, 8), level_steps=(5, 7)), (24, 48, 48), [(2, 12)]),
        (Settings(pyramid=(4, 2, 1), level_steps=(6, 6, 12)), (6, 48, 48), [(1, 24)]),
        (
            Settings(pyramid=(4, 2, 1), level_steps=(0, 6, 12)),
            (40, 48, 48),
            [(4, 0), (2, 6), (1, 12)],
        ),
    ],
)
def test_level_schedule(settings, shape, expected):
    settings.validate()
    schedule = level_schedule(settings.pyramid, settings.refine, settings.level_steps, shape)
    assert schedule == expected
    assert sum(steps for _, steps in expected) == settings.refine_steps


def test_level_steps_set_the_steps_of_each_level(small_pair, monkeypatch):
    """register refines each level for its own count of steps, and reports progress against
    their sum."""
    import intermodal.refinement as refinement

    calls = []
    real = refinement.refine_velocity

    def recording(images, velocity, options, **kwargs):
        calls.append((tuple(images.fixed.shape[2:]), kwargs["steps"]))
        return real(images, velocity, options, **kwargs)

    monkeypatch.setattr(refinement, "refine_velocity", recording)
    progress = []
    settings = Settings(
        model=None, pyramid=(4, 2, 1), level_steps=(2, 0, 5), spacing=5.0, device="cpu"
    )
    result = register(
        small_pair.ct,
        small_pair.mr,
        settings,
        progress=lambda stage, step, total: progress.append((stage, step, total)),
    )
    working = tuple(result.report["working_grid"]["size"][::-1])
    assert calls == [(tuple(n // 4 for n in working), 2), (working, 5)]
    refine = [(step, total) for stage, step, total in progress if stage == "refine"]
    assert refine == [(step, 7) for step in range(1, 8)]
    assert tuple(result.report["settings"]["level_steps"]) == (2, 0, 5)


@pytest.mark.parametrize(("similarity", "mi_weight"), [("mi", 0.0), ("mind", 1.0)])
def test_mutual_information_refinement_registers_and_raises_nmi(small_pair, similarity, mi_weight):
    """MI alone, or MIND with an MI term: Dice above the initial alignment's and the
    working-grid NMI above its value after it. On this 5 mm phantom the refinement works on the
    working grid itself (the default 8 mm velocity is too coarse for its small organs)."""
    settings = Settings(
        model=None,
        refine=30,
        spacing=5.0,
        pyramid=(4, 2, 1),
        velocity_stride=2,
        sampling=1.0,
        smoothness=1.0,
        volume_penalty=0.0,
        similarity=similarity,
        mi_weight=mi_weight,
        device="cpu",
    )
    result = register(small_pair.ct, small_pair.mr, settings)
    nearest = sitk.sitkNearestNeighbor
    affine = sitk.Resample(small_pair.mr_labels, small_pair.ct, result.affine, nearest)
    after = result.warp_image(small_pair.mr_labels, labels=True)
    assert _mean_dice(small_pair.ct_labels, after) > _mean_dice(small_pair.ct_labels, affine) + 0.03
    assert result.report["nmi"]["after"] > result.report["nmi"]["after_initial"] + 0.01
    assert result.report["settings"]["mi_weight"] == mi_weight
    for bad in (-0.1, 101.0):
        with pytest.raises(IntermodalError, match="MI weight"):
            Settings(mi_weight=bad).validate()
