"""Fuzzed inputs for every reader: each ends in a clean result or a one-line IntermodalError.

Hypothesis draws the damage (byte flips, field values, truncations, header tokens, picture
modes, CSV rows); ``fuzz_inputs.read_outcome`` judges the result. The example budget is
small for CI (``conftest.EXAMPLES``; ``INTERMODAL_FUZZ_EXAMPLES`` raises it for a deeper
local run). Below the properties are the regressions that earlier deep runs (thousands of
cases) found, each pinned as a plain test.
"""

from __future__ import annotations

import gzip
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fuzz_inputs import (
    HEADER_TOKENS,
    INTERESTING_FLOATS,
    INTERESTING_INTS,
    NIFTI_FIELDS,
    PICTURE_FORMATS,
    PICTURE_MODES,
    POINT_TOKENS,
    check_series,
    make_damaged_file,
    make_picture,
    make_points_text,
    make_random_series,
    read_outcome,
    replace_header_value,
    seed_bytes,
    set_nifti_field,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_budget import fuzz_settings

from intermodal.errors import ImageReadError
from intermodal.io import read_image

SEEDS: dict[str, bytes] = {}


def seed(ext: str) -> bytes:
    """A valid file of format ``ext`` (made once per session)."""
    if ext not in SEEDS:
        with tempfile.TemporaryDirectory() as tmp:
            SEEDS[ext] = seed_bytes(ext, Path(tmp))
    return SEEDS[ext]


def assert_clean(reader: str, path: Path) -> str:
    outcome, detail = read_outcome(reader, path)
    assert outcome in ("read", "refused"), f"{outcome}: {detail}"
    return outcome


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8)
cuts = st.one_of(st.none(), st.integers(0, 1 << 16))


@fuzz_settings
@given(ext=st.sampled_from([".nii", ".nii.gz", ".mha", ".nrrd", ".dcm"]), edits=edits, cut=cuts)
def test_header_byte_flips_and_truncation(ext, edits, cut):
    with tempfile.TemporaryDirectory() as tmp:
        assert_clean("image", make_damaged_file(Path(tmp), ext, seed(ext), edits=edits, cut=cut))


