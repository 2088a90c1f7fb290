"""RT Structure Sets: rasterise, propagate both ways, contour, write, read back."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_helpers import dciodvfy_errors, slice_contours, write_rtstruct

from intermodal.dicom import DicomError, export_dicom
from intermodal.dicom.structures import contour, rasterise, read_structure_set, warp_mask
from intermodal.io import read_image
from intermodal.metrics import dice


def _ball(image: sitk.Image, centre_mm: tuple[float, float, float], radius: float) -> np.ndarray:
    """Voxels of ``image`` within ``radius`` mm of ``centre_mm`` (LPS): ``(z, y, x)``."""
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1)
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    points = np.array(image.GetOrigin()) + index.reshape(-1, 3) @ direction.T
    inside = np.linalg.norm(points - np.array(centre_mm), axis=1) <= radius
    return inside.reshape(size).transpose(2, 1, 0)


def _structure_set(case, image: sitk.Image, series: dict, name: str, **kwargs) -> Path:
    rois = {
        "Bladder": (3, (255, 255, 0), slice_contours(image, _ball(image, (0, 0, 0), 9.0))),
        "Rectum": (7, (128, 64, 0), slice_contours(image, _ball(image, (6, 10, -4), 5.0))),
    }
    return write_rtstruct(case.root / name, image, series, rois, **kwargs)


def test_rasterise_then_contour_gives_the_mask_back(case) -> None:
    mask = _ball(case.moving, (0, 0, 0), 9.0)
    path = _structure_set(case, case.moving, case.mr, "mr_rois.dcm")
    roi = read_structure_set(path).rois[0]
    assert (roi.name, roi.number, roi.colour) == ("Bladder", 3, (255, 255, 0))
    filled = rasterise(roi, case.moving, path)
    assert np.array_equal(filled, mask)
    again = contour(filled, case.moving)
    assert {k for k, _ in again} == set(np.flatnonzero(mask.any(axis=(1, 2))))


def test_hole_by_inner_contour() -> None:
    image = sitk.Image(12, 12, 1, sitk.sitkFloat32)
    mask = np.zeros((1, 12, 12), bool)
    mask[0, 2:10, 2:10] = True
    mask[0, 5:7, 5:7] = False
    from intermodal.dicom.structures import Roi

    roi = Roi(1, "ring", None, [points for _, points in contour(mask, image)])
    assert len(roi.contours) == 2
    assert np.array_equal(rasterise(roi, image, Path("x.dcm")), mask)


def test_propagated_structures_agree_with_warped_masks(case) -> None:
    path = _structure_set(case, case.moving, case.mr, "mr_rois.dcm")
    summary = export_dicom(case.result, structures=(path,))
    (written,) = summary.structure_sets
    ds = pydicom.dcmread(written)
    assert ds.Modality == "RTSTRUCT"
    assert ds.SeriesInstanceUID not in (case.ct["series_uid"], case.mr["series_uid"])
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == case.ct["frame_uid"]
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == case.ct["series_uid"]
    assert ds.StudyInstanceUID == case.ct["study_uid"]
    rois = {item.ROINumber: item for item in ds.StructureSetROISequence}
    assert {n: r.ROIName for n, r in rois.items()} == {3: "Bladder", 7: "Rectum"}
    assert {r.ROIGenerationAlgorithm for r in rois.values()} == {"AUTOMATIC"}
    assert all("intermodal" in r.ROIGenerationDescription for r in rois.values())
    colours = {c.ReferencedROINumber: list(c.ROIDisplayColor) for c in ds.ROIContourSequence}
    assert colours == {3: [255, 255, 0], 7: [128, 64, 0]}
    ct_uids = set(case.ct["sop_uids"])
    for item in ds.ROIContourSequence:
        for contour_item in item.ContourSequence:
            (image,) = contour_item.ContourImageSequence
            assert image.ReferencedSOPInstanceUID in ct_uids
    # read back on the CT grid: the warped masks, Dice >= 0.98 per ROI
    fixed = read_image(case.ct_dir)
    read_back = read_structure_set(written)
    for roi in read_back.rois:
        filled = rasterise(roi, fixed, written)
        original = next(r for r in read_structure_set(path).rois if r.number == roi.number)
        expected = warp_mask(rasterise(original, case.moving, path), case.moving, fixed,
                             case.transform)  # fmt: skip
        assert np.array_equal(expected, summary.propagated["fixed"][roi.name])
        assert dice(expected, filled) >= 0.98, roi.name


def test_structures_on_ct_go_to_mr_with_the_inverse(case) -> None:
    path = _structure_set(case, case.fixed, case.ct, "ct_rois.dcm")
    summary = export_dicom(case.result, structures=(path,))
    (written,) = summary.structure_sets
    assert written.name.endswith("_on_MR.dcm")
    ds = pydicom.dcmread(written)
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == case.mr["frame_uid"]
    moving = read_image(case.mr_dir)
    for roi in read_structure_set(written).rois:
        filled = rasterise(roi, moving, written)
        assert dice(summary.propagated["moving"][roi.name], filled) >= 0.98
    # forward then back: the CT ball lands on the MR where the transform says it is
    centre = np.array(case.transform.TransformPoint((0.0, 0.0, 0.0)))
    bladder = summary.propagated["moving"]["Bladder"]
    index = np.argwhere(bladder).mean(axis=0)[::-1]
    found = np.array(moving.TransformContinuousIndexToPhysicalPoint(index.tolist()))
    assert np.linalg.norm(found - centre) < 2.0


def test_agreement_when_structures_on_both(case) -> None:
    on_mr = _structure_set(case, case.moving, case.mr, "mr_rois.dcm")
    on_ct = _structure_set(case, case.fixed, case.ct, "ct_rois.dcm")
    summary = export_dicom(case.result, structures=(on_mr, on_ct))
    names = {a.name for a in summary.agreement}
    assert names == {f"{n} (on {s})" for n in ("Bladder", "Rectum") for s in ("fixed", "moving")}
    for agreement in summary.agreement:
        assert 0.0 <= agreement.dice <= 1.0 and agreement.hd95_mm >= 0.0
    # a result without qa.json: the page is made from jacobian.nii.gz, with the ROI table
    page = (case.result / "report.html").read_text(encoding="utf-8")
    assert "Contour agreement per ROI" in page and "Bladder (on fixed)" in page


def test_written_structure_sets_pass_dciodvfy(case) -> None:
    path = _structure_set(case, case.moving, case.mr, "mr_rois.dcm")
    summary = export_dicom(case.result, structures=(path,))
    assert dciodvfy_errors(summary.structure_sets[0]) == []


def test_plastimatch_reads_the_structures(case) -> None:
    tool = shutil.which("plastimatch")
    if tool is None:
        pytest.skip("plastimatch (Debian package) is not installed")
    path = _structure_set(case, case.moving, case.mr, "mr_rois.dcm")
    summary = export_dicom(case.result, structures=(path,))
    # the series through plastimatch, then the structures on the grid it read
    ct = case.root / "series.nrrd"
    run = subprocess.run(
        [tool, "convert", "--input", str(summary.folder / "series"), "--output-img", str(ct)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = case.root / "ss"
    run = subprocess.run(
        [tool, "convert", "--input", str(summary.structure_sets[0]), "--fixed", str(ct),
         "--output-prefix", str(out), "--prefix-format", "nrrd"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    masks = {p.name for p in out.glob("*.nrrd")}
    assert {"Bladder.nrrd", "Rectum.nrrd"} <= masks
    bladder = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "Bladder.nrrd"))) > 0
    assert dice(bladder, summary.propagated["fixed"]["Bladder"]) >= 0.9


def test_bad_structures_on_another_series(case) -> None:
    path = _structure_set(case, case.moving, case.mr, "other.dcm",
                          referenced_series_uid="1.2.3.4.5")  # fmt: skip
    with pytest.raises(DicomError, match=r"references series 1\.2\.3\.4\.5, not the moving"):
        export_dicom(case.result, structures=(path,))
    assert not (case.result / "dicom").exists()


def test_bad_structures_of_another_patient(case) -> None:
    path = _structure_set(case, case.moving, case.mr, "other.dcm", patient_id="SOMEONE")
    with pytest.raises(DicomError, match="PatientID 'SOMEONE' differs"):
        export_dicom(case.result, structures=(path,))


def test_roi_without_contour_is_skipped_with_a_warning(case, caplog) -> None:
    rois = {
        "Bladder": (3, (255, 255, 0), slice_contours(case.moving, _ball(case.moving, (0, 0, 0),
                                                                         9.0))),
        "Empty": (4, (0, 0, 255), []),
    }  # fmt: skip
    path = write_rtstruct(case.root / "empty.dcm", case.moving, case.mr, rois)
    with caplog.at_level(logging.WARNING):
        summary = export_dicom(case.result, structures=(path,))
    assert "ROI 4 'Empty' has no contour; it is skipped" in caplog.text
    assert summary.skipped_rois == ["empty.dcm: Empty"]
    ds = pydicom.dcmread(summary.structure_sets[0])
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Bladder"]


def test_bad_contour_outside_the_image(case) -> None:
    inside = slice_contours(case.moving, _ball(case.moving, (0, 0, 0), 9.0))
    k, points = inside[0]
    outside = [
        (k, points + case.moving.GetSpacing()[0] * 40 * np.array(case.moving.GetDirection()[:9:3]))
    ]
    path = write_rtstruct(case.root / "out.dcm", case.moving, case.mr,
                          {"Far": (2, (0, 255, 0), outside)})  # fmt: skip
    with pytest.raises(DicomError, match=r"out.dcm: ROI 2 'Far' has a contour outside the image"):
        export_dicom(case.result, structures=(path,))
    assert not (case.result / "dicom").exists()


def test_bad_not_a_structure_set(case) -> None:
    slice_file = next(case.ct_dir.glob("*.dcm"))
    with pytest.raises(DicomError, match="not an RT Structure Set"):
        export_dicom(case.result, structures=(slice_file,))


def test_contours_on_a_slice_the_ct_lacks_reference_no_image(tmp_path: Path) -> None:
    from dicom_cases import make_result

    case = make_result(tmp_path, ct_missing_slice=True)
    path = _structure_set(case, case.moving, case.mr, "mr_rois.dcm")
    summary = export_dicom(case.result, structures=(path,))
    ds = pydicom.dcmread(summary.structure_sets[0])
    missing_depth = float(case.fixed.TransformIndexToPhysicalPoint((0, 0, 4))[2])
    with_image, without = 0, 0
    for item in ds.ROIContourSequence:
        for contour_item in item.ContourSequence:
            on_missing = abs(float(contour_item.ContourData[2]) - missing_depth) < 1e-3
            assert ("ContourImageSequence" in contour_item) != on_missing
            with_image, without = with_image + (not on_missing), without + on_missing
    assert with_image and without
    assert dciodvfy_errors(summary.structure_sets[0]) == []


def _segment(image: sitk.Image, k: int, columns: list[float]) -> np.ndarray:
    """Points ``(N, 3)`` LPS mm along row 10 of slice ``k``: a contour that encloses nothing."""
    return np.array([image.TransformContinuousIndexToPhysicalPoint((c, 10.0, float(k)))
                     for c in columns])  # fmt: skip


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # the NaN written on purpose
@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (np.arange(11.0), "ContourData has 11 values, not a multiple of 3"),
        (np.array([1.0, 2.0, np.nan]), "ContourData holds a value that is not finite"),
    ],
)
def test_bad_contour_data(case, values: np.ndarray, problem: str) -> None:
    """Refused up front, naming the file, the ROI and the contour; nothing written."""
    from intermodal.dicom import check_dicom_inputs

    good = slice_contours(case.moving, _ball(case.moving, (0, 0, 0), 9.0))
    rois = {
        "Bladder": (3, (255, 255, 0), good),
        "Bad": (5, (0, 0, 255), [good[0], (good[0][0], values)]),
    }
    path = write_rtstruct(case.root / "malformed.dcm", case.moving, case.mr, rois)
    expected = rf"malformed.dcm: ROI 5 'Bad', contour 2: {problem}"
    with pytest.raises(DicomError, match=expected) as err:
        read_structure_set(path)
    assert "\n" not in str(err.value)
    with pytest.raises(DicomError, match=expected):
        check_dicom_inputs(case.ct_dir, case.mr_dir, structures=(path,))
    with pytest.raises(DicomError, match=expected):
        export_dicom(case.result, structures=(path,))
    assert not (case.result / "dicom").exists()


@pytest.mark.parametrize("columns", [[5.0, 9.0], [5.0], [5.0, 7.0, 9.0]])
def test_roi_of_degenerate_contours_is_skipped_with_a_warning(case, caplog, columns) -> None:
    """2 points, 1 point, 3 collinear points: reported as skipped, as an ROI without contour."""
    from intermodal.dicom import check_dicom_inputs

    ball = slice_contours(case.moving, _ball(case.moving, (0, 0, 0), 9.0))
    k = ball[0][0]
    rois = {
        "Bladder": (3, (255, 255, 0), ball + [(k, _segment(case.moving, k, [2.0, 4.0]))]),
        "Line": (4, (0, 0, 255), [(k, _segment(case.moving, k, columns))]),
    }
    path = write_rtstruct(case.root / "degenerate.dcm", case.moving, case.mr, rois)
    with caplog.at_level(logging.WARNING):
        check_dicom_inputs(case.ct_dir, case.mr_dir, structures=(path,),
                           images={"fixed": case.fixed, "moving": case.moving})  # fmt: skip
    assert caplog.text == ""  # the check alone warns of nothing: the export does, once
    with caplog.at_level(logging.WARNING):
        summary = export_dicom(case.result, structures=(path,))
    assert f"ROI 4 'Line' has only degenerate contours ({len(columns)} points" in caplog.text
    assert "ROI 3 'Bladder': 1 degenerate contour(s)" in caplog.text
    assert summary.skipped_rois == ["degenerate.dcm: Line"]
    ds = pydicom.dcmread(summary.structure_sets[0])
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Bladder"]
    assert len(ds.ROIContourSequence[0].ContourSequence) > 0


def test_structure_set_with_every_roi_skipped_is_not_written(case, caplog) -> None:
    """An RT Structure Set needs one ROI or more: none is written, the ROIs are reported."""
    k = slice_contours(case.moving, _ball(case.moving, (0, 0, 0), 9.0))[0][0]
    rois = {
        "Line": (4, (0, 0, 255), [(k, _segment(case.moving, k, [5.0, 9.0]))]),
        "Empty": (6, (0, 255, 0), []),
    }
    path = write_rtstruct(case.root / "nothing.dcm", case.moving, case.mr, rois)
    with caplog.at_level(logging.WARNING):
        summary = export_dicom(case.result, structures=(path,))
    assert "nothing.dcm: every ROI is skipped; no structure set is written" in caplog.text
    assert summary.skipped_rois == ["nothing.dcm: Line", "nothing.dcm: Empty"]
    assert summary.structure_sets == []
    assert not list(summary.folder.glob("structures_*"))
