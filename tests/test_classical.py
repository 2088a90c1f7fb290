"""Initial alignment by Mattes MI recovers a known rotation and shift across modalities."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal import classical, preprocess
from intermodal.data.phantom import make_phantom_pair
from intermodal.errors import IntermodalError


def _rotation_deg(transform: sitk.Transform) -> float:
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    u, _, vt = np.linalg.svd(matrix)  # nearest rotation, ignores small scaling
    rotation = u @ vt
    return float(np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0])))


@pytest.mark.parametrize("method", ["rigid", "affine"])
def test_initial_alignment_recovers_in_plane_rotation(method):
    pair = make_phantom_pair(shape=(40, 56, 56), spacing=3.5, rotation_deg=15.0, bladder_scale=1.0)
    fixed = preprocess.normalize_intensity(pair.ct, "ct")
    moving = preprocess.normalize_intensity(pair.mr, "mr")
    transform = classical.initial_alignment(fixed, moving, method)
    # The MR shows CT anatomy point a at R a + t (R: +15 degrees about z, t = (6, -4, 3) mm),
    # so the fixed -> moving transform is exactly that map.
    assert abs(_rotation_deg(transform) - 15.0) < 3.0
    at_origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    assert np.linalg.norm(at_origin - np.array([6.0, -4.0, 3.0])) < 3.5  # one voxel


def test_none_is_identity():
    image = sitk.Image(8, 8, 8, sitk.sitkFloat32)
    transform = classical.initial_alignment(image, image, "none")
    assert transform.TransformPoint((1.0, 2.0, 3.0)) == (1.0, 2.0, 3.0)


def test_bad_init_method_and_dimensions():
    image3 = sitk.Image(8, 8, 8, sitk.sitkFloat32)
    image2 = sitk.Image(8, 8, sitk.sitkFloat32)
    with pytest.raises(IntermodalError, match="--init"):
        classical.initial_alignment(image3, image3, "spline")
    with pytest.raises(IntermodalError, match="2D"):
        classical.initial_alignment(image3, image2, "rigid")
    with pytest.raises(IntermodalError, match="minimum step must be positive"):
        classical.initial_alignment(image3, image3, "rigid", min_step=0.0)


def test_a_coarser_minimum_step_stops_sooner():
    # The optimiser halves its step each time the gradient turns back and stops below
    # min_step, so a larger min_step means fewer iterations, hence a different answer.
    pair = make_phantom_pair(shape=(40, 56, 56), spacing=3.5, rotation_deg=15.0, bladder_scale=1.0)
    fixed = preprocess.normalize_intensity(pair.ct, "ct")
    moving = preprocess.normalize_intensity(pair.mr, "mr")
    fine = classical.initial_alignment(fixed, moving, "rigid", min_step=1e-3)
    coarse = classical.initial_alignment(fixed, moving, "rigid", min_step=0.5)
    assert fine.GetParameters() != coarse.GetParameters()
    assert abs(_rotation_deg(fine) - 15.0) < 3.0
