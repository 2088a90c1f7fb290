"""export_dicom: the warped series, the registration objects, UIDs and Frames of Reference."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_cases import make_result
from dicom_helpers import dciodvfy_errors, write_series

from intermodal.dicom import DicomError, export_dicom, read_registration
from intermodal.dicom.series import quantise
from intermodal.dicom.spatial_registration import (
    DEFORMABLE_SPATIAL_REGISTRATION,
    SPATIAL_REGISTRATION,
)
from intermodal.errors import OutputExistsError
from intermodal.io import read_image


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]


def test_warped_series_uids_frame_and_values(case) -> None:
    summary = export_dicom(case.result)
    slices = _headers(summary.folder / "series")
    ct = pydicom.dcmread(next(case.ct_dir.glob("*.dcm")))
    mr = pydicom.dcmread(next(case.mr_dir.glob("*.dcm")))
    assert len(slices) == case.fixed.GetSize()[2]
    uids = {ds.SOPInstanceUID for ds in slices}
    assert len(uids) == len(slices)
    assert not uids & set(case.ct["sop_uids"]) and not uids & set(case.mr["sop_uids"])
    for ds in slices:
        assert ds.SeriesInstanceUID == summary.series_uid
        assert ds.SeriesInstanceUID not in (case.ct["series_uid"], case.mr["series_uid"])
        assert ds.FrameOfReferenceUID == case.ct["frame_uid"] != case.mr["frame_uid"]
        assert ds.StudyInstanceUID == case.ct["study_uid"]
        assert ds.PatientID == ct.PatientID and ds.PatientName == ct.PatientName
        assert ds.Modality == "MR" and ds.SOPClassUID == mr.SOPClassUID
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "intermodal" in ds.DerivationDescription
        assert {item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence} == set(
            case.mr["sop_uids"]
        )
    # read back as a series: on the CT's grid, the values of warped.nii.gz within a step
    written = read_image(summary.folder / "series")
    warped = read_image(case.result / "warped.nii.gz")
    assert np.allclose(written.GetOrigin(), warped.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetDirection(), warped.GetDirection(), atol=1e-6)
    assert np.allclose(written.GetSpacing(), warped.GetSpacing(), atol=1e-4)
    values = sitk.GetArrayViewFromImage(warped)
    step = (values.max() - values.min()) / 65534
    error = np.abs(sitk.GetArrayViewFromImage(written) - values).max()
    assert error <= step / 2 * 1.01 + 1e-4


@pytest.mark.parametrize(
    ("values", "slope", "intercept"),
    [
        (np.array([-1000.0, 0.0, 40.0, 3000.0]), 1.0, 0.0),  # HU: integers kept as they are
        (np.array([0.0, 0.5, 655.34]), 0.01, 327.67),  # a float range: spread over int16
    ],
)
def test_quantise_known_answers(values: np.ndarray, slope: float, intercept: float) -> None:
    stored, got_slope, got_intercept = quantise(values)
    assert stored.dtype == np.int16
    assert got_slope == pytest.approx(slope) and got_intercept == pytest.approx(intercept)
    assert np.allclose(stored * got_slope + got_intercept, values, atol=got_slope / 2 + 1e-9)


def test_deformable_registration_object_round_trip(case) -> None:
    summary = export_dicom(case.result)
    assert summary.deformable
    ds = pydicom.dcmread(summary.registration)
    assert ds.SOPClassUID == DEFORMABLE_SPATIAL_REGISTRATION
    assert ds.Modality == "REG" and ds.FrameOfReferenceUID == case.ct["frame_uid"]
    item = ds.DeformableRegistrationSequence[0]
    assert item.SourceFrameOfReferenceUID == case.mr["frame_uid"]
    post = np.array([float(v) for v in item.PostDeformationMatrixRegistrationSequence[0]
                     .FrameOfReferenceTransformationMatrix])  # fmt: skip
    assert np.allclose(post, np.eye(4).ravel())
    grid = item.DeformableRegistrationGridSequence[0]
    assert list(grid.GridDimensions) == list(case.fixed.GetSize())
    assert np.allclose([float(v) for v in grid.GridResolution], case.fixed.GetSpacing())
    referenced = {s.SeriesInstanceUID for s in ds.ReferencedSeriesSequence}
    for study in ds.get("StudiesContainingOtherReferencedInstancesSequence", []):
        assert study.StudyInstanceUID == case.mr["study_uid"]
        referenced |= {s.SeriesInstanceUID for s in study.ReferencedSeriesSequence}
    assert referenced == {case.ct["series_uid"], case.mr["series_uid"]}
    # The object alone reproduces warped.nii.gz: same map, so the same resampling
    transform = read_registration(summary.registration, case.mr["frame_uid"])
    resampled = sitk.Resample(case.moving, case.fixed, transform, sitk.sitkLinear, 0.0)
    warped = sitk.GetArrayFromImage(read_image(case.result / "warped.nii.gz"))
    span = float(warped.max() - warped.min())
    assert np.abs(sitk.GetArrayViewFromImage(resampled) - warped).max() < 1e-3 * span
    # and maps points as the result's transform does
    for point in [(0.0, 0.0, 0.0), (5.0, -7.0, 3.0)]:
        assert np.allclose(transform.TransformPoint(point), case.transform.TransformPoint(point),
                           atol=1e-3)  # fmt: skip


def test_matrix_registration_when_no_deformation(tmp_path: Path) -> None:
    case = make_result(tmp_path, amplitude=0.0)
    summary = export_dicom(case.result)
    assert not summary.deformable
    ds = pydicom.dcmread(summary.registration)
    assert ds.SOPClassUID == SPATIAL_REGISTRATION
    assert [item.FrameOfReferenceUID for item in ds.RegistrationSequence] == [
        case.ct["frame_uid"], case.mr["frame_uid"]
    ]  # fmt: skip
    matrices = ds.RegistrationSequence[1].MatrixRegistrationSequence[0].MatrixSequence[0]
    assert matrices.FrameOfReferenceTransformationMatrixType == "RIGID"
    transform = read_registration(summary.registration, case.mr["frame_uid"])
    for point in [(0.0, 0.0, 0.0), (12.0, -7.0, 3.0)]:
        assert np.allclose(transform.TransformPoint(point), case.transform.TransformPoint(point),
                           atol=1e-4)  # fmt: skip


def test_every_object_passes_dciodvfy(tmp_path: Path) -> None:
    for amplitude in (3.0, 0.0):
        case = make_result(tmp_path / str(amplitude), amplitude=amplitude)
        summary = export_dicom(case.result)
        for path in [summary.registration, *summary.series_files[:2]]:
            assert dciodvfy_errors(path) == [], path


def test_plastimatch_reads_the_series(case) -> None:
    tool = shutil.which("plastimatch")
    if tool is None:
        pytest.skip("plastimatch (Debian package) is not installed")
    summary = export_dicom(case.result)
    out = case.root / "from_plastimatch.nrrd"
    run = subprocess.run(
        [tool, "convert", "--input", str(summary.folder / "series"), "--output-img", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == case.fixed.GetSize()


def test_bad_existing_output_without_overwrite(case) -> None:
    export_dicom(case.result)
    before = sorted(p.name for p in (case.result / "dicom").rglob("*"))
    with pytest.raises(OutputExistsError, match="dicom: output directory exists"):
        export_dicom(case.result)
    assert sorted(p.name for p in (case.result / "dicom").rglob("*")) == before
    export_dicom(case.result, overwrite=True)


def test_bad_different_patients(tmp_path: Path, case) -> None:
    other = tmp_path / "other_mr"
    write_series(case.moving, other, modality="MR", patient_id="PAT999")
    with pytest.raises(DicomError, match="PatientID 'PAT999' differs.*different patients") as err:
        export_dicom(case.result, moving=other)
    assert "\n" not in str(err.value)
    assert not (case.result / "dicom").exists()
    assert not [p for p in case.result.iterdir() if p.name.startswith(".dicom")]


def test_different_patients_allowed(tmp_path: Path) -> None:
    case = make_result(tmp_path / "a", missing_slice=False)
    other = tmp_path / "other_mr"
    write_series(case.moving, other, modality="MR", patient_id="PAT999")
    summary = export_dicom(case.result, moving=other, allow_different_patients=True)
    assert pydicom.dcmread(summary.series_files[0]).PatientID == "PAT001"  # the CT's


def test_bad_missing_tag_the_output_needs(tmp_path: Path, case) -> None:
    broken = tmp_path / "no_frame"
    write_series(case.fixed, broken, drop=("FrameOfReferenceUID",))
    with pytest.raises(DicomError, match=r"lacks FrameOfReferenceUID \(0020,0052\)"):
        export_dicom(case.result, fixed=broken)
    assert not (case.result / "dicom").exists()


def test_bad_mr_without_scanning_sequence(tmp_path: Path, case) -> None:
    broken = tmp_path / "mr_no_sequence"
    write_series(case.moving, broken, modality="MR", drop=("ScanningSequence",))
    with pytest.raises(DicomError, match="lacks ScanningSequence"):
        export_dicom(case.result, moving=broken)
    assert not (case.result / "dicom").exists()


def test_bad_result_not_on_the_fixed_series(tmp_path: Path, case) -> None:
    with pytest.raises(DicomError, match="warped.nii.gz is not on this series' grid"):
        export_dicom(case.result, fixed=case.mr_dir, allow_different_patients=True)


def test_bad_not_a_result_folder(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no warped.nii.gz"):
        export_dicom(tmp_path)


def test_fixed_series_with_a_missing_slice(tmp_path: Path) -> None:
    """The CT read onto a regular grid: the output has every slice; UIDs all new and distinct."""
    case = make_result(tmp_path, ct_missing_slice=True)
    summary = export_dicom(case.result)
    slices = _headers(summary.folder / "series")
    assert len(slices) == len(case.ct["sop_uids"]) + 1 == case.fixed.GetSize()[2]
    depths = sorted(float(ds.ImagePositionPatient[2]) for ds in slices)
    assert np.allclose(np.diff(depths), case.fixed.GetSpacing()[2], atol=1e-3)
    registration = pydicom.dcmread(summary.registration)
    instances = [ds.SOPInstanceUID for ds in slices] + [registration.SOPInstanceUID]
    inputs = set(case.ct["sop_uids"]) | set(case.mr["sop_uids"])
    assert len(set(instances)) == len(instances) and not set(instances) & inputs
    assert registration.SeriesInstanceUID != summary.series_uid
    assert registration.FrameOfReferenceUID == slices[0].FrameOfReferenceUID


def test_fine_field_is_subsampled_on_a_stated_grid(case, monkeypatch) -> None:
    from intermodal.dicom import spatial_registration

    monkeypatch.setattr(spatial_registration, "MAX_GRID_VECTORS", 1000)
    summary = export_dicom(case.result)
    grid = pydicom.dcmread(summary.registration).DeformableRegistrationSequence[0]
    grid = grid.DeformableRegistrationGridSequence[0]
    size, spacing = case.fixed.GetSize(), case.fixed.GetSpacing()
    dims = [int(n) for n in grid.GridDimensions]
    assert np.prod(dims) <= 1000
    stride = round(float(grid.GridResolution[0]) / spacing[0])
    assert stride > 1 and dims == [-(-n // stride) for n in size]
    assert np.allclose([float(v) for v in grid.GridResolution], np.array(spacing) * stride)
    # a coarser grid of the same smooth field: points still map within a fraction of a mm
    transform = read_registration(summary.registration, case.mr["frame_uid"])
    for point in [(0.0, 0.0, 0.0), (4.0, -6.0, 2.0)]:
        gap = np.subtract(transform.TransformPoint(point), case.transform.TransformPoint(point))
        assert np.linalg.norm(gap) < 0.5


def test_ct_warped_onto_the_mr_is_a_ct_series(case, tmp_path: Path) -> None:
    """The other roles: a CT on an MR's grid keeps HU as stored integers, CT Image IOD."""
    from intermodal.dicom import read_series_info
    from intermodal.dicom.series import CT_IMAGE_STORAGE, write_image_series

    ct_info, mr_info = read_series_info(case.ct_dir), read_series_info(case.mr_dir)
    warped = sitk.Resample(case.fixed, case.moving, sitk.Transform(), sitk.sitkNearestNeighbor,
                           -1000.0)  # fmt: skip
    out = tmp_path / "ct_on_mr"
    out.mkdir()
    written = write_image_series(warped, out, source=ct_info, frame=mr_info, description="test")
    assert (written.slope, written.intercept) == (1.0, 0.0)
    first = pydicom.dcmread(written.files[0])
    assert first.SOPClassUID == CT_IMAGE_STORAGE and first.Modality == "CT"
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert first.FrameOfReferenceUID == case.mr["frame_uid"]
    assert dciodvfy_errors(written.files[0]) == []
    back = sitk.GetArrayFromImage(read_image(out))
    assert np.array_equal(back, sitk.GetArrayFromImage(warped))


