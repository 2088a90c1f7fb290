"""`intermodal train` from the command line: config, overrides, errors in one line."""

from __future__ import annotations

import json

import pytest

from intermodal.checkpoint import load_model
from intermodal.cli import main


def test_train_command_writes_a_model(capsys, prepared_manifest, tmp_path):
    config = tmp_path / "train.toml"
    config.write_text(
        f"out = {json.dumps(str(tmp_path / 'run'))}\ndevice = 'cpu'\n"
        f"[data]\nmanifest = {json.dumps(str(prepared_manifest))}\ndim = 2\n"
        "[model]\nfeatures = [8, 16, 16]\n"
        "[train]\nsteps = 6\nbatch_size = 2\nvalidate_every = 3\ncheckpoint_every = 3\n"
    )
    code = main(["train", "--config", str(config), "--set", "loss.smoothness=0.5", "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0 and "model.safetensors" in stdout
    model, card = load_model(tmp_path / "run" / "model.safetensors")
    assert card["training"]["steps"] == 6
    assert card["training"]["config"]["loss"]["smoothness"] == 0.5


def test_bad_unknown_config_key(capsys, tmp_path):
    code = main(["train", "--set", "loss.smothness=0.5", "--quiet"])
    stderr = capsys.readouterr().err
    assert code == 2
    assert "smothness" in stderr and "smoothness" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_print_config_prints_the_overrides_and_trains_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--set", f"out={out}", "--set", "train.lr=0.0003",
                 "--set", "model.instance_norm=true", "--print-config"])  # fmt: skip
    stdout = capsys.readouterr().out
    assert code == 0
    assert "lr = 0.0003" in stdout and "instance_norm = true" in stdout
    assert not out.exists()


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_bad_output_is_refused_in_one_line_before_writing(
    capsys, prepared_manifest, tmp_path, kind
):
    out = tmp_path / "mine"
    if kind == "folder":
        out.mkdir()
        (out / "history.json").write_text("my notes\n")
        expected = "not empty and holds no training run"
    else:
        out.write_text("my notes\n")
        expected = "exists and is not a folder"
    code = main(["train", "--set", f"data.manifest={json.dumps(str(prepared_manifest))}",
                 "--set", "data.dim=2", "--set", f"out={json.dumps(str(out))}",
                 "--set", "train.steps=1", "--set", "device='cpu'", "--quiet"])  # fmt: skip
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1
    assert "error: " in stderr and str(out) in stderr and expected in stderr
    if kind == "folder":
        assert [p.name for p in out.iterdir()] == ["history.json"]
        assert (out / "history.json").read_text() == "my notes\n"
    else:
        assert out.read_text() == "my notes\n"


def test_bad_validation_labels_are_refused_in_one_line_before_writing(
    capsys, prepared_manifest, tmp_path
):
    out = tmp_path / "run"
    code = main(["train", "--set", f"data.manifest={json.dumps(str(prepared_manifest))}",
                 "--set", "data.dim=2", "--set", f"out={json.dumps(str(out))}",
                 "--set", "data.validation_labels=[99]", "--set", "train.steps=1",
                 "--set", "device='cpu'", "--quiet"])  # fmt: skip
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1
    assert "error: " in stderr and "data.validation_labels [99]" in stderr
    assert str(prepared_manifest) in stderr
    assert not out.exists()
