"""The command line end to end, and a one-line error with nothing written for bad input."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.cli import main

OUTPUTS = {
    "warped.nii.gz",
    "displacement.nii.gz",
    "inverse_displacement.nii.gz",
    "jacobian.nii.gz",
    "transform.h5",
    "affine.mat",
    "report.json",
    "qc.png",
}
FAST = ["--refine", "30", "--spacing", "5", "--device", "cpu", "--quiet"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def registered(tmp_path_factory, small_pair_files):
    """One CLI registration of the phantom with labels and points, shared by several tests."""
    out = tmp_path_factory.mktemp("cli") / "result"
    points = out.parent / "points.csv"
    points.write_text("x,y,z\n0,0,0\n12.5,-7.5,10\n")
    code = main(
        [
            "register",
            "--fixed",
            str(small_pair_files["ct"]),
            "--moving",
            str(small_pair_files["mr"]),
            "--out",
            str(out),
            "--labels",
            str(small_pair_files["mr_labels"]),
            "--points",
            str(points),
            *FAST,
        ]
    )
    assert code == 0
    return out


def test_register_writes_every_output(registered):
    names = {p.name for p in registered.iterdir()}
    assert OUTPUTS | {"warped_labels.nii.gz", "points.csv"} <= names
    report = json.loads((registered / "report.json").read_text(encoding="utf-8"))
    for key in ("inputs", "settings", "timings_s", "nmi", "jacobian"):
        assert key in report
    assert report["nmi"]["after"] > report["nmi"]["before"]
    assert 0.0 <= report["jacobian"]["nonpositive_fraction"] < 1e-3
    assert not [p for p in registered.parent.iterdir() if p.name.startswith(".result")]


def test_register_records_absolute_input_paths(capsys, small_pair_files, tmp_path, monkeypatch):
    """Given relative to the working folder, the inputs are recorded absolute in report.json
    (gui --result and export-dicom read them from wherever they are run)."""
    monkeypatch.chdir(small_pair_files["ct"].parent)
    code, _, err = _run(
        capsys, "register", "--fixed", small_pair_files["ct"].name,
        "--moving", small_pair_files["mr"].name, "--out", tmp_path / "result", *FAST,
    )  # fmt: skip
    assert code == 0, err
    paths = json.loads((tmp_path / "result" / "report.json").read_text())["inputs_paths"]
    assert paths["fixed"] == str(small_pair_files["ct"].absolute())
    assert paths["moving"] == str(small_pair_files["mr"].absolute())
    assert paths["labels"] is None


def test_points_csv_matches_the_transform(registered):
    transform = sitk.ReadTransform(str(registered / "transform.h5"))
    lines = (registered / "points.csv").read_text(encoding="utf-8").strip().splitlines()
    assert lines[0].replace(" ", "") == "x,y,z"
    mapped = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    expected = [transform.TransformPoint(p) for p in [(0.0, 0.0, 0.0), (12.5, -7.5, 10.0)]]
    np.testing.assert_allclose(mapped, expected, atol=1e-4)


def test_warp_command_reproduces_warped_labels(capsys, registered, small_pair_files, tmp_path):
    out = tmp_path / "labels.nii.gz"
    code, stdout, _ = _run(
        capsys,
        "warp",
        "--transform",
        registered / "transform.h5",
        "--fixed",
        small_pair_files["ct"],
        "--image",
        small_pair_files["mr_labels"],
        "--labels",
        "--out",
        out,
    )
    assert code == 0 and str(out) in stdout
    reference = sitk.ReadImage(str(registered / "warped_labels.nii.gz"))
    warped = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(warped), sitk.GetArrayFromImage(reference))
    # both written as integers, which viewers load as a label map
    assert reference.GetPixelID() == warped.GetPixelID() == sitk.sitkInt32


def test_register_summary_and_overwrite(capsys, small_pair_files, tmp_path):
    out = tmp_path / "r"
    args = [
        "register",
        "--fixed",
        small_pair_files["ct"],
        "--moving",
        small_pair_files["mr"],
        "--out",
        out,
        "--init",
        "moments",
        *FAST,
    ]
    code, stdout, _ = _run(capsys, *args)
    assert code == 0 and "NMI" in stdout and str(out) in stdout
    code, _, stderr = _run(capsys, *args)
    assert code == 2 and "--overwrite" in stderr
    code, _, _ = _run(capsys, *args, "--overwrite")
    assert code == 0 and OUTPUTS <= {p.name for p in out.iterdir()}


def test_help_and_module_entry_point():
    completed = subprocess.run(
        [sys.executable, "-m", "intermodal", "--help"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0
    for command in ("register", "warp", "demo"):
        assert command in completed.stdout


def test_building_the_parser_imports_no_torch():
    """``--help`` stays instant: choices and defaults are read from the library only when a
    command's own help is shown or an option is parsed."""
    code = "import sys; from intermodal.cli import build_parser; build_parser(); " + (
        "print(sorted({'torch', 'SimpleITK'} & set(sys.modules)))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["register", "register-batch", "evaluate"])
def test_parser_defaults_and_choices_are_the_librarys(command):
    from intermodal import preprocess, refinement, registration
    from intermodal.cli import _settings, build_parser
    from intermodal.presets import INIT_CHOICES, PRESET_NAMES

    parser = build_parser()
    required = {
        "register": ["--fixed", "f", "--moving", "m", "--out", "o"],
        "register-batch": ["manifest.json", "--out", "o"],
        "evaluate": ["manifest.json", "--out", "o", "--method", "intermodal"],
    }
    argv = [command, *required[command]]
    args = parser.parse_args(argv)
    # no option given: exactly the preset's settings, in 2D and 3D
    for ndim in (2, 3):
        assert _settings(args, ndim) == registration.preset_settings(args.preset, ndim)
    subparser = parser._subparsers._group_actions[0].choices[command]
    actions = {action.dest: action for action in subparser._actions}
    expected_choices = {
        "preset": PRESET_NAMES,
        "init": INIT_CHOICES,
        "device": registration.DEVICE_CHOICES,
        "similarity": refinement.SIMILARITY_CHOICES,
        "fixed_modality": preprocess.MODALITY_CHOICES,
        "moving_modality": preprocess.MODALITY_CHOICES,
    }
    for dest, choices in expected_choices.items():
        assert tuple(actions[dest].choices) == tuple(choices), dest
    # the help shows the library's defaults, whatever they are today
    text = " ".join(subparser.format_help().split())
    defaults = registration.Settings()
    shown = ("smoothness", "volume_penalty", "sampling", "max_samples", "velocity_smoothing")
    for name in (*shown, "mi_weight"):
        assert f"default {getattr(defaults, name):g})" in text, name
    assert f"default {defaults.refine})" in text and f"(default {defaults.similarity})" in text
    low, high = preprocess.DEFAULT_HU_WINDOW
    assert f"else {low:g} {high:g})" in text
    assert f"else {registration.DEFAULT_INTEGRATION_STEPS})" in text
    from intermodal.models import default_models_in_words

    assert defaults.model == "default"
    assert f"'default' ({default_models_in_words()})" in text


def test_demo_and_prepare_defaults_are_the_librarys():
    from intermodal.cli import build_parser
    from intermodal.data.prepare import DEFAULT_DEFORMABLE, DEFORMABLE_CHOICES
    from intermodal.registration import DEVICE_CHOICES, Settings

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    demo = " ".join(commands["demo"].format_help().split())
    assert f"{{{','.join(DEVICE_CHOICES)}}}" in demo
    assert f"(default {Settings().device})" in demo
    prepare = {action.dest: action for action in commands["prepare"]._actions}
    assert tuple(prepare["deformable"].choices) == DEFORMABLE_CHOICES
    assert f"(default {DEFAULT_DEFORMABLE})" in " ".join(commands["prepare"].format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", "m.json", "--out", "o", "--deformable", "demons"])


# --- bad input: one line naming the problem, exit code 2, and no output directory --------


def _nifti(tmp_path: Path, name: str, array: np.ndarray, spacing=(2.0, 2.0, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing[: image.GetDimension()])
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def _patch_nifti_header(path: Path, offset: int, fmt: str, value) -> None:
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(gzip.compress(bytes(data)))


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    volume = np.random.default_rng(0).random((16, 16, 16))
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp_path / "nowhere.nii.gz", "not found")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(np.random.default_rng(1).bytes(3000))
    cases["corrupt"] = (corrupt, "corrupt.nii.gz")
    truncated = _nifti(tmp_path, "truncated.nii.gz", volume)
    truncated.write_bytes(truncated.read_bytes()[: int(truncated.stat().st_size * 0.7)])
    cases["truncated"] = (truncated, "truncated")
    empty = _nifti(tmp_path, "empty.nii.gz", volume)
    _patch_nifti_header(empty, 40 + 2 * 3, "<h", 0)  # dim[3] = 0
    cases["empty"] = (empty, "empty.nii.gz")
    four_d = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(volume)] * 3), str(four_d))
    image4 = sitk.ReadImage(str(four_d))
    assert image4.GetDimension() == 4
    cases["4d"] = (four_d, "4D")
    nan = volume.copy()
    nan[3, 4, 5] = np.nan
    cases["nan"] = (_nifti(tmp_path, "nan.nii.gz", nan), "NaN")
    zero = _nifti(tmp_path, "zero_spacing.nii.gz", volume)
    _patch_nifti_header(zero, 76 + 4 * 1, "<f", 0.0)  # pixdim[1] = 0
    cases["zero_spacing"] = (zero, "spacing")
    no_series = tmp_path / "dicom_empty"
    no_series.mkdir()
    (no_series / "notes.txt").write_text("not DICOM")
    cases["no_series"] = (no_series, "dicom_empty")
    return cases


