"""The streaming displacement writer: the file ITK would write, from a field on any grid."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal import grids
from intermodal.errors import IntermodalError
from intermodal.io.nifti import write_displacement_nifti, write_float32_nifti

# Header fields that are float32 numbers computed from the geometry: ITK and we may differ in
# the last bits (float32 vs float64 arithmetic). Every other header byte must be equal.
_FLOAT_FIELDS = [(76, 8), (256, 6), (280, 12)]  # pixdim, quatern b c d + qoffset, srow


def _vector_image(shape: tuple[int, ...], *, reflect: bool, seed: int = 0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    image = sitk.GetImageFromArray(rng.normal(size=(*shape, ndim)).astype(np.float32), True)
    if ndim == 3:
        image.SetSpacing((0.5, 0.7, 1.5))
        image.SetOrigin((10.0, -20.0, 30.0))
        rotation = np.array(sitk.VersorTransform((0.3, 0.2, 0.9), 0.7).GetMatrix()).reshape(3, 3)
    else:
        image.SetSpacing((0.5, 0.7))
        image.SetOrigin((10.0, -20.0))
        rotation = np.array([[0.6, -0.8], [0.8, 0.6]])
    if reflect:
        rotation[:, 1] *= -1
    image.SetDirection(rotation.ravel().tolist())
    return image


def _split(data: bytes) -> tuple[bytes, list[np.ndarray], bytes]:
    header = data[:352]
    floats = [np.array(struct.unpack_from(f"<{n}f", header, at)) for at, n in _FLOAT_FIELDS]
    masked = bytearray(header)
    for at, n in _FLOAT_FIELDS:
        masked[at : at + 4 * n] = bytes(4 * n)
    return bytes(masked), floats, data[352:]


def _assert_same_file(ours_path, itk_path) -> None:
    """Every header byte but the float fields' last bits, and the data byte for byte."""
    ours = _split(gzip.open(ours_path).read())
    theirs = _split(gzip.open(itk_path).read())
    assert ours[0] == theirs[0]  # every non-float header byte
    for a, b in zip(ours[1], theirs[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert ours[2] == theirs[2]  # the data, byte for byte


@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("shape", [(4, 5, 6), (5, 6)])
def test_same_file_as_itk(tmp_path, shape, reflect):
    image = _vector_image(shape, reflect=reflect)
    sitk.WriteImage(image, str(tmp_path / "itk.nii.gz"), useCompression=True)
    write_displacement_nifti(image, image, tmp_path / "ours.nii.gz")
    _assert_same_file(tmp_path / "ours.nii.gz", tmp_path / "itk.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "ours.nii.gz"))
    assert back.GetDimension() == len(shape)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_coarse_field_is_interpolated_onto_the_reference(tmp_path):
    coarse = sitk.Cast(_vector_image((6, 7, 8), reflect=False), sitk.sitkVectorFloat64)
    coarse.SetSpacing((2.0, 2.0, 2.0))
    reference = sitk.Image(15, 13, 11, sitk.sitkInt16)
    reference.SetSpacing((1.0, 1.1, 1.2))
    reference.SetOrigin((10.5, -19.0, 30.7))
    reference.SetDirection(coarse.GetDirection())
    write_displacement_nifti(coarse, reference, tmp_path / "d.nii")
    expected = sitk.Resample(
        coarse, reference, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0,
        sitk.sitkVectorFloat32,
    )  # fmt: skip
    back = sitk.ReadImage(str(tmp_path / "d.nii"))
    assert back.GetSize() == reference.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(expected))
    assert np.abs(sitk.GetArrayFromImage(back)).max() > 0.5  # not all zero


@pytest.mark.parametrize("rotate", [False, True])
def test_field_written_in_slabs_or_through_itk_is_itks_resampling(tmp_path, monkeypatch, rotate):
    """Slabs of 2 rows, axis by axis (the grids share their direction) or by ITK (they do
    not): ITK's values."""
    monkeypatch.setattr(grids, "SLAB_VOXELS", 2 * 15 * 13)
    coarse = sitk.Cast(_vector_image((6, 7, 8), reflect=False, seed=3), sitk.sitkVectorFloat64)
    coarse.SetSpacing((2.0, 2.0, 2.0))
    reference = sitk.Image(15, 13, 11, sitk.sitkInt16)
    reference.SetSpacing((1.0, 1.1, 1.2))
    reference.SetOrigin((10.5, -19.0, 30.7))  # partly beyond the coarse grid: zeros there
    reference.SetDirection(coarse.GetDirection())
    if rotate:
        reference.SetDirection(sitk.VersorTransform((0.0, 0.0, 1.0), 0.2).GetMatrix())
    write_displacement_nifti(coarse, reference, tmp_path / "d.nii.gz")
    expected = sitk.Resample(
        coarse, reference, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0,
        sitk.sitkVectorFloat32,
    )  # fmt: skip
    expected = sitk.GetArrayFromImage(expected)
    with gzip.open(tmp_path / "d.nii.gz") as stream:  # a plain gzip stream
        body = stream.read()[352:]
    components = np.frombuffer(body, dtype="<f4").reshape(3, 11, 13, 15)
    np.testing.assert_array_equal(np.moveaxis(components, 0, -1), expected)
    zero = np.all(expected == 0, axis=-1)
    assert zero.any() and not zero.all()


@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("shape", [(4, 5, 6), (5, 6)])
def test_scalar_float32_image_is_the_file_itk_writes(tmp_path, shape, reflect):
    image = sitk.VectorIndexSelectionCast(_vector_image(shape, reflect=reflect), 0)
    assert image.GetPixelID() == sitk.sitkFloat32
    sitk.WriteImage(image, str(tmp_path / "itk.nii.gz"), useCompression=True)
    write_float32_nifti(image, tmp_path / "ours.nii.gz")
    _assert_same_file(tmp_path / "ours.nii.gz", tmp_path / "itk.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "ours.nii.gz"))
    assert back.GetSize() == image.GetSize() and back.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    write_float32_nifti(image, tmp_path / "plain.nii")  # uncompressed: the same bytes
    assert (tmp_path / "plain.nii").read_bytes() == gzip.open(tmp_path / "ours.nii.gz").read()


def test_scalar_writer_refuses_other_pixel_types_and_suffixes(tmp_path):
    image = sitk.Image(4, 5, sitk.sitkInt16)
    with pytest.raises(IntermodalError, match="scalar float32"):
        write_float32_nifti(image, tmp_path / "a.nii.gz")
    with pytest.raises(IntermodalError, match=r"\.nii"):
        write_float32_nifti(sitk.Cast(image, sitk.sitkFloat32), tmp_path / "a.mha")
    assert not list(tmp_path.iterdir())


def test_same_field_same_bytes(tmp_path):
    image = _vector_image((4, 5, 6), reflect=False)
    write_displacement_nifti(image, image, tmp_path / "a.nii.gz")
    write_displacement_nifti(image, image, tmp_path / "b.nii.gz")
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_refuses_wrong_components_and_suffix(tmp_path):
    image = _vector_image((4, 5, 6), reflect=False)
    two = sitk.Compose(*(sitk.VectorIndexSelectionCast(image, i) for i in range(2)))
    with pytest.raises(IntermodalError, match="3 components"):
        write_displacement_nifti(two, image, tmp_path / "d.nii.gz")
    with pytest.raises(IntermodalError, match=r"\.nii"):
        write_displacement_nifti(image, image, tmp_path / "d.mha")
    assert not list(tmp_path.iterdir())