def test_bad_modality_without_an_image_iod(case, tmp_path: Path) -> None:
    from intermodal.dicom import read_series_info
    from intermodal.dicom.series import write_image_series

    info = read_series_info(case.mr_dir)
    info.modality = "PT"
    out = tmp_path / "pt"
    out.mkdir()
    with pytest.raises(DicomError, match="Modality 'PT'; a warped series can be written for MR"):
        write_image_series(case.fixed, out, source=info, frame=info, description="x")
    assert not list(out.iterdir())


def test_bad_moving_modality_refused_before_writing(case, tmp_path: Path) -> None:
    other = tmp_path / "pt"
    write_series(case.moving, other, modality="MR")
    for path in other.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.Modality = "PT"
        ds.save_as(path)
    with pytest.raises(DicomError, match="Modality 'PT'; a warped series can be written"):
        export_dicom(case.result, moving=other)
    assert not (case.result / "dicom").exists()


def _registered_mr_but(case, folder: Path, **changes) -> dict:
    """An MR series of the case's patient on the case MR's grid but for ``changes``."""
    from dicom_helpers import phantom, rotation

    grid = {
        "shape": (8, 22, 18),
        "spacing": (2.2, 2.2, 5.0),
        "direction": rotation(np.array([1.0, 2.0, 3.0]), 0.25),
        "origin": (-20.0, -24.0, -18.0),
    }
    grid.update(changes)
    return write_series(phantom(grid.pop("shape"), modality="MR", **grid), folder, modality="MR")


