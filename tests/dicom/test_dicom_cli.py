"""The command line: register --dicom, export-dicom, and their refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_helpers import slice_contours, write_rtstruct, write_series

from intermodal.cli import main
from intermodal.dicom import read_registration
from intermodal.dicom.spatial_registration import DEFORMABLE_SPATIAL_REGISTRATION
from intermodal.io import read_image

FAST = ["--refine", "20", "--spacing", "5", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def dicom_pair(tmp_path_factory, small_pair) -> dict:
    """The small phantom pair as a CT and an MR series, with the MR's bladder as an RTSTRUCT."""
    root = tmp_path_factory.mktemp("dicom_pair")
    ct = write_series(small_pair.ct, root / "ct")
    mr = write_series(small_pair.mr, root / "mr", modality="MR")
    moving = read_image(root / "mr")
    labels = sitk.GetArrayFromImage(small_pair.mr_labels)
    values = [int(v) for v in np.unique(labels) if v > 0][:2]
    rois = {f"label{v}": (v, (255, 0, 0), slice_contours(moving, labels == v)) for v in values}
    structures = write_rtstruct(root / "mr_rois.dcm", moving, mr, rois)
    fixed = read_image(root / "ct")
    ct_labels = sitk.GetArrayFromImage(small_pair.ct_labels)
    ct_rois = {f"label{v}": (v, (0, 255, 0), slice_contours(fixed, ct_labels == v)) for v in values}
    on_ct = write_rtstruct(root / "ct_rois.dcm", fixed, ct, ct_rois)
    return {"root": root, "ct": ct, "mr": mr, "structures": structures, "on_ct": on_ct}


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_register_dicom_writes_every_object(capsys, dicom_pair, tmp_path: Path) -> None:
    root, out = dicom_pair["root"], tmp_path / "out"
    code, stdout, stderr = _run(
        capsys, "register", "--fixed", root / "ct", "--moving", root / "mr", "--out", out,
        "--dicom", "--structures", dicom_pair["structures"], *FAST,
    )  # fmt: skip
    assert code == 0, stderr
    assert "DICOM in" in stdout and "a deformable spatial registration" in stdout
    # the series read are recorded, so that export-dicom can refuse another one of their grid
    recorded = json.loads((out / "report.json").read_text(encoding="utf-8"))["inputs_series"]
    assert recorded == {
        "fixed": dicom_pair["ct"]["series_uid"],
        "moving": dicom_pair["mr"]["series_uid"],
    }
    registration = pydicom.dcmread(out / "dicom" / "registration.dcm")
    assert registration.SOPClassUID == DEFORMABLE_SPATIAL_REGISTRATION
    # the object reproduces warped.nii.gz (within interpolation)
    transform = read_registration(out / "dicom" / "registration.dcm", dicom_pair["mr"]["frame_uid"])
    fixed, moving = read_image(root / "ct"), read_image(root / "mr")
    low = float(sitk.GetArrayViewFromImage(moving).min())
    resampled = sitk.GetArrayFromImage(
        sitk.Resample(moving, fixed, transform, sitk.sitkLinear, low)
    )
    warped = sitk.GetArrayFromImage(read_image(out / "warped.nii.gz"))
    error = np.abs(resampled - warped)
    span = float(warped.max() - warped.min())
    assert np.median(error) < 1e-4 * span and np.percentile(error, 99) < 1e-3 * span
    assert len(list((out / "dicom").glob("structures_*_on_MR.dcm"))) == 0
    assert len(list((out / "dicom").glob("structures_1_on_CT.dcm"))) == 1
    # export-dicom on the same folder: refused, then replaced with --overwrite
    code, _, stderr = _run(capsys, "export-dicom", out, "--quiet")
    assert code == 2 and "dicom: output directory exists; pass --overwrite" in stderr
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Jacobian determinant" in page and "Contour agreement" not in page
    landmarks = tmp_path / "landmarks.csv"
    landmarks.write_text("x,y,z\n0,0,0\n10,-5,5\n", encoding="utf-8")
    code, stdout, stderr = _run(
        capsys, "export-dicom", out, "--overwrite", "--quiet", "--structures",
        dicom_pair["structures"], "--structures", dicom_pair["on_ct"], "--landmarks",
        landmarks, landmarks,
    )  # fmt: skip
    assert code == 0, stderr
    assert "2 structure set(s)" in stdout
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Contour agreement" in page and "Target registration error" in page
    assert "label" in page and "<script" not in page


def test_bad_register_dicom_of_two_patients(capsys, dicom_pair, small_pair, tmp_path) -> None:
    other = tmp_path / "other"
    write_series(small_pair.mr, other, modality="MR", patient_id="PAT999")
    out = tmp_path / "out"
    code, _, stderr = _run(
        capsys, "register", "--fixed", dicom_pair["root"] / "ct", "--moving", other,
        "--out", out, "--dicom", *FAST,
    )  # fmt: skip
    assert code == 2
    assert "different patients (pass --allow-different-patients to go on)" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_structures_without_dicom(capsys, dicom_pair, tmp_path) -> None:
    root = dicom_pair["root"]
    code, _, stderr = _run(
        capsys, "register", "--fixed", root / "ct", "--moving", root / "mr", "--out",
        tmp_path / "out", "--structures", dicom_pair["structures"], *FAST,
    )  # fmt: skip
    assert code == 2 and "--structures needs --dicom" in stderr
    assert not (tmp_path / "out").exists()


def test_bad_dicom_with_nifti_inputs(capsys, small_pair_files, tmp_path) -> None:
    code, _, stderr = _run(
        capsys, "register", "--fixed", small_pair_files["ct"], "--moving",
        small_pair_files["mr"], "--out", tmp_path / "out", "--dicom", *FAST,
    )  # fmt: skip
    assert code == 2 and "--dicom needs a DICOM series folder" in stderr
    assert not (tmp_path / "out").exists()


def test_bad_register_dicom_mr_without_scanning_sequence(capsys, small_pair, tmp_path) -> None:
    """Refused before registering: one line, exit 2, no output folder."""
    root = tmp_path / "in"
    write_series(small_pair.ct, root / "ct")
    write_series(small_pair.mr, root / "mr", modality="MR", drop=("ScanningSequence",))
    out = tmp_path / "out"
    code, _, stderr = _run(
        capsys, "register", "--fixed", root / "ct", "--moving", root / "mr", "--out", out,
        "--dicom", *FAST,
    )  # fmt: skip
    assert code == 2
    assert "the MR series lacks ScanningSequence" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()