BAD_CASES = ["missing", "corrupt", "truncated", "empty", "4d", "nan", "zero_spacing", "no_series"]


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("role", ["--fixed", "--moving"])
def test_bad_input_file(capsys, tmp_path, small_pair_files, case, role):
    path, expected = _bad_inputs(tmp_path)[case]
    good = {"--fixed": small_pair_files["ct"], "--moving": small_pair_files["mr"]}
    good[role] = path
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        capsys,
        "register",
        "--fixed",
        good["--fixed"],
        "--moving",
        good["--moving"],
        "--out",
        out,
        *FAST,
    )
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("intermodal: error:")
    assert expected.lower() in lines[0].lower()
    assert path.name in lines[0]
    assert "Traceback" not in stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bad_2d_fixed_with_3d_moving(capsys, tmp_path, small_pair_files):
    flat = _nifti(tmp_path, "slice.nii.gz", np.random.default_rng(0).random((32, 32)), (2.0, 2.0))
    out = tmp_path / "out"
    code, _, stderr = _run(
        capsys, "register", "--fixed", flat, "--moving", small_pair_files["mr"], "--out", out, *FAST
    )
    assert code == 2 and "2D" in stderr and "3D" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_existing_output_directory(capsys, tmp_path, small_pair_files):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = _run(
        capsys,
        "register",
        "--fixed",
        small_pair_files["ct"],
        "--moving",
        small_pair_files["mr"],
        "--out",
        out,
        *FAST,
    )
    assert code == 2 and "--overwrite" in stderr and str(out) in stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_bad_input_with_debug_shows_traceback(tmp_path, small_pair_files):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "intermodal",
            "register",
            "--fixed",
            str(tmp_path / "no.nii.gz"),
            "--moving",
            str(small_pair_files["mr"]),
            "--out",
            str(tmp_path / "o"),
            "--debug",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode != 0 and "Traceback" in completed.stderr