@fuzz_settings
@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from(sorted(NIFTI_FIELDS)),
            st.integers(0, 7),
            st.sampled_from(INTERESTING_INTS + INTERESTING_FLOATS),
        ),
        min_size=1,
        max_size=3,
    ),
    compressed=st.booleans(),
)
def test_nifti_header_fields_with_odd_values(changes, compressed):
    data = seed(".nii")
    for field, index, value in changes:
        if NIFTI_FIELDS[field][1] != "f" and isinstance(value, float):
            value = int(value) if np.isfinite(value) else 0
        data = set_nifti_field(data, field, index, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("case.nii.gz" if compressed else "case.nii")
        path.write_bytes(gzip.compress(data) if compressed else data)
        assert_clean("image", path)


@fuzz_settings
@given(fraction=st.floats(0.0, 0.999))
def test_truncated_gzip_is_always_refused(fraction):
    data = seed(".nii.gz")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cut.nii.gz"
        path.write_bytes(data[: int(len(data) * fraction)])
        assert assert_clean("image", path) == "refused"


@fuzz_settings
@given(
    ext=st.sampled_from([".mha", ".nrrd"]),
    changes=st.lists(
        st.tuples(st.integers(0, 40), st.sampled_from(HEADER_TOKENS)), min_size=1, max_size=3
    ),
)
def test_text_headers_with_odd_values(ext, changes):
    data = seed(ext)
    for line, token in changes:
        data = replace_header_value(data, line, token)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"case{ext}"
        path.write_bytes(data)
        assert_clean("image", path)


@fuzz_settings
@given(
    ext=st.sampled_from(PICTURE_FORMATS),
    mode=st.sampled_from(PICTURE_MODES),
    size=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    picture_seed=st.integers(0, 2**31 - 1),
    edits=st.one_of(st.none(), edits),
)
def test_pictures_in_every_mode(ext, mode, size, picture_seed, edits):
    with tempfile.TemporaryDirectory() as tmp:
        path = make_picture(Path(tmp), ext, mode, size, picture_seed)
        if path is None:
            return  # the format cannot hold the mode (e.g. JPEG and RGBA)
        if edits is None:
            outcome = assert_clean("image", path)
            # Undamaged pictures are read, except gray+alpha PNG (refused, documented).
            assert outcome == "read" or (ext, mode) == (".png", "LA")
        else:
            data = path.read_bytes()
            path.unlink()
            assert_clean("image", make_damaged_file(Path(tmp), ext, data, edits=edits))


@fuzz_settings
@given(
    rows=st.lists(
        st.lists(
            st.one_of(st.sampled_from(POINT_TOKENS), st.floats(-1e3, 1e3).map(repr)),
            max_size=4,
        ),
        max_size=6,
    ),
    header=st.sampled_from([["x", "y", "z"], ["x", "y"], ["x"], []]),
    separator=st.sampled_from([",", ";", "\t"]),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_points_files(rows, header, separator, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "points.csv"
        if raw is not None:
            path.write_bytes(raw)
        else:
            text = make_points_text([header, *rows] if header else rows, separator=separator)
            path.write_text(text, encoding="utf-8")
        assert_clean("points", path)


@fuzz_settings
@given(rng=st.randoms(use_true_random=False))
def test_dicom_series_with_random_defects(rng):
    # Gaps, duplicates, tilt, shear, sizes, shuffled files, damaged files: refused, or read
    # with every slice where it belongs (checked against the slice positions written).
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        oracle = make_random_series(folder, rng)
        if assert_clean("dicom_series", folder) == "read" and oracle is not None:
            assert check_series(read_image(folder), oracle) is None


# --------------------------------------------------------------------------- regressions


def write_nifti(tmp_path: Path, *changes: tuple[str, int, float]) -> Path:
    data = seed(".nii")
    for field, index, value in changes:
        data = set_nifti_field(data, field, index, value)
    path = tmp_path / "case.nii"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        # ITK reads a negative pixdim as a silently flipped axis.
        ([("pixdim", 2, -1.25)], "spacing (pixdim) must be positive"),
        ([("pixdim", 1, 0.0)], "spacing (pixdim) must be positive"),
        # dim[0] says 2D but dim[3] says 4 slices: ITK would read the first slice only.
        ([("dim", 0, 2)], "dim[0] is 2"),
        ([("vox_offset", 0, float("nan"))], "vox_offset"),
        ([("vox_offset", 0, 100.0)], "vox_offset"),
        ([("datatype", 0, 7)], "datatype code 7"),
        # ITK turns a NaN quaternion into the identity orientation, a NaN sform into NaN
        # directions.
        ([("quatern", 0, float("nan")), ("sform_code", 0, 0)], "qform is not finite"),
        ([("srow", 5, float("inf"))], "sform is not finite"),
    ],
)
def test_bad_nifti_headers_found_by_fuzzing(tmp_path, changes, words):
    path = write_nifti(tmp_path, *changes)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert words in str(err.value) and "case.nii" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("ndims", ["65536", "-1", "1e308", "4", "2.5"])
def test_bad_metaimage_ndims(tmp_path, ndims):
    # NDims = 65536 made ITK's MetaIO segfault; the header is now checked before ITK reads it.
    data = seed(".mha").replace(b"NDims = 3", f"NDims = {ndims}".encode())
    path = tmp_path / "case.mha"
    path.write_bytes(data)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert "case.mha" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        (b"DimSize = 6 5 4", b"DimSize = 6 5", "dimsize"),
        (b"ElementSpacing = 0.8", b"ElementSpacing = nan", "elementspacing"),
        (b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0", "transformmatrix"),
        (b"ElementType = MET_FLOAT", b"ElementType = MET_OTHER", "ElementType"),
    ],
)
def test_bad_metaimage_arrays(tmp_path, old, new, words):
    data = seed(".mha")
    assert old in data
    path = tmp_path / "case.mha"
    path.write_bytes(data.replace(old, new))
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert words in str(err.value)


