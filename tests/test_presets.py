"""Named presets: what each one sets per dimension, that options override them, that they run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.batch import IntermodalMethod
from intermodal.cli import main
from intermodal.data.phantom import LABELS, ORGANS
from intermodal.errors import IntermodalError
from intermodal.metrics import dice_per_label
from intermodal.registration import PRESETS, Settings, preset_settings

ORGAN_LABELS = {name: LABELS[name] for name in ORGANS}


def _mean_dice(reference: sitk.Image, candidate: sitk.Image) -> float:
    return float(np.nanmean(list(dice_per_label(reference, candidate, ORGAN_LABELS).values())))


def test_the_default_preset_is_the_default_settings():
    assert preset_settings("default", 2) == Settings()
    assert preset_settings("default", 3) == Settings()
    assert preset_settings() == Settings()


def test_there_is_one_preset_and_its_overrides_win():
    assert PRESETS == {"default": {2: {}, 3: {}}}
    settings = preset_settings("default", 3, init="affine", device="cpu", spacing=4.0)
    assert (settings.init, settings.device, settings.spacing) == ("affine", "cpu", 4.0)
    assert settings.refine == Settings().refine


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: preset_settings("quick", 3), "unknown preset 'quick'; presets are default"),
        (lambda: preset_settings("default", 4), "presets are for 2D or 3D images, not 4D"),
        (lambda: preset_settings("default", 3, steps=5), r"unknown setting\(s\) \['steps'\]"),
    ],
)
def test_bad_preset_requests(call, message):
    with pytest.raises(IntermodalError, match=message):
        call()


def _register(capsys, pair, out, *options):
    code = main(
        ["register", "--fixed", str(pair["ct"]), "--moving", str(pair["mr"]), "--out", str(out),
         "--device", "cpu", "--quiet", *options]
    )  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.err


def test_cli_preset_then_options(capsys, small_pair_files, tmp_path):
    code, _ = _register(
        capsys, small_pair_files, tmp_path / "mixed", "--preset", "default", "--init", "affine",
        "--refine", "10", "--spacing", "5",
    )  # fmt: skip
    assert code == 0
    settings = json.loads((tmp_path / "mixed" / "report.json").read_text())["settings"]
    assert (settings["init"], settings["refine"], settings["spacing"]) == ("affine", 10, 5.0)
    assert settings["sampling"] == Settings().sampling  # the rest is the preset's


def test_cli_bad_preset_is_a_usage_error(capsys, small_pair_files, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        _register(capsys, small_pair_files, tmp_path / "out", "--preset", "quick")
    assert exit_info.value.code == 2
    assert "invalid choice: 'quick'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_batch_method_takes_settings_per_dimension_and_records_both(small_pair_2d, tmp_path):
    per_dimension = {
        ndim: preset_settings("default", ndim, device="cpu", refine={2: 6, 3: 18}[ndim],
                              spacing={2: None, 3: 4.0}[ndim])
        for ndim in (2, 3)
    }  # fmt: skip
    method = IntermodalMethod(per_dimension)
    recorded = method.settings()
    assert recorded["2d"]["refine"] == 6 and recorded["3d"]["refine"] == 18
    assert recorded["3d"]["spacing"] == 4.0 and recorded["2d"]["spacing"] is None
    assert set(recorded["model_sha256"]) == {"2d", "3d"} and recorded["model_sha256"]["3d"] is None
    # one Settings for both dimensions is recorded flat, as before
    same = IntermodalMethod(Settings(model=None, refine=5)).settings()
    assert same["refine"] == 5 and "2d" not in same
    with pytest.raises(IntermodalError, match=r"settings are missing for \[2\]D images"):
        IntermodalMethod({3: Settings()})


def test_batch_method_registers_each_pair_with_its_dimension_s_settings(
    small_pair_2d, small_pair_files, tmp_path, monkeypatch
):
    import intermodal.registration as registration
    from intermodal.batch import Pair

    sitk.WriteImage(small_pair_2d.ct, str(tmp_path / "ct2.nii.gz"))
    sitk.WriteImage(small_pair_2d.mr, str(tmp_path / "mr2.nii.gz"))
    used: list[Settings] = []

    def spy(fixed, moving, settings, **kwargs):
        used.append(settings)
        raise RuntimeError("stop after choosing the settings")

    monkeypatch.setattr(registration, "register", spy)
    per_dimension = {
        ndim: preset_settings("default", ndim, device="cpu", refine={2: 6, 3: 18}[ndim],
                              spacing={2: None, 3: 4.0}[ndim])
        for ndim in (2, 3)
    }  # fmt: skip
    method = IntermodalMethod(per_dimension)
    pairs = [
        Pair("a", "b", tmp_path / "ct2.nii.gz", tmp_path / "mr2.nii.gz"),
        Pair("c", "d", small_pair_files["ct"], small_pair_files["mr"]),
    ]
    for pair in pairs:
        with pytest.raises(RuntimeError, match="stop after"):
            method(pair, tmp_path / pair.fixed_id, extra_report={})
    assert used == [per_dimension[2], per_dimension[3]]
