"""Round trips through every written format, pictures read as grayscale, atomic writes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
from io_helpers import make_image

from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.io import MODALITY_KEY, geometry, read_image, write_image


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_round_trip_keeps_values_and_geometry(tmp_path, image, ext):
    path = write_image(image, tmp_path / f"img{ext}")
    assert path == tmp_path / f"img{ext}"
    back = read_image(path)
    assert back.GetPixelID() == sitk.sitkFloat32
    assert back.GetSize() == image.GetSize()
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image)
    )
    # NIfTI stores geometry in float32 (qform quaternion / sform): exact to float32 precision.
    tol = 1e-5 if ext.startswith(".nii") else 1e-12
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), rtol=tol)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), rtol=tol, atol=tol)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=tol)


def test_nii_gz_is_compressed(tmp_path, image3d):
    path = write_image(image3d, tmp_path / "img.nii.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"


def test_integer_image_becomes_float32(tmp_path):
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 1000)
    back = read_image(write_image(image, tmp_path / "ct.nii.gz"))
    assert back.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back).ravel(), np.arange(24) - 1000)


def test_single_slice_nifti_stays_3d(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(1).normal(size=(1, 4, 5)))
    back = read_image(write_image(image, tmp_path / "slice.nii.gz"))
    assert back.GetDimension() == 3
    assert back.GetSize() == (5, 4, 1)


def test_constant_image_is_read_as_it_is(tmp_path, caplog):
    # a mask may hold only ones: no warning on reading (register refuses a constant image)
    image = sitk.GetImageFromArray(np.full((3, 4, 5), 7, dtype=np.float32))
    path = write_image(image, tmp_path / "flat.mha")
    with caplog.at_level(logging.WARNING, logger="intermodal.io"):
        back = read_image(path)
    assert sitk.GetArrayViewFromImage(back).max() == 7
    assert caplog.text == ""


def test_modality_survives_nrrd(tmp_path, image3d):
    image3d.SetMetaData(MODALITY_KEY, "CT")
    back = read_image(write_image(image3d, tmp_path / "ct.nrrd"))
    assert back.GetMetaData(MODALITY_KEY) == "CT"


def test_geometry_is_json_serialisable(image):
    geom = geometry(image)
    ndim = image.GetDimension()
    assert geom["ndim"] == ndim
    assert geom["size"] == list(image.GetSize())
    assert len(geom["direction"]) == ndim * ndim
    assert json.loads(json.dumps(geom)) == geom
    rebuilt = sitk.Image(geom["size"], sitk.sitkFloat32)
    rebuilt.SetDirection(geom["direction"])
    assert rebuilt.GetDirection() == image.GetDirection()


# 2D pictures ------------------------------------------------------------------------------


def _rgb(dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.integers(0, 256, size=(6, 8, 3)).astype(dtype)


def test_png_rgb_becomes_luminance(tmp_path):
    rgb = _rgb()
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.png"))
    gray = read_image(tmp_path / "rgb.png")
    assert gray.GetDimension() == 2
    assert gray.GetNumberOfComponentsPerPixel() == 1
    expected = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(gray), expected, rtol=1e-6)


def test_png_rgba_ignores_alpha(tmp_path):
    rgba = np.concatenate([_rgb(), np.full((6, 8, 1), 17, np.uint8)], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(tmp_path / "rgba.png"))
    gray = sitk.GetArrayFromImage(read_image(tmp_path / "rgba.png"))
    expected = rgba[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, expected, rtol=1e-6)


def test_png_16bit_keeps_values(tmp_path):
    values = np.array([[0, 1000, 40000], [65535, 3, 12345]], dtype=np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "deep.png"))
    gray = read_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(gray), values.astype(np.float32))


def test_palette_png_becomes_grayscale(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    indices = (np.arange(48).reshape(6, 8) % 3).astype(np.uint8)
    picture = pil.fromarray(indices, mode="P")
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    picture.putpalette([c for colour in palette for c in colour] + [0] * (253 * 3))
    picture.save(tmp_path / "palette.png")
    gray = sitk.GetArrayFromImage(read_image(tmp_path / "palette.png"))
    lut = np.array(palette, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, lut[indices], rtol=1e-6)


@pytest.mark.parametrize("ext", [".tif", ".tiff"])
def test_tiff_rgb_becomes_luminance(tmp_path, ext):
    rgb = _rgb()
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / f"rgb{ext}"))
    gray = read_image(tmp_path / f"rgb{ext}")
    assert gray.GetDimension() == 2
    expected = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(gray), expected, rtol=1e-6)


@pytest.mark.parametrize("ext", [".jpg", ".jpeg"])
def test_jpeg_rgb_becomes_grayscale(tmp_path, ext):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # flat colour: JPEG keeps it to within a few grey levels
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / f"red{ext}"))
    gray = read_image(tmp_path / f"red{ext}")
    assert gray.GetDimension() == 2
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(gray), 0.299 * 200, atol=4)


def test_tiff_stack_is_3d(tmp_path, image3d):
    sitk.WriteImage(image3d, str(tmp_path / "stack.tif"))
    back = read_image(tmp_path / "stack.tif")
    assert back.GetSize() == image3d.GetSize()
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image3d)
    )


# Atomic writes ----------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_write_leaves_no_temporary_file(tmp_path, image3d, ext):
    write_image(image3d, tmp_path / f"out{ext}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{ext}"]


def test_write_creates_parent_folders(tmp_path, image3d):
    path = write_image(image3d, tmp_path / "a" / "b" / "out.nii.gz")
    assert path.is_file()


def test_failed_write_leaves_nothing(tmp_path, image3d, monkeypatch):
    calls = []

    def failing_write(image, path, *args, **kwargs):
        calls.append(path)
        with open(path, "wb") as f:  # a partial file, as a crash in the middle would leave
            f.write(b"partial")
        raise RuntimeError("ITK ERROR: ImageFileWriter(0x1): disk full\nmore detail")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    target = tmp_path / "out.nii.gz"
    with pytest.raises(IntermodalError) as err:
        write_image(image3d, target)
    assert "disk full" in str(err.value) and "\n" not in str(err.value)
    assert calls and calls[0].endswith(".nii.gz") and calls[0] != str(target)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, image3d, monkeypatch):
    target = write_image(image3d, tmp_path / "out.mha")
    before = target.read_bytes()

    def failing_write(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(IntermodalError):
        write_image(image3d, target, overwrite=True)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.mha"]


def test_overwrite_refused_without_flag(tmp_path, image3d):
    target = write_image(image3d, tmp_path / "out.nii.gz")
    before = target.read_bytes()
    with pytest.raises(OutputExistsError) as err:
        write_image(make_image(3, seed=5), target)
    assert "out.nii.gz" in str(err.value)
    assert target.read_bytes() == before
    write_image(make_image(3, seed=5), target, overwrite=True)
    assert target.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_uncompressed_nifti_named_nii_gz_is_read(tmp_path, image3d):
    plain = write_image(image3d, tmp_path / "plain.nii")
    misnamed = plain.rename(tmp_path / "misnamed.nii.gz")
    back = read_image(misnamed)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image3d))