def test_bad_model_path(capsys, tmp_path, small_pair_files):
    code, _, stderr = _run(
        capsys,
        "register",
        "--fixed",
        small_pair_files["ct"],
        "--moving",
        small_pair_files["mr"],
        "--out",
        tmp_path / "o",
        "--model",
        tmp_path / "model.safetensors",
        *FAST,
    )
    assert code == 2 and "model.safetensors" in stderr and "not found" in stderr


def test_demo_prints_dice_gain(capsys, tmp_path):
    code, stdout, _ = _run(capsys, "demo", "--out", tmp_path / "demo", "--refine", "40", "--quiet")
    assert code == 0
    means = {
        line.split(":")[0].split()[-1]: float(line.split("mean")[1].split()[0])
        for line in stdout.splitlines()
        if line.startswith("Dice")
    }
    # the subject's MR moved and deformed onto its own CT: each stage improves on the last
    # (measured with the default 80 steps: 0.455 -> 0.791 -> 0.905; 40 steps here)
    assert set(means) == {"before", "alignment", "refinement"}
    assert means["alignment"] > means["before"] + 0.1
    assert means["refinement"] > means["alignment"] + 0.03
    assert "dropped by the guard" not in stdout
    assert (tmp_path / "demo" / "warped_labels.nii.gz").is_file()
    report = json.loads((tmp_path / "demo" / "report.json").read_text(encoding="utf-8"))
    assert report["model_path"] is None


def test_synth_writes_a_manifest(capsys, tmp_path):
    code, stdout, _ = _run(
        capsys, "synth", "--subjects", "3", "--dim", "2", "--out", tmp_path / "data", "--seed", "4"
    )
    assert code == 0 and "dataset.json" in stdout
    manifest = json.loads((tmp_path / "data" / "dataset.json").read_text(encoding="utf-8"))
    assert len(manifest["subjects"]) == 3
    for subject in manifest["subjects"]:
        assert (tmp_path / "data" / subject["ct"]).is_file()
    code, _, stderr = _run(
        capsys, "synth", "--subjects", "3", "--dim", "2", "--out", tmp_path / "data"
    )
    assert code == 2 and len(stderr.strip().splitlines()) == 1


