"""The same inputs and settings give the same outputs: ``intermodal register`` run twice.

Every image output must be byte-identical. ``transform.h5`` is compared by content, not by
bytes: ITK's HDF5 transform writer stamps the file with the time it was written (HDF5 object
modification times), so two writes of one transform differ in a few bytes. Its content (the
transform types, their parameters and fixed parameters, and the displacement field's array) must
be equal. ``report.json`` holds stage times and is not compared.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.cli import main
from intermodal.data.synth import generate_subject

IMAGE_OUTPUTS = (
    "warped.nii.gz",
    "displacement.nii.gz",
    "inverse_displacement.nii.gz",
    "jacobian.nii.gz",
    "warped_labels.nii.gz",
)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> dict[str, Path]:
    """One small synthetic 2D subject: CT (fixed), MR (moving) and the MR's labels."""
    subject = generate_subject(7, dim=2, shape=(96, 96), spacing=2.5)
    folder = tmp_path_factory.mktemp("pair")
    paths = {name: folder / f"{name}.nii.gz" for name in ("ct", "mr", "mr_labels")}
    sitk.WriteImage(subject.ct, str(paths["ct"]))
    sitk.WriteImage(subject.mr, str(paths["mr"]))
    sitk.WriteImage(subject.mr_labels, str(paths["mr_labels"]))
    return paths


def _register(pair_files: dict[str, Path], out: Path) -> None:
    # --model auto is the default: the bundled 2D model, then a short refinement.
    args = [
        "register",
        "--fixed", str(pair_files["ct"]),
        "--moving", str(pair_files["mr"]),
        "--labels", str(pair_files["mr_labels"]),
        "--out", str(out),
        "--model", "auto",
        "--refine", "10",
        "--device", "cpu",
        "--quiet",
    ]  # fmt: skip
    assert main(args) == 0


def _transform_content(path: Path) -> list[tuple[str, tuple, tuple, np.ndarray | None]]:
    """``(type, parameters, fixed parameters, field array)`` of each transform in the file.

    The displacement field's parameters are its whole field, so they are compared through the
    field's array (exact equality) rather than as a tuple of a few thousand floats.
    """
    composite = sitk.CompositeTransform(sitk.ReadTransform(str(path)))
    content = []
    for index in range(composite.GetNumberOfTransforms()):
        transform = composite.GetNthTransform(index).Downcast()
        if isinstance(transform, sitk.DisplacementFieldTransform):
            field = sitk.GetArrayFromImage(transform.GetDisplacementField())
            content.append((transform.GetName(), (), transform.GetFixedParameters(), field))
        else:
            content.append(
                (
                    transform.GetName(),
                    transform.GetParameters(),
                    transform.GetFixedParameters(),
                    None,
                )
            )
    return content


def test_register_twice_gives_identical_outputs(pair_files, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _register(pair_files, first)
    _register(pair_files, second)

    for name in IMAGE_OUTPUTS:
        one, two = (first / name).read_bytes(), (second / name).read_bytes()
        assert hashlib.sha256(one).digest() == hashlib.sha256(two).digest(), name

    one = _transform_content(first / "transform.h5")
    two = _transform_content(second / "transform.h5")
    assert [t[0] for t in one] == [t[0] for t in two]
    assert "DisplacementFieldTransform" in [t[0] for t in one]
    for (name, params, fixed_params, field), (_, params2, fixed_params2, field2) in zip(one, two):
        assert params == params2, name
        assert fixed_params == fixed_params2, name
        if field is not None:
            assert field.dtype == field2.dtype and field.shape == field2.shape, name
            assert np.array_equal(field, field2), name
            assert np.abs(field).max() > 0, "the displacement field is all zero"
    assert (first / "affine.mat").read_bytes() == (second / "affine.mat").read_bytes()
