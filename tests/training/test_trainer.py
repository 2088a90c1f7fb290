"""The training loop on a tiny prepared 2D dataset: files, resume, NaN stop, refusals."""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import types
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from intermodal.checkpoint import load_model
from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.training import train
from intermodal.training import trainer as trainer_module
from intermodal.training.state import load_state


class _Stop(Exception):
    """Raised from the progress callback to kill a run mid-way."""


def test_training_lowers_the_loss_and_writes_a_loadable_model(tiny_config):
    config = tiny_config()
    reports = []
    weights = train(config, progress=reports.append)
    assert [r["step"] for r in reports] == list(range(1, 21))
    first = sum(r["loss"] for r in reports[:5]) / 5
    last = sum(r["loss"] for r in reports[-5:]) / 5
    assert last < first - 0.02, (first, last)
    assert all(r["steps_per_s"] > 0 for r in reports)
    assert "validation_dice" in reports[9] and "validation_dice" in reports[19]

    out = weights.parent
    for name in (
        "model.safetensors",
        "model.json",
        "trainer_state.safetensors",
        "trainer_state.json",
        "history.json",
        "config.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*")), "temporary files left behind"
    model, card = load_model(weights)
    assert model.ndim == 2 and card["network"]["features"] == [8, 16, 16]
    assert card["preprocessing"]["spacing"] == [3.75, 3.75]
    assert card["preprocessing"]["shape"] == [64, 64]
    training = card["training"]
    assert training["steps"] == 20 and training["loss"] == "intra" and training["seed"] == 0
    assert training["data"]["subjects"] == 4 and training["data"]["n_validation"] == 2
    assert 0 < training["validation_dice"]["mean"] <= 1
    assert training["config"]["train"]["steps"] == 20
    assert training["wall_time_s"] > 0
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    assert [e["step"] for e in history if "train/loss" in e] == list(range(1, 21))
    with torch.no_grad():
        fixed = torch.rand(1, 1, 64, 64)
        assert model(fixed, fixed).displacement.shape == (1, 2, 64, 64)


def _final_weights(out):
    return load_file(str(out / "model.safetensors"))


def test_resumed_run_equals_an_uninterrupted_one(tiny_config, tmp_path):
    overrides = (
        "train.steps=10",
        "augment.probability=0.5",
        "train.direction=both",
        "loss.symmetric=true",
    )
    full = tiny_config(*overrides, f"out={json.dumps(str(tmp_path / 'full'))}")
    train(full)

    killed = tiny_config(*overrides, f"out={json.dumps(str(tmp_path / 'killed'))}")

    def kill_at_7(report):
        if report["step"] == 7:
            raise _Stop

    with pytest.raises(_Stop):
        train(killed, progress=kill_at_7)
    assert load_state(tmp_path / "killed")[2]["step"] == 5
    reports = []
    train(killed, resume=True, progress=reports.append)
    assert [r["step"] for r in reports] == [6, 7, 8, 9, 10]

    expected, got = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "killed")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    history = json.loads((tmp_path / "killed" / "history.json").read_text(encoding="utf-8"))
    assert [e["step"] for e in history if "train/loss" in e] == list(range(1, 11))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, monkeypatch):
    config = tiny_config()
    calls = {"n": 0}
    real_loss = trainer_module.training_loss

    def loss_turning_nan(*args, **kwargs):
        loss, terms = real_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 8:
            loss = loss * float("nan")
        return loss, terms

    monkeypatch.setattr(trainer_module, "training_loss", loss_turning_nan)
    with pytest.raises(IntermodalError, match=r"not finite at step 8.*step 5"):
        train(config)
    out = trainer_module.Path(config.out)
    model, card = load_model(out / "model.safetensors")
    assert card["training"]["steps"] == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert load_state(out)[2]["step"] == 5


@pytest.mark.parametrize(
    "overrides",
    [
        ("loss.name=mi", "loss.mi_samples=1000"),
        ("loss.name=mind", "loss.symmetric=true"),
        ("loss.name=ngf", "train.direction=ct_to_mr"),
        ("loss.dice=0.5", "augment.probability=1.0"),
        ("loss.volume_penalty=0.5", "loss.symmetric=true"),
    ],
)
def test_every_loss_trains(tiny_config, overrides):
    config = tiny_config(
        "train.steps=3", "train.validate_every=0", "train.checkpoint_every=0", *overrides
    )
    reports = []
    weights = train(config, progress=reports.append)
    assert len(reports) == 3 and all(math.isfinite(r["loss"]) for r in reports)
    assert load_model(weights)[1]["training"]["loss"] == config.loss.name


