"""Every way read_image refuses a file: the error type, the file named, one line."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import SimpleITK as sitk
from io_helpers import assert_one_line_naming, make_image

from intermodal.errors import ImageReadError, IntermodalError
from intermodal.io import _integrity, read_image, write_image


def read_error(path) -> pytest.ExceptionInfo[ImageReadError]:
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert_one_line_naming(err, path.name)
    return err


def test_bad_missing_file(tmp_path):
    err = read_error(tmp_path / "missing.nii.gz")
    assert "not found" in str(err.value)


def test_bad_unsupported_extension(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_bytes(b"whatever")
    err = read_error(path)
    assert ".xyz" in str(err.value) and ".nii.gz" in str(err.value)


@pytest.mark.parametrize("name", ["corrupt.nii.gz", "corrupt.nii", "corrupt.mha", "corrupt.png"])
def test_bad_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(6).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    read_error(path)


def test_bad_gzip_with_garbage_inside(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(gzip.compress(os.urandom(1000)))
    read_error(path)


def test_bad_truncated_nii_gz(tmp_path):
    path = write_image(make_image(3), tmp_path / "cut.nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    err = read_error(path)
    assert "truncated" in str(err.value)


def test_bad_gzip_of_a_truncated_nii(tmp_path):
    # A complete gzip stream whose NIfTI content is short: caught by the header size check.
    nii = write_image(make_image(3), tmp_path / "full.nii").read_bytes()
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(nii[:-100]))
    err = read_error(path)
    assert "truncated" in str(err.value)


def test_bad_truncated_nii(tmp_path):
    path = write_image(make_image(3), tmp_path / "cut.nii")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    err = read_error(path)
    assert "truncated" in str(err.value)


def test_bad_truncated_mha(tmp_path):
    path = write_image(make_image(3), tmp_path / "cut.mha")
    data = path.read_bytes()
    path.write_bytes(data[:-50])
    err = read_error(path)
    assert "truncated" in str(err.value)


def test_bad_truncated_compressed_mha(tmp_path):
    path = tmp_path / "cut.mha"
    sitk.WriteImage(make_image(3), str(path), useCompression=True)
    assert read_image(path).GetSize() == (7, 6, 5)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    err = read_error(path)
    assert "truncated" in str(err.value)


def _patch_nifti(path, offset: int, fmt: str, value) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))


def test_bad_empty_image_nifti(tmp_path):
    path = write_image(make_image(3), tmp_path / "empty.nii")
    _patch_nifti(path, 40 + 2 * 3, "<h", 0)  # dim[3] = 0
    err = read_error(path)
    assert "empty" in str(err.value)


def test_bad_empty_image_mha(tmp_path):
    path = write_image(make_image(3), tmp_path / "empty.mha")
    path.write_bytes(path.read_bytes().replace(b"DimSize = 7 6 5", b"DimSize = 7 6 0"))
    err = read_error(path)
    assert "empty" in str(err.value)


def test_bad_4d_image(tmp_path):
    volume = make_image(3, oblique=False)
    path = write_image(sitk.JoinSeries([volume, volume]), tmp_path / "four.nii.gz")
    err = read_error(path)
    assert "4D images are not supported" in str(err.value) and "(7, 6, 5, 2)" in str(err.value)


def test_bad_vector_volume(tmp_path):
    volume = make_image(3, oblique=False)
    field = sitk.Compose(volume, volume, volume)
    path = write_image(field, tmp_path / "vectors.nii.gz")
    err = read_error(path)
    assert "components" in str(err.value)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "infinite")])
def test_bad_non_finite_values(tmp_path, ext, value, word):
    # The NIfTI reader in ITK turns NaN and Inf into 0, so NIfTI is checked on the raw bytes.
    values = np.ones((4, 5, 6), dtype=np.float32)
    values[1, 2, 3] = value
    values[0, 0, 0] = -value
    path = write_image(sitk.GetImageFromArray(values), tmp_path / f"nonfinite{ext}")
    err = read_error(path)
    assert "2 of 120" in str(err.value) and word in str(err.value)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_bad_non_finite_counted_across_chunks(tmp_path, monkeypatch, ext):
    monkeypatch.setattr(_integrity, "_CHUNK", 7)  # chunks that split voxels and the header
    values = np.random.default_rng(7).normal(size=(3, 4, 5))
    values.ravel()[[0, 13, 14, 59]] = [np.nan, np.inf, np.nan, -np.inf]
    path = write_image(sitk.GetImageFromArray(values), tmp_path / f"float64{ext}")
    err = read_error(path)
    assert "4 of 60 voxels are not finite (2 NaN, 2 infinite)" in str(err.value)


def test_finite_floats_pass_small_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(_integrity, "_CHUNK", 5)
    image = make_image(3)
    back = read_image(write_image(image, tmp_path / "ok.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_bad_zero_spacing_nifti(tmp_path):
    # SimpleITK alone would silently read pixdim 0 as spacing 1.
    path = write_image(make_image(3), tmp_path / "flat.nii")
    _patch_nifti(path, 76 + 4 * 2, "<f", 0.0)  # pixdim[2]
    err = read_error(path)
    assert "spacing" in str(err.value)


def test_bad_zero_spacing_nii_gz(tmp_path):
    nii = tmp_path / "flat.nii"
    write_image(make_image(3), nii)
    _patch_nifti(nii, 76 + 4 * 1, "<f", 0.0)
    path = tmp_path / "flat.nii.gz"
    path.write_bytes(gzip.compress(nii.read_bytes()))
    err = read_error(path)
    assert "spacing" in str(err.value)


def test_bad_zero_spacing_mha(tmp_path):
    path = write_image(make_image(3, oblique=False), tmp_path / "flat.mha")
    header = b"ElementSpacing = 0.69999999999999996 1.3 2.8999999999999999"
    data = path.read_bytes()
    assert header in data
    path.write_bytes(data.replace(header, b"ElementSpacing = 0.7 0 2.9"))
    err = read_error(path)
    assert "spacing" in str(err.value).lower()


def test_bad_unwritable_extension(tmp_path):
    with pytest.raises(IntermodalError) as err:
        write_image(make_image(2), tmp_path / "out.png")
    assert_one_line_naming(err, "out.png")
    assert ".nii.gz" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_gray_alpha_png(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    path = tmp_path / "gray_alpha.png"
    pil.fromarray(np.zeros((5, 6, 2), np.uint8), mode="LA").save(path)
    err = read_error(path)
    assert "gray+alpha" in str(err.value)


def test_bad_empty_image_write(tmp_path):
    with pytest.raises(IntermodalError) as err:
        write_image(sitk.Image([3, 0, 2], sitk.sitkFloat32), tmp_path / "empty.nii.gz")
    assert_one_line_naming(err, "empty.nii.gz")
    assert list(tmp_path.iterdir()) == []
