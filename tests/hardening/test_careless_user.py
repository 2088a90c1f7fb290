"""Inputs a careless user gives, found by trying the CLI as one: each refused in one line,
naming the file, before any work is done and without deleting or half-writing anything."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.cli import main
from intermodal.errors import ImageReadError, IntermodalError, OutputExistsError
from intermodal.io import read_image
from intermodal.preprocess import working_grid
from intermodal.registration import Settings, register
from intermodal.report import OutputDirectory, check_destination

FAST = ["--refine", "5", "--spacing", "5", "--device", "cpu", "--quiet"]


def _run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_error_line(err: str, *names: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error:" in lines[0] and "Traceback" not in err
    for name in names:
        assert name in lines[0]
    return lines[0]


def _refused(capsys, argv: list, *names: str) -> str:
    """Run the CLI with ``argv``: exit 2 and one error line naming each of ``names``."""
    code, err = _run(capsys, *argv)
    assert code == 2
    return _one_error_line(err, *names)


# ------------------------------------------------------------------------- output folders


def test_overwrite_refuses_an_output_folder_that_holds_an_input(tmp_path, capsys, small_pair_files):
    out = tmp_path / "same"
    out.mkdir()
    fixed, moving = (shutil.copy(small_pair_files[k], out) for k in ("ct", "mr"))
    argv = ["register", "--fixed", fixed, "--moving", moving, "--out", out, "--overwrite", *FAST]
    _refused(capsys, argv, "inside the output folder")
    assert sorted(p.name for p in out.iterdir()) == ["ct.nii.gz", "mr.nii.gz"]


def test_the_current_folder_cannot_be_replaced(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for name in (".", "", "..", str(tmp_path)):
        with pytest.raises(IntermodalError, match="current folder|name is empty"):
            check_destination(name, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no staging folder left


def test_an_output_path_that_is_a_file_or_under_one_is_named_so(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(IntermodalError, match="exists and is not a directory"):
            check_destination(afile, overwrite=overwrite)
    with pytest.raises(IntermodalError, match="is not a directory"):
        check_destination(afile / "sub")
    with pytest.raises(IntermodalError, match="does not exist"):
        check_destination(tmp_path / "a" / "b" / "res")
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("where", ["/proc/intermodal-out", "too-long"])
def test_an_unwritable_output_is_refused_before_the_work(tmp_path, where):
    target = tmp_path / ("a" * 300) if where == "too-long" else where
    with pytest.raises(IntermodalError, match="cannot write"):
        check_destination(target)
    with pytest.raises(IntermodalError, match="cannot write"):
        OutputDirectory(target)


def test_an_existing_folder_is_still_refused_without_overwrite(tmp_path):
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_destination(tmp_path)


def test_the_cli_checks_the_output_before_reading_and_registering(tmp_path, capsys):
    missing, out = tmp_path / "no.nii.gz", tmp_path / "missing" / "out"
    argv = ["register", "--fixed", missing, "--moving", missing, "--out", out]
    _refused(capsys, argv, "does not exist", "missing")


# ------------------------------------------------------------------------- images


def _save(tmp_path, name: str, image: sitk.Image) -> str:
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return str(path)


def _volume(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    return image


def test_a_sheared_grid_is_refused(tmp_path):
    image = _volume(np.random.default_rng(0).random((8, 9, 10)).astype(np.float32))
    image.SetDirection((1, 0.3, 0, 0, 1, 0, 0, 0, 1))
    path = _save(tmp_path, "sheared.mha", image)
    with pytest.raises(ImageReadError, match="not orthonormal") as caught:
        read_image(path)
    assert path in str(caught.value)
    # a rotation is a direction like any other
    angle = np.radians(20)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    assert read_image(_save(tmp_path, "oblique.mha", image)).GetSize() == (10, 9, 8)


def test_a_complex_image_is_refused(tmp_path):
    values = np.ones((6, 7, 8), dtype=np.complex64)
    path = _save(tmp_path, "complex.mha", sitk.GetImageFromArray(values))
    with pytest.raises(ImageReadError, match="complex"):
        read_image(path)


def test_float64_values_beyond_float32_are_named_so(tmp_path):
    values = np.full((6, 7, 8), 1e200)
    values[0, 0, 0] = 1.0
    path = _save(tmp_path, "huge.nii.gz", _volume(values))
    with pytest.raises(ImageReadError, match="float32 range") as caught:
        read_image(path)
    assert "not finite" not in str(caught.value)
    values[0, 0, 1] = np.inf  # a truly infinite value is reported as one
    with pytest.raises(ImageReadError, match="infinite"):
        read_image(_save(tmp_path, "inf.nii.gz", _volume(values)))


def test_a_single_slice_fixed_volume_and_a_mismatched_points_file_name_the_file(
    tmp_path, capsys, small_pair_files
):
    ct = sitk.ReadImage(str(small_pair_files["ct"]))
    thin = _save(tmp_path, "thin.nii.gz", ct[:, :, 3:4])
    out = tmp_path / "out"
    ct_path, mr_path = small_pair_files["ct"], small_pair_files["mr"]
    argv = ["register", "--fixed", thin, "--moving", mr_path, "--out", out, *FAST]
    _refused(capsys, argv, "thin.nii.gz", "2D image")
    points = tmp_path / "points_2d.csv"
    points.write_text("x,y\n1,2\n")
    argv = ["register", "--fixed", ct_path, "--moving", mr_path, "--points", points, "--out", out]
    _refused(capsys, [*argv, *FAST], "points_2d.csv", "2D points file")
    assert not out.exists()


def test_a_fixed_image_too_thin_for_the_deformation_is_refused_clearly(small_pair):
    with pytest.raises(IntermodalError, match="needs 8 or more along each axis"):
        # 2 slices of 5 mm: a 4-voxel working grid, a velocity grid of 1 voxel along z
        register(small_pair.ct[:, :, 10:12], small_pair.mr, Settings(refine=2, spacing=5.0))


def test_an_absurd_working_spacing_is_refused_before_any_memory_is_taken(small_pair):
    with pytest.raises(IntermodalError, match="choose a coarser spacing"):
        working_grid(small_pair.ct, 0.001)


# ------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("smoothness", float("inf")),
        ("smoothness", float("nan")),
        ("smoothness", -1.0),
        ("volume_penalty", float("inf")),
        ("learning_rate", 0.0),
        ("learning_rate", float("nan")),
    ],
)
def test_non_finite_or_negative_weights_are_refused(name, value):
    with pytest.raises(IntermodalError, match=name.replace("_", " ")):
        Settings(**{name: value}).validate()


def test_a_constant_image_and_an_empty_mask_give_one_line_naming_the_file(
    tmp_path, capsys, small_pair_files
):
    ct = sitk.ReadImage(str(small_pair_files["ct"]))
    flat = _save(tmp_path, "flat.nii.gz", ct * 0)
    out = tmp_path / "out"
    ct_path, mr_path = small_pair_files["ct"], small_pair_files["mr"]
    argv = ["register", "--fixed", ct_path, "--moving", flat, "--out", out, *FAST]
    _refused(capsys, argv, "flat.nii.gz", "shows nothing to register")
    empty = _save(tmp_path, "empty_mask.nii.gz", sitk.Cast(ct * 0, sitk.sitkUInt8))
    argv = [
        "register",
        "--fixed",
        ct_path,
        "--moving",
        mr_path,
        "--fixed-mask",
        empty,
        "--out",
        out,
    ]
    _refused(capsys, [*argv, *FAST], "empty_mask.nii.gz", "no foreground")
    assert not out.exists()


@pytest.mark.parametrize("option", [["--refine", "-1"], ["--model", "nonsense"]])
def test_the_demo_refuses_bad_options_before_making_its_data(tmp_path, capsys, option):
    out = tmp_path / "demo"
    _refused(capsys, ["demo", "--out", out, *option], option[1])
    assert not out.exists()


def test_a_truncated_transform_file_is_one_line_without_hdf5_diagnostics(
    tmp_path, capfd, small_pair_files
):
    from intermodal.io import read_transform

    good = tmp_path / "good.h5"
    sitk.WriteTransform(sitk.TranslationTransform(3, (1.0, 2.0, 3.0)), str(good))
    assert read_transform(good, 3).GetDimension() == 3
    broken = tmp_path / "transform.h5"
    broken.write_bytes(good.read_bytes()[:300])
    code = main(["warp", "--fixed", str(small_pair_files["ct"]), "--image",
                 str(small_pair_files["mr"]), "--transform", str(broken), "--out",
                 str(tmp_path / "w.nii.gz")])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 2 and "HDF5" not in err
    _one_error_line(err, "transform.h5", "not a readable ITK transform")
    with pytest.raises(IntermodalError, match="transform is 3D"):
        read_transform(good, 2)


def test_warp_names_an_image_of_another_dimension(tmp_path, capsys, small_pair_files):
    picture = _save(tmp_path, "slice.nii.gz", sitk.ReadImage(str(small_pair_files["mr"]))[:, :, 5])
    transform = tmp_path / "t.h5"
    sitk.WriteTransform(sitk.TranslationTransform(3), str(transform))
    argv = ["warp", "--fixed", small_pair_files["ct"], "--image", picture, "--transform", transform]
    _refused(capsys, [*argv, "--out", tmp_path / "w.nii.gz"], "slice.nii.gz", "2D image")


def test_an_object_too_small_for_millimetre_stages_is_warned_about(small_pair):
    # the phantom at a tenth of its size (40 mm), as a preclinical scan or a unit mistake gives
    small = []
    for image in (small_pair.ct, small_pair.mr):
        copy = sitk.Image(image)
        copy.SetSpacing([s / 10 for s in image.GetSpacing()])
        copy.SetOrigin([o / 10 for o in image.GetOrigin()])
        small.append(copy)
    result = register(*small, Settings(refine=0, model=None, spacing=0.5))
    assert any("spacing is in mm" in w for w in result.report["warnings"])
    normal = register(small_pair.ct, small_pair.mr, Settings(refine=0, model=None))
    assert not any("spacing is in mm" in w for w in normal.report["warnings"])


def test_a_folder_of_non_dicom_files_is_one_line_without_gdcm_warnings(tmp_path, capfd):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    (folder / "b.dcm").write_text("x\n")
    code = main(["register", "--fixed", str(folder), "--moving", str(folder), "--out",
                 str(tmp_path / "out")])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 2 and "GDCM" not in err and "WARNING" not in err
    _one_error_line(err, "junk", "no DICOM series")
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # switched back on