def _nothing_written(case) -> bool:
    return not (case.result / "dicom").exists() and not [
        p for p in case.result.iterdir() if p.name.startswith(".dicom")
    ]


def test_bad_moving_series_not_the_registered_one(tmp_path: Path, case) -> None:
    """A folder of two series, the other one chosen: refused before writing, naming both."""
    two = tmp_path / "two"
    two.mkdir()
    other = _registered_mr_but(case, tmp_path / "other", shape=(5, 22, 18))
    for folder, prefix in ((case.mr_dir, "a"), (tmp_path / "other", "b")):
        for path in folder.glob("*.dcm"):
            shutil.copy(path, two / f"{prefix}_{path.name}")
    with pytest.raises(DicomError) as err:
        export_dicom(case.result, moving=two, moving_series=other["series_uid"])
    message = str(err.value)
    assert message.startswith(f"{two}: series {other['series_uid']} is not the moving series")
    grid = "differs from report.json's inputs.moving (size; 18x22x5 voxels against 18x22x8)"
    assert grid in message
    assert f"registered, from {case.mr_dir}" in message and "\n" not in message
    assert _nothing_written(case)
    summary = export_dicom(case.result, moving=two, moving_series=case.mr["series_uid"])
    item = pydicom.dcmread(summary.registration).DeformableRegistrationSequence[0]
    assert item.SourceFrameOfReferenceUID == case.mr["frame_uid"]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"origin": (-10.0, -24.0, -18.0)}, "origin"),
        ({"spacing": (2.0, 2.0, 5.0)}, "spacing"),
        ({"direction": None}, "direction"),
    ],
)
def test_bad_moving_folder_of_another_grid(tmp_path: Path, case, changes, problem) -> None:
    other = tmp_path / "other"
    _registered_mr_but(case, other, **changes)
    with pytest.raises(DicomError, match=rf"not the moving series .* \({problem}; 18x22x8 voxels"):
        export_dicom(case.result, moving=other)
    assert _nothing_written(case)


