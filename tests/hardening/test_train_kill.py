"""``intermodal train`` killed with SIGKILL, then resumed, ends where an uninterrupted run ends.

The in-process variant (an exception raised from the progress callback) is in
``tests/training/test_trainer.py``; here the process itself dies at an arbitrary moment after
its first checkpoint, as under the OOM killer or a pre-empted job, so nothing in the trainer
can run on the way out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from intermodal.checkpoint import load_model
from intermodal.data.prepare import prepare_dataset
from intermodal.data.synth import write_dataset
from intermodal.training.state import STATE_FILE, load_state

STEPS = 40
CHECKPOINT_EVERY = 2
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Six synthetic 2D subjects, affinely pre-aligned onto 64 x 64 pixels of 3.75 mm."""
    folder = tmp_path_factory.mktemp("kill")
    raw = write_dataset(folder / "raw", 6, dim=2)
    return prepare_dataset(raw, folder / "prepared", spacing=3.75, deformable="none").manifest


def _config(folder: Path, manifest: Path) -> Path:
    config = folder / "train.toml"
    config.write_text(
        f"out = {json.dumps(str(folder / 'run'))}\ndevice = 'cpu'\n"
        f"[data]\nmanifest = {json.dumps(str(manifest))}\ndim = 2\n"
        "[model]\nfeatures = [8, 16, 16]\nintegration_steps = 4\n"
        "[augment]\nprobability = 0.5\n"
        f"[train]\nsteps = {STEPS}\nbatch_size = 2\nlr = 3e-3\nseed = 3\n"
        f"validate_every = 10\ncheckpoint_every = {CHECKPOINT_EVERY}\nlog_every = 1\n"
    )
    return config


def _command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "intermodal", "train", "--config", str(config), "--quiet", *extra]


def _environment() -> dict[str, str]:
    # One thread in every run, so that the runs compared do the same arithmetic.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(config: Path, *extra: str) -> None:
    done = subprocess.run(
        _command(config, *extra), env=_environment(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def _kill_after_first_checkpoint(config: Path, run: Path) -> None:
    """Start training, SIGKILL it as soon as a trainer state exists."""
    process = subprocess.Popen(
        _command(config), env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 90
        while not (run / STATE_FILE).exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 90 s"
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _check_files_whole(run: Path) -> None:
    """Every safetensors file in the run loads in full; the model matches its card."""
    names = sorted(p.name for p in run.glob("*.safetensors"))
    assert STATE_FILE in names
    for name in names:
        load_file(str(run / name))
    if (run / "model.safetensors").is_file():
        load_model(run / "model.safetensors")  # checks the card's SHA-256 of the weights


def test_killed_training_resumes_to_the_uninterrupted_result(prepared, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir()
    killed.mkdir()
    _run(_config(full, prepared))

    config = _config(killed, prepared)
    _kill_after_first_checkpoint(config, killed / "run")
    _check_files_whole(killed / "run")
    step_at_kill = load_state(killed / "run")[2]["step"]
    assert step_at_kill % CHECKPOINT_EVERY == 0 and 0 < step_at_kill < STEPS, step_at_kill

    _run(config, "--resume")
    _check_files_whole(killed / "run")
    assert load_state(killed / "run")[2]["step"] == STEPS
    _, card = load_model(killed / "run" / "model.safetensors")
    assert card["training"]["steps"] == STEPS
    history = json.loads((killed / "run" / "history.json").read_text(encoding="utf-8"))
    assert [e["step"] for e in history if "train/loss" in e] == list(range(1, STEPS + 1))

    expected = load_file(str(full / "run" / "model.safetensors"))
    got = load_file(str(killed / "run" / "model.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