def test_bad_output_folder_and_resume(tiny_config):
    config = tiny_config("train.steps=2")
    with pytest.raises(IntermodalError, match="nothing to resume"):
        train(config, resume=True)
    train(config)
    with pytest.raises(OutputExistsError, match="already holds a training run"):
        train(config)
    train(config, overwrite=True)
    other_network = tiny_config("train.steps=4", "model.features=[8, 8, 8]")
    with pytest.raises(IntermodalError, match="network"):
        train(other_network, resume=True)


@pytest.mark.parametrize(
    "files",
    [
        {"history.json": "my notes\n", "config.json": '{"mine": true}\n'},  # the trainer's names
        {"report.json": "{}\n", "warped.nii.gz": "image"},  # a `register` output folder
        {"notes/todo.txt": "keep\n"},
    ],
    ids=["own-history-and-config", "register-output", "subfolder"],
)
def test_bad_output_folder_with_other_files_is_refused_before_writing(tiny_config, files):
    config = tiny_config("train.steps=1")
    out = Path(config.out)
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match="not empty and holds no training run") as err:
        train(config)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert all((out / name).read_text() == text for name, text in files.items())
    with pytest.raises(IntermodalError, match="nothing to resume"):
        train(config, resume=True)
    train(config, overwrite=True)
    assert (out / "model.safetensors").is_file()


def test_output_folder_with_hidden_files_only_is_used(tiny_config):
    config = tiny_config("train.steps=1")
    out = Path(config.out)
    out.mkdir()
    (out / ".DS_Store").write_text("finder")
    train(config)
    assert (out / "model.safetensors").is_file() and (out / ".DS_Store").read_text() == "finder"


def _manifest_variant(prepared_manifest, folder, **changes):
    """A copy of the tiny manifest (paths made absolute) with some entries replaced."""
    raw = json.loads(prepared_manifest.read_text(encoding="utf-8"))
    root = prepared_manifest.parent
    for subject in raw["subjects"]:
        for key in ("ct", "mr", "labels"):
            if subject.get(key):
                subject[key] = str(root / subject[key])
    for key, value in changes.items():
        if key == "unlabeled":
            for subject in raw["subjects"]:
                if subject["id"] in value:
                    del subject["labels"]
        else:
            raw[key] = value
    path = folder / "variant.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


class _EventWriter:
    """A stand-in for TensorBoard's SummaryWriter that leaves one event file per run."""

    runs = 0

    def __init__(self, log_dir):
        _EventWriter.runs += 1
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        (Path(log_dir) / f"events.out.tfevents.run{_EventWriter.runs}").write_text("events")

    def add_scalar(self, name, value, step):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def test_overwrite_leaves_no_file_of_the_earlier_run(
    tiny_config, prepared_manifest, tmp_path, monkeypatch
):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _EventWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _EventWriter.runs = 0
    earlier = tiny_config("train.steps=2", "train.validate_every=1")
    out = Path(earlier.out)
    train(earlier)
    assert (out / "best.safetensors").is_file() and (out / "best.json").is_file()
    (out / "notes.txt").write_text("mine\n")
    (out / "tensorboard" / "layout.txt").write_text("mine\n")
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # refused configurations leave the earlier run whole
    with pytest.raises(IntermodalError, match="data.validation_labels"):
        train(tiny_config("data.validation_labels=[99]"), overwrite=True)
    with pytest.raises(IntermodalError, match="multiple of 128"):
        train(
            tiny_config("model.features=[4, 4, 4, 4, 4, 4, 4, 4]", "model.output_stride=1"),
            overwrite=True,
        )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    # a run without validation writes no best.*: the earlier run's must not stay beside it
    no_validation = _manifest_variant(prepared_manifest, tmp_path, validation=[])
    later = tiny_config(
        "train.steps=1",
        "model.features=[8, 8, 8]",
        f"data.manifest={json.dumps(str(no_validation))}",
    )
    train(later, overwrite=True)
    assert not (out / "best.safetensors").exists() and not (out / "best.json").exists()
    _, card = load_model(out / "model.safetensors")
    assert card["network"]["features"] == [8, 8, 8] and card["training"]["steps"] == 1
    assert json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))["step"] == 1
    assert [e["step"] for e in json.loads((out / "history.json").read_text())] == [1]
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 1
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == [
        "events.out.tfevents.run2",
        "layout.txt",
    ]
    assert (out / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize(
    ("overrides", "changes", "expected"),
    [
        (["data.validation_labels=[99]"], {}, r"data.validation_labels \[99\] names label 99,"),
        (["data.validation_labels=[2, 98, 99]"], {}, r"names labels 98, 99, .*hold \[1, 2, 3"),
        (["data.validation_labels=[]"], {}, r"data.validation_labels must be a non-empty list"),
        ([], {"unlabeled": ["s05"]}, r"subject 's05' of the 'validation' split has no labels"),
        (["train.best_metric=similarity"], {}, r"train.best_metric must be 'dice' with"),
    ],
    ids=["absent-label", "some-absent", "empty", "unlabeled", "similarity"],
)  # fmt: skip
def test_bad_validation_is_refused_before_writing(
    tiny_config, prepared_manifest, tmp_path, overrides, changes, expected
):
    """Each of these used to switch validation (and best.*) off without a word."""
    if changes:
        variant = _manifest_variant(prepared_manifest, tmp_path, **changes)
        overrides = [*overrides, f"data.manifest={json.dumps(str(variant))}"]
    with pytest.raises(IntermodalError, match=expected) as err:
        train(tiny_config("train.steps=1", *overrides))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_validation_split_of_one_subject_trains_without_validation_and_says_so(
    tiny_config, prepared_manifest, tmp_path, caplog
):
    # intermodal synth gives 3 to 9 subjects one validation subject: a warning, not an error
    variant = _manifest_variant(
        prepared_manifest, tmp_path,
        training=["s00", "s01", "s02", "s03", "s04"], validation=["s05"],
    )  # fmt: skip
    config = tiny_config("train.steps=1", f"data.manifest={json.dumps(str(variant))}")
    with caplog.at_level("WARNING", logger="intermodal.training.trainer"):
        train(config)
    assert "'validation' split has 1 subject" in caplog.text and "no best.*" in caplog.text
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "best.safetensors").exists()


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("overwrite", [False, True])
def test_bad_output_that_is_a_file(tiny_config, tmp_path, resume, overwrite):
    path = tmp_path / "run"  # the config's out
    path.write_text("not a folder\n")
    config = tiny_config("train.steps=1")
    with pytest.raises(IntermodalError, match="exists and is not a folder") as err:
        train(config, resume=resume, overwrite=overwrite)
    assert str(path) in str(err.value)
    assert path.read_text() == "not a folder\n"


