"""DICOM series written slice by slice with SimpleITK, read back with geometry and modality."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from io_helpers import assert_one_line_naming, rotation

from intermodal.errors import ImageReadError
from intermodal.io import MODALITY_KEY, read_image

UID_ROOT = "1.2.826.0.1.3680043.2.1125.99"


def write_series(
    folder: Path, volume: sitk.Image, *, uid: str, modality: str, prefix: str = "slice"
) -> None:
    """Write ``volume`` (int16) as one DICOM file per slice with the tags GDCM sorts on."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.array(volume.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    sx, sy, sz = volume.GetSpacing()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetSize()[2]):
        slice_ = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{uid}.{k + 1}",
            "0008|0060": modality,
            "0020|000d": f"{UID_ROOT}.1",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.10f}" for p in position),
            "0020|0037": orientation,
            "0028|0030": f"{sy:.10f}\\{sx:.10f}",  # row spacing (y) first
            "0018|0050": f"{sz:.10f}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(slice_)


def make_volume(depth: int, *, oblique: bool) -> sitk.Image:
    values = np.arange(depth * 5 * 6, dtype=np.int16).reshape(depth, 5, 6) * 3 - 200
    volume = sitk.GetImageFromArray(values)
    volume.SetSpacing((0.75, 0.8, 2.5))
    volume.SetOrigin((-100.0, 20.5, 33.0))
    if oblique:
        volume.SetDirection(rotation(np.array([1.0, 1.0, 0.5]), 0.3).ravel().tolist())
    return volume


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_series_geometry_values_and_modality(tmp_path, oblique):
    volume = make_volume(4, oblique=oblique)
    write_series(tmp_path, volume, uid=f"{UID_ROOT}.2", modality="MR")
    image = read_image(tmp_path)
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == volume.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), volume.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), volume.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), volume.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(volume).astype(np.float32)
    )
    assert image.GetMetaData(MODALITY_KEY) == "MR"


def test_two_series_takes_the_larger_and_series_picks_the_other(tmp_path, caplog):
    small, large = f"{UID_ROOT}.3", f"{UID_ROOT}.4"
    write_series(tmp_path, make_volume(3, oblique=False), uid=small, modality="CT", prefix="a")
    write_series(tmp_path, make_volume(5, oblique=False), uid=large, modality="MR", prefix="b")
    with caplog.at_level(logging.WARNING, logger="intermodal.io"):
        image = read_image(tmp_path)
    assert image.GetSize()[2] == 5
    assert image.GetMetaData(MODALITY_KEY) == "MR"
    assert large in caplog.text and small in caplog.text

    other = read_image(tmp_path, series=small)
    assert other.GetSize()[2] == 3
    assert other.GetMetaData(MODALITY_KEY) == "CT"


def test_single_dicom_file(tmp_path):
    write_series(tmp_path, make_volume(2, oblique=False), uid=f"{UID_ROOT}.5", modality="CT")
    image = read_image(tmp_path / "slice000.dcm")
    assert image.GetMetaData(MODALITY_KEY) == "CT"
    assert image.GetSize()[:2] == (6, 5)


def test_bad_unknown_series_uid(tmp_path):
    uid = f"{UID_ROOT}.6"
    write_series(tmp_path, make_volume(2, oblique=False), uid=uid, modality="CT")
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path, series="1.2.3.nope")
    assert_one_line_naming(err, tmp_path.name)
    assert uid in str(err.value) and "1.2.3.nope" in str(err.value)


def test_bad_series_for_a_file(tmp_path):
    sitk.WriteImage(make_volume(2, oblique=False), str(tmp_path / "ct.nii.gz"))
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "ct.nii.gz", series="1.2.3")
    assert_one_line_naming(err, "ct.nii.gz")


def test_bad_empty_directory(tmp_path):
    folder = tmp_path / "empty_dicom"
    folder.mkdir()
    with pytest.raises(ImageReadError) as err:
        read_image(folder)
    assert_one_line_naming(err, "empty_dicom")


def test_bad_directory_without_dicom(tmp_path):
    folder = tmp_path / "not_dicom"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here\n")
    with pytest.raises(ImageReadError) as err:
        read_image(folder)
    assert_one_line_naming(err, "not_dicom")


def _multiframe(path: Path, along: list[float], rescales=None) -> Path:
    """A multi-frame (enhanced) header, no pixels: frames at ``along`` mm on the z axis."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    def item(**values) -> Dataset:
        entry = Dataset()
        for keyword, value in values.items():
            setattr(entry, keyword, value)
        return entry

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.file_meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.77"
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, f"{UID_ROOT}.77"
    ds.Modality, ds.PhotometricInterpretation = "CT", "MONOCHROME2"
    ds.NumberOfFrames = len(along)
    ds.SharedFunctionalGroupsSequence = [
        item(PlaneOrientationSequence=[item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])
    ]
    ds.PerFrameFunctionalGroupsSequence = [
        item(
            PlanePositionSequence=[item(ImagePositionPatient=[0.0, 0.0, z])],
            PixelValueTransformationSequence=[
                item(RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="HU")
            ],
        )
        for z, (slope, intercept) in zip(along, rescales or [(1, -1024)] * len(along))
    ]
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("along", "rescales", "expected"),
    [
        ([0, 5, 2.5, 7.5], None, "not stored in the order of their positions"),
        ([0, 2.5, 7.5, 10], None, "2.5 to 5 mm apart"),
        ([0, 0, 2.5, 2.5], None, "several frames lie at one position"),
        ([0, 2.5, 5, 7.5], [(1, -1024), (2, -1024), (1, 0), (1, -1024)], "3 different rescale"),
    ],
    ids=["interleaved", "uneven", "two-echoes", "per-frame-rescale"],
)
def test_bad_multiframe_file_that_would_be_stacked_wrongly(tmp_path, along, rescales, expected):
    # a tester's enhanced files of each kind were read by GDCM without a word: scrambled
    # slices, 1 mm spacings, two echoes as one volume, the first frame's rescale for all
    from intermodal.io.dicom import check_dicom_file

    path = _multiframe(tmp_path / "enhanced.dcm", along, rescales)
    with pytest.raises(ImageReadError, match=expected) as err:
        check_dicom_file(path)
    assert_one_line_naming(err, "enhanced.dcm")


@pytest.mark.parametrize("along", [[0, 2.5, 5, 7.5], [7.5, 5, 2.5, 0]])
def test_multiframe_file_in_order_passes_the_check(tmp_path, along):
    from intermodal.io.dicom import check_dicom_file

    check_dicom_file(_multiframe(tmp_path / "enhanced.dcm", along))


def test_bad_monochrome1_is_refused_in_a_series_and_a_file(tmp_path):
    import pydicom

    write_series(tmp_path / "s", make_volume(3, oblique=False), uid=f"{UID_ROOT}.9", modality="CT")
    for path in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(path)
    with pytest.raises(ImageReadError, match="MONOCHROME1") as err:
        read_image(tmp_path / "s")
    assert_one_line_naming(err, "s")
    with pytest.raises(ImageReadError, match="MONOCHROME1"):
        read_image(tmp_path / "s" / "slice000.dcm")


def test_bad_folder_holding_only_a_series_folder_names_it(tmp_path):
    write_series(tmp_path / "CT_1" / "series", make_volume(2, oblique=False),
                 uid=f"{UID_ROOT}.11", modality="CT")  # fmt: skip
    with pytest.raises(ImageReadError, match="holds the folder.s. series: pass the one") as err:
        read_image(tmp_path / "CT_1")
    assert_one_line_naming(err, "CT_1")
