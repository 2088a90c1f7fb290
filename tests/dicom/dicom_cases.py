"""A CT and an oblique MR series of one patient, and a registration result on them.

A module of its own (not conftest.py) so that tests can import ``make_result`` by a name no
other test folder uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from dicom_helpers import phantom, rotation, write_series


@dataclass
class Case:
    root: Path
    ct_dir: Path
    mr_dir: Path
    ct: dict
    mr: dict
    result: Path
    fixed: sitk.Image
    moving: sitk.Image
    transform: sitk.Transform


def _smooth_displacement(reference: sitk.Image, amplitude: float) -> sitk.Image:
    """A smooth LPS displacement (mm) on ``reference``'s grid, zero at its border."""
    shape = sitk.GetArrayViewFromImage(reference).shape
    z, y, x = np.meshgrid(*[np.linspace(0, np.pi, n) for n in shape], indexing="ij")
    bump = np.sin(z) * np.sin(y) * np.sin(x)
    vectors = np.stack([amplitude * bump, -0.5 * amplitude * bump, 0.3 * amplitude * bump], -1)
    field = sitk.GetImageFromArray(vectors.astype(np.float64), isVector=True)
    field.CopyInformation(reference)
    return field


def make_result(
    root: Path,
    *,
    amplitude: float = 3.0,
    oblique: bool = True,
    missing_slice: bool = True,
    ct_missing_slice: bool = False,
) -> Case:
    """CT on an axial grid; MR oblique with anisotropic slices and one slice missing; a
    registration result with a known affine and a smooth displacement written as ``register``
    writes it (``report.json`` records the inputs' paths and grids)."""
    from intermodal.io import geometry, read_image

    ct_dir, mr_dir = root / "ct", root / "mr"
    ct = write_series(phantom(modality="CT"), ct_dir, skip_slices=(4,) if ct_missing_slice else ())
    direction = rotation(np.array([1.0, 2.0, 3.0]), 0.25) if oblique else None
    mr_image = phantom((8, 22, 18), (2.2, 2.2, 5.0), direction=direction, modality="MR")
    mr = write_series(mr_image, mr_dir, modality="MR", skip_slices=(3,) if missing_slice else ())
    fixed, moving = read_image(ct_dir), read_image(mr_dir)
    affine = sitk.Euler3DTransform()
    affine.SetRotation(0.05, -0.03, 0.08)
    affine.SetTranslation((1.5, -2.0, 1.0))
    displacement = _smooth_displacement(fixed, amplitude)
    inverse = sitk.InvertDisplacementField(
        displacement, maximumNumberOfIterations=50, maxErrorToleranceThreshold=1e-4
    )
    transform = sitk.CompositeTransform(3)
    transform.AddTransform(affine)
    transform.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(displacement)))
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    result = root / "result"
    result.mkdir()
    sitk.WriteImage(warped, str(result / "warped.nii.gz"))
    sitk.WriteImage(displacement, str(result / "displacement.nii.gz"))
    sitk.WriteImage(inverse, str(result / "inverse_displacement.nii.gz"))
    jacobian = sitk.DisplacementFieldJacobianDeterminant(displacement)
    sitk.WriteImage(sitk.Cast(jacobian, sitk.sitkFloat32), str(result / "jacobian.nii.gz"))
    sitk.WriteTransform(affine, str(result / "affine.mat"))
    sitk.WriteTransform(transform, str(result / "transform.h5"))
    report = {
        "intermodal_version": "test",
        "nmi": {"before": 1.0, "after": 1.2},
        "inputs": {"fixed": geometry(fixed), "moving": geometry(moving)},
        "inputs_paths": {"fixed": str(ct_dir), "moving": str(mr_dir)},
    }
    (result / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return Case(root, ct_dir, mr_dir, ct, mr, result, fixed, moving, transform)