def test_regularisation_options_reach_the_settings(capsys, small_pair_files, tmp_path):
    out = tmp_path / "r"
    code, _, _ = _run(
        capsys, "register", "--fixed", small_pair_files["ct"], "--moving",
        small_pair_files["mr"], "--out", out, "--smoothness", "2.5", "--velocity-smoothing",
        "3", "--volume-penalty", "0.5", "--sampling", "0.3", "--max-samples", "500", *FAST,
    )  # fmt: skip
    assert code == 0
    settings = json.loads((out / "report.json").read_text(encoding="utf-8"))["settings"]
    assert (settings["smoothness"], settings["velocity_smoothing"]) == (2.5, 3.0)
    assert (settings["volume_penalty"], settings["sampling"]) == (0.5, 0.3)
    assert settings["max_samples"] == 500
    bad = [
        ("--velocity-smoothing", "20", "velocity smoothing"),
        ("--sampling", "0", "sampling"),
        ("--max-samples", "0", "max samples"),
    ]
    for option, value, message in bad:
        out = tmp_path / f"bad{option}"
        code, _, stderr = _run(
            capsys, "register", "--fixed", small_pair_files["ct"], "--moving",
            small_pair_files["mr"], "--out", out, option, value, *FAST,
        )  # fmt: skip
        assert code != 0 and message in stderr and len(stderr.strip().splitlines()) == 1
        assert not out.exists()


def test_level_and_integration_steps_options_reach_the_settings(capsys, small_pair_files, tmp_path):
    fast = [option for option in FAST if option not in ("--refine", "30")]
    out = tmp_path / "levels"
    code, _, _ = _run(
        capsys, "register", "--fixed", small_pair_files["ct"], "--moving",
        small_pair_files["mr"], "--out", out, "--level-steps", "4,8,2", "--integration-steps",
        "2", *fast,
    )  # fmt: skip
    assert code == 0
    settings = json.loads((out / "report.json").read_text(encoding="utf-8"))["settings"]
    assert (settings["level_steps"], settings["integration_steps"]) == ([4, 8, 2], 2)
    for options, message in (
        (("--level-steps", "4,8"), "level steps"),  # 2 counts for the 3 default levels
        (("--integration-steps", "-1"), "integration steps"),
        (("--level-steps", "4,8,2", "--refine", "30"), "not both"),
    ):
        out = tmp_path / f"bad{len(options)}"
        code, _, stderr = _run(
            capsys, "register", "--fixed", small_pair_files["ct"], "--moving",
            small_pair_files["mr"], "--out", out, *options, *fast,
        )  # fmt: skip
        assert code != 0 and message in stderr and len(stderr.strip().splitlines()) == 1
        assert not out.exists()


def test_mutual_information_options_reach_the_settings(capsys, small_pair_files, tmp_path):
    for options, expected in (
        (("--similarity", "mi"), ("mi", 0.0)),
        (("--mi-weight", "0.5"), ("mind", 0.5)),
    ):
        out = tmp_path / options[0].strip("-")
        code, _, _ = _run(
            capsys, "register", "--fixed", small_pair_files["ct"], "--moving",
            small_pair_files["mr"], "--out", out, *options, *FAST,
        )  # fmt: skip
        assert code == 0
        settings = json.loads((out / "report.json").read_text(encoding="utf-8"))["settings"]
        assert (settings["similarity"], settings["mi_weight"]) == expected
    out = tmp_path / "bad"
    code, _, stderr = _run(
        capsys, "register", "--fixed", small_pair_files["ct"], "--moving",
        small_pair_files["mr"], "--out", out, "--mi-weight", "-1", *FAST,
    )  # fmt: skip
    assert code != 0 and "MI weight" in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_trust_orientation_turns_the_orientation_search_off():
    from intermodal.cli import _settings, build_parser

    parser = build_parser()
    argv = ["register", "--fixed", "f", "--moving", "m", "--out", "o"]
    assert _settings(parser.parse_args(argv), 3).search_orientation is True
    trusted = parser.parse_args([*argv, "--trust-orientation"])
    assert _settings(trusted, 3).search_orientation is False
    assert _settings(trusted, 2).search_orientation is False