def test_garbled_dicom_modality_is_dropped(tmp_path):
    # A modality tag that is not a DICOM code string made SetMetaData raise a TypeError.
    data = seed(".dcm")
    at = data.find(b"CT")
    assert at > 0
    path = tmp_path / "slice.dcm"
    path.write_bytes(data[:at] + b"\xff\xfe" + data[at + 2 :])
    image = read_image(path)
    assert not image.HasMetaDataKey("intermodal:modality")


def test_nifti_with_sform_only_and_zero_pixdim_in_unused_dims_reads(tmp_path):
    # Guard against over-strict checks: pixdim beyond the spatial axes may be anything.
    path = write_nifti(tmp_path, ("pixdim", 4, 0.0), ("pixdim", 5, -3.0), ("dim", 5, 0))
    image = read_image(path)
    assert image.GetSize() == (6, 5, 4)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 1.25, 2.5), rtol=1e-6)
    assert sitk.GetArrayViewFromImage(image).max() > 0


def test_bad_nifti_header_with_wrong_size_field(tmp_path):
    path = tmp_path / "case.nii"
    path.write_bytes(struct.pack("<i", 349) + seed(".nii")[4:])
    with pytest.raises(ImageReadError, match="not a NIfTI file"):
        read_image(path)


def test_bad_tiff_declaring_billions_of_pixels_is_refused_before_reading(tmp_path, monkeypatch):
    # A 190-byte TIFF whose ImageLength said 3.4e9 rows made ITK allocate until the kernel
    # killed it. The header is now bounded first; ITK must not even be called.
    from PIL import Image

    path = tmp_path / "bomb.tif"
    Image.fromarray(np.zeros((2, 11), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack("<H", data[entry : entry + 2])[0] == 257:  # ImageLength
            data[entry + 2 : entry + 12] = struct.pack("<HII", 4, 1, 0xCE000002)
    path.write_bytes(bytes(data))

    def no_read(*args, **kwargs):
        raise AssertionError("SimpleITK was asked to read the bomb")

    monkeypatch.setattr("intermodal.io.images.sitk.ReadImage", no_read)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert "bomb.tif" in str(err.value) and "large" in str(err.value)


@pytest.fixture
def itk_must_not_read(monkeypatch):
    """Fail the test if SimpleITK is asked to read (the header check must refuse first)."""

    def no_read(*args, **kwargs):
        raise AssertionError("SimpleITK was asked to read a file declaring a huge image")

    monkeypatch.setattr("intermodal.io.images.sitk.ReadImage", no_read)


def test_bad_nrrd_declaring_a_huge_image_is_refused_before_reading(tmp_path, itk_must_not_read):
    # sizes 65536^3 in a 1 KB file: teem allocated 1 PB before noticing the data was short.
    path = tmp_path / "huge.nrrd"
    path.write_bytes(re.sub(rb"sizes: [0-9 ]+", b"sizes: 65536 65536 65536", seed(".nrrd")))
    with pytest.raises(ImageReadError, match="huge.nrrd: truncated NRRD data"):
        read_image(path)


def test_bad_compressed_mha_declaring_a_huge_image_is_refused(tmp_path, itk_must_not_read):
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    path = tmp_path / "huge.mha"
    sitk.WriteImage(image, str(path), useCompression=True)
    path.write_bytes(path.read_bytes().replace(b"DimSize = 6 5 4", b"DimSize = 6000 5000 4000"))
    with pytest.raises(ImageReadError, match="huge.mha: truncated compressed data"):
        read_image(path)