def test_bad_moving_series_uid_differs_from_the_recorded_one(tmp_path: Path, case) -> None:
    """Where report.json records the series UIDs, a copy on the same grid is refused too."""
    import json

    report_path = case.result / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report["inputs_series"] = {"fixed": case.ct["series_uid"], "moving": case.mr["series_uid"]}
    report_path.write_text(json.dumps(report), encoding="utf-8")
    same_grid = tmp_path / "same_grid"
    copy = write_series(case.moving, same_grid, modality="MR")
    with pytest.raises(DicomError, match=rf"report.json names series {case.mr['series_uid']}\)"):
        export_dicom(case.result, moving=same_grid)
    assert _nothing_written(case)
    assert copy["series_uid"] != case.mr["series_uid"]
    export_dicom(case.result)  # the recorded series themselves


@pytest.mark.parametrize("keyword", ["ScanningSequence", "SequenceVariant"])
def test_bad_mr_without_iod_attributes_refused_up_front(tmp_path: Path, case, keyword) -> None:
    """check_dicom_inputs (run before registering) refuses what the MR export would."""
    from intermodal.dicom import check_dicom_inputs

    broken = tmp_path / "mr_broken"
    write_series(case.moving, broken, modality="MR", drop=(keyword,))
    with pytest.raises(DicomError, match=rf"{broken}: the MR series lacks {keyword}, which"):
        check_dicom_inputs(case.ct_dir, broken)
    check_dicom_inputs(case.ct_dir, case.mr_dir)