def test_bad_output_under_a_file(tiny_config, tmp_path):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    config = tiny_config("train.steps=1", f"out={json.dumps(str(out))}")
    with pytest.raises(IntermodalError, match="is not a folder") as err:
        train(config)
    assert str(out) in str(err.value) and str(tmp_path / "file") in str(err.value)


def test_bad_prepared_grid_names_the_subject(prepared_manifest, tiny_config, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared_manifest.parent, data)
    small = sitk.Image([32, 32], sitk.sitkFloat32)
    sitk.WriteImage(small, str(data / "s01" / "mr.nii.gz"))
    config = tiny_config(f"data.manifest={json.dumps(str(data / 'manifest.json'))}")
    with pytest.raises(IntermodalError, match=r"subject 's01': mr .* shape \(32, 32\)"):
        train(config)


def test_bad_grid_not_a_multiple_of_the_network(tiny_config):
    config = tiny_config("model.features=[4, 4, 4, 4, 4, 4, 4, 4]", "model.output_stride=1")
    with pytest.raises(IntermodalError, match="multiple of 128"):
        train(config)


def test_bad_missing_manifest(tiny_config):
    with pytest.raises(IntermodalError, match="data.manifest"):
        train(tiny_config("data.manifest=''"))


def test_tensorboard_is_used_when_installed_and_skipped_with_a_note_when_not(
    tiny_config, monkeypatch, caplog
):
    scalars = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, name, value, step):
            scalars.append((name, step))

        def flush(self):
            pass

        def close(self):
            pass

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    train(tiny_config("train.steps=2", "train.validate_every=2"))
    assert ("train/loss", 1) in scalars and ("validation/dice", 2) in scalars

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with caplog.at_level(logging.INFO, logger="intermodal.training.trainer"):
        train(tiny_config("train.steps=1"), overwrite=True)
    assert "tensorboard is not installed" in caplog.text


def test_grad_clip_bounds_every_applied_gradient(tiny_config):
    """train.grad_clip scales a larger gradient down to the bound before the optimiser uses it."""
    bound = 1e-3
    config = tiny_config(
        "train.steps=4",
        "train.validate_every=0",
        "train.checkpoint_every=0",
        f"train.grad_clip={bound}",
    )
    applied = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        applied.append(
            float(
                torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None])
                )
            )
        )

    hook = register_optimizer_step_pre_hook(record)
    try:
        reports = []
        train(config, progress=reports.append)
    finally:
        hook.remove()
    assert len(applied) == 4
    assert all(norm <= bound * 1.0001 for norm in applied), applied
    # the report keeps the norm before clipping: here every step was cut
    assert all(r["grad_norm"] > bound for r in reports), [r["grad_norm"] for r in reports]


def test_bad_grad_clip_is_refused(tiny_config):
    with pytest.raises(IntermodalError, match="train.grad_clip must be a number >= 0"):
        tiny_config("train.grad_clip=-1")
