"""Tests of the CT/MR renderer and the random motions, on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.data import render

SPACING = (2.0, 2.0, 2.0)


def _blocks(shape=(24, 32, 28)) -> np.ndarray:
    """Four tissue classes in slabs along x, inside an air margin: (z, y, x) uint8."""
    labels = np.zeros(shape, np.uint8)
    labels[4:-4, 4:-10, 4:10] = 1
    labels[4:-4, 4:-10, 10:18] = 2
    labels[4:-4, 4:-10, 18:24] = 3
    return labels


def test_tissue_classes_on_a_ramp_have_the_documented_fractions():
    hu = np.arange(-1000, 1000, dtype=np.float32)  # 1 HU steps, 2000 values
    labels = render.tissue_classes_from_ct(hu)
    counts = np.bincount(labels, minlength=4)
    # air -1000..-401 (600), fat -400..-31 (370), soft -30..199 (230), bone 200..999 (800)
    assert counts.tolist() == [600, 370, 230, 800]
    assert labels.dtype == np.uint8
    assert render.tissue_classes_from_ct(np.array([-400.0, -30.0, 200.0])).tolist() == [1, 2, 3]


def test_bad_tissue_classes_nan():
    with pytest.raises(ValueError, match="NaN"):
        render.tissue_classes_from_ct(np.array([0.0, np.nan]))


def test_render_ct_values_per_class_shape_and_determinism():
    labels = _blocks()
    ct = render.render_ct(labels, np.random.default_rng(3), spacing=SPACING)
    assert ct.shape == labels.shape and ct.dtype == np.float32
    again = render.render_ct(labels, np.random.default_rng(3), spacing=SPACING)
    np.testing.assert_array_equal(ct, again)
    other = render.render_ct(labels, np.random.default_rng(4), spacing=SPACING)
    assert not np.array_equal(ct, other)
    # Away from the edges (partial volume), the rendered HU give back the classes.
    core = np.zeros_like(labels, bool)
    core[6:-6, 6:-12] = True
    for tissue in range(4):
        inner = core & (labels == tissue)
        inner[..., [9, 10, 17, 18]] = False
        assert (render.tissue_classes_from_ct(ct)[inner] == tissue).mean() > 0.97


def test_render_ct_maps_extra_labels_through_tissue_of_label():
    labels = _blocks() * 2  # labels 0, 2, 4, 6
    mapping = {0: 0, 2: 1, 4: 2, 6: 3}
    ct = render.render_ct(
        labels, np.random.default_rng(0), spacing=SPACING, tissue_of_label=mapping
    )
    assert np.median(ct[labels == 6]) > 300
    assert -130 < np.median(ct[labels == 2]) < -70


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing": (2.0, 2.0)}, "spacing must have 3"),
        ({"spacing": (2.0, 0.0, 2.0)}, "positive"),
        ({"spacing": SPACING, "tissue_of_label": {0: 0, 1: 1, 2: 2}}, "no entry for label 3"),
        ({"spacing": SPACING, "tissue_of_label": {0: 0, 1: 1, 2: 2, 3: 7}}, "tissue class 7"),
    ],
)
def test_bad_render_ct(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render.render_ct(_blocks(), np.random.default_rng(0), **kwargs)


def test_bad_render_ct_float_labels():
    with pytest.raises(ValueError, match="integer"):
        render.render_ct(_blocks().astype(float), np.random.default_rng(0), spacing=SPACING)


def test_render_mr_t2_contrast_order_shape_and_determinism():
    labels = _blocks()
    kwargs = {"spacing": SPACING, "contrast": "t2", "bias_strength": 0.0, "noise": 0.0}
    mr = render.render_mr(labels, np.random.default_rng(1), **kwargs)
    assert mr.shape == labels.shape and mr.dtype == np.float32 and mr.min() >= 0
    np.testing.assert_array_equal(mr, render.render_mr(labels, np.random.default_rng(1), **kwargs))
    median = [np.median(mr[labels == t]) for t in range(4)]
    assert median[2] > median[1] > median[3] > median[0]  # soft > fat > bone > air


def test_render_mr_bias_field_is_multiplicative_and_smooth():
    labels = _blocks()
    common = {"spacing": SPACING, "contrast": "t2", "noise": 0.0, "gamma_range": (1.0, 1.0)}
    flat = render.render_mr(labels, np.random.default_rng(7), bias_strength=0.0, **common)
    biased = render.render_mr(labels, np.random.default_rng(7), bias_strength=0.5, **common)
    body = flat > 0.3
    log_ratio = np.log(biased[body] / flat[body])
    # Multiplicative: the same field whatever the tissue, of about the asked strength.
    assert 0.1 < log_ratio.std() < 1.0
    full = np.zeros(labels.shape)
    full[body] = log_ratio
    ratio_fat = log_ratio[labels[body] == 1]
    ratio_soft = log_ratio[labels[body] == 2]
    assert abs(ratio_fat.mean() - ratio_soft.mean()) < 2 * log_ratio.std()
    # Smooth: neighbouring voxels (2 mm apart) differ by under half the field's spread.
    step = np.abs(np.diff(full, axis=2))[body[:, :, 1:] & body[:, :, :-1]]
    assert step.max() < 0.5 * log_ratio.std()


def test_render_mr_field_of_view_zeroes_outside_the_centred_slab():
    labels = _blocks((30, 32, 28))
    mr = render.render_mr(labels, np.random.default_rng(2), spacing=SPACING, field_of_view=1 / 3)
    kept = np.nonzero(mr.reshape(30, -1).any(axis=1))[0]
    assert kept.tolist() == list(range(10, 20))


def test_render_mr_thick_slices_blur_along_z_only():
    labels = np.zeros((40, 8, 8), np.uint8)
    labels[20:] = 2
    common = {"spacing": SPACING, "contrast": "t2", "noise": 0.0, "bias_strength": 0.0}
    thin = render.render_mr(labels, np.random.default_rng(5), **common)
    thick = render.render_mr(labels, np.random.default_rng(5), slice_thickness_mm=8.0, **common)

    def edge_width(image):
        profile = image[:, 4, 4] / image[:, 4, 4].max()
        return int(((profile > 0.1) & (profile < 0.9)).sum())

    assert edge_width(thick) >= edge_width(thin) + 2


def test_render_mr_random_contrast_2d():
    labels = _blocks()[12]
    mr = render.render_mr(labels, np.random.default_rng(0), spacing=(2.0, 2.0))
    assert mr.shape == labels.shape and mr.min() >= 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"contrast": "t1"}, "contrast"),
        ({"noise": -0.1}, ">= 0"),
        ({"gamma_range": (1.5, 1.0)}, "gamma_range"),
        ({"field_of_view": 0.0}, "field_of_view"),
        ({"slice_thickness_mm": -1.0}, "slice_thickness_mm"),
    ],
)
def test_bad_render_mr(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render.render_mr(_blocks(), np.random.default_rng(0), spacing=SPACING, **kwargs)


@pytest.mark.parametrize("ndim", [2, 3])
def test_add_couch_lies_below_the_body_and_leaves_it_alone(ndim):
    ct = np.full((20, 40, 30), -1000.0, np.float32)
    ct[2:-2, 5:25, 5:25] = 40.0
    if ndim == 2:
        ct = ct[10]
    spacing = (2.0,) * ndim
    with_couch = render.add_couch(ct, np.random.default_rng(0), spacing=spacing)
    assert with_couch is not ct and with_couch.shape == ct.shape
    changed = np.argwhere(with_couch != ct)
    assert changed.size > 0
    assert changed[:, -2].min() >= 25  # y index: posterior to the body's last row (24)
    body = ct > -500
    np.testing.assert_array_equal(with_couch[body], ct[body])
    assert (with_couch > 100).sum() > 0  # the shell


def test_bad_add_couch_without_body():
    with pytest.raises(ValueError, match="no body"):
        render.add_couch(np.full((8, 8), -1000.0), np.random.default_rng(0), spacing=(1.0, 1.0))


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_rigid_is_bounded(ndim):
    rng = np.random.default_rng(0)
    centre = (10.0, -5.0, 3.0)[:ndim]
    for _ in range(20):
        transform = render.random_rigid(
            rng, ndim, max_rotation_deg=30, max_translation_mm=30, centre=centre
        )
        matrix = np.array(transform.GetMatrix()).reshape(ndim, ndim)
        angle = np.degrees(np.arccos(np.clip((np.trace(matrix) - (ndim - 2)) / 2, -1, 1)))
        assert angle <= 30 + 1e-6
        np.testing.assert_allclose(matrix @ matrix.T, np.eye(ndim), atol=1e-9)
        assert np.linalg.norm(transform.GetTranslation()) <= 30 + 1e-9
        # The centre moves by the translation alone.
        moved = np.array(transform.TransformPoint(centre)) - centre
        np.testing.assert_allclose(moved, transform.GetTranslation(), atol=1e-9)


def test_bad_random_rigid():
    with pytest.raises(ValueError, match="ndim"):
        render.random_rigid(
            np.random.default_rng(0), 4, max_rotation_deg=1, max_translation_mm=1, centre=(0,) * 4
        )
    with pytest.raises(ValueError, match="centre"):
        render.random_rigid(
            np.random.default_rng(0), 3, max_rotation_deg=1, max_translation_mm=1, centre=(0, 0)
        )


@pytest.mark.parametrize(
    ("shape", "spacing"), [((48, 40, 44), (2.0, 2.0, 2.0)), ((64, 56), (1.5, 1.0))]
)
def test_random_smooth_displacement_bounded_and_diffeomorphic(shape, spacing):
    for seed in range(3):
        displacement = render.random_smooth_displacement(
            shape, spacing, np.random.default_rng(seed), max_mm=10.0, scale_mm=30.0
        )
        assert displacement.shape == (len(shape), *shape) and displacement.dtype == np.float32
        length = np.sqrt((displacement**2).sum(axis=0))
        assert length.max() <= 10.0 + 1e-4
        assert length.max() > 5.0  # it uses its budget
        assert render.displacement_jacobian(displacement, spacing).min() > 0


def test_random_smooth_displacement_deterministic_and_zero():
    args = ((20, 20, 20), SPACING)
    a = render.random_smooth_displacement(*args, np.random.default_rng(9), max_mm=5, scale_mm=20)
    b = render.random_smooth_displacement(*args, np.random.default_rng(9), max_mm=5, scale_mm=20)
    np.testing.assert_array_equal(a, b)
    zero = render.random_smooth_displacement(*args, np.random.default_rng(9), max_mm=0, scale_mm=20)
    assert not zero.any()


def test_displacement_jacobian_of_a_known_linear_field():
    # d(x, y, z) = (0.1 x, 0, 0) in mm: determinant 1.1 everywhere.
    shape, spacing = (6, 7, 8), (2.0, 1.0, 3.0)
    x_mm = np.arange(8) * 2.0
    displacement = np.zeros((3, *shape))
    displacement[0] = 0.1 * x_mm[None, None, :]
    np.testing.assert_allclose(render.displacement_jacobian(displacement, spacing), 1.1)


def test_displacement_image_is_the_field_sitk_applies():
    reference = sitk.Image([8, 6, 5], sitk.sitkFloat32)
    reference.SetSpacing((2.0, 1.0, 3.0))
    displacement = np.zeros((3, 5, 6, 8), np.float32)
    displacement[0] = 4.0  # 4 mm along x
    field = render.displacement_image(displacement, reference)
    transform = sitk.DisplacementFieldTransform(field)
    np.testing.assert_allclose(transform.TransformPoint((4.0, 2.0, 3.0)), (8.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="shape"):
        render.displacement_image(displacement[:, :4], reference)
