"""Training on generated pairs: the loss goes down, best and last checkpoints, the card,
resume, worker processes, the command line and the bundled configurations."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from intermodal.checkpoint import load_model
from intermodal.cli import main
from intermodal.errors import IntermodalError
from intermodal.training import load_config, train
from intermodal.training.state import load_state

REPO = Path(__file__).resolve().parents[2]


class _Stop(Exception):
    """Raised from the progress callback to kill a run mid-way."""


TINY = (
    "data.source=generator",
    "data.dim=2",
    "generator.shape=[32, 32]",
    "generator.spacing=7.0",
    "generator.validation_pairs=6",
    "generator.workers=0",
    "model.features=[8, 16, 16]",
    "model.integration_steps=4",
    "train.steps=24",
    "train.batch_size=2",
    "train.lr=5e-3",
    "train.validate_every=8",
    "train.checkpoint_every=4",
    "train.log_every=1",
    "train.threads=1",
    "device=cpu",
)
"""A tiny 2D network on 32 x 32 generated pairs, generated in the training process."""


@pytest.fixture
def generated_config(tmp_path):
    """:data:`TINY` with an output folder and overrides."""

    def make(*overrides: str):
        return load_config(None, [*TINY, f"out={json.dumps(str(tmp_path / 'run'))}", *overrides])

    return make


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of :data:`TINY`, shared by the checks on its files."""
    out = tmp_path_factory.mktemp("generated") / "run"
    config = load_config(None, [*TINY, f"out={json.dumps(str(out))}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reports: list[dict] = []
        train(config, progress=reports.append, command="intermodal train --config x.toml")
    finally:
        torch.set_num_threads(threads)
    return out, reports


def test_training_on_generated_pairs_lowers_the_validation_loss(trained):
    out, reports = trained
    assert [r["step"] for r in reports] == list(range(1, 25))
    card = load_model(out / "model.safetensors")[1]["training"]
    identity = card["validation_identity"]
    final = card["validation_dice"]
    # the fixed validation pairs: the intra-modality loss falls below that of no registration
    assert final["similarity"] < identity["similarity"] - 0.01, (final, identity)
    assert final["step"] == 24
    assert set(final["per_source"]) <= {"shapes", "pelvis"}
    assert sum(s["pairs"] for s in final["per_source"].values()) == 6
    assert all(0 <= s["mean"] <= 1 for s in final["per_source"].values())
    assert all("validation_dice" in reports[k] for k in (7, 15, 23))


def test_best_and_last_checkpoints_are_written(trained):
    out, _ = trained
    for name in ("model.safetensors", "model.json", "best.safetensors", "best.json"):
        assert (out / name).is_file(), name
    _, last = load_model(out / "model.safetensors")
    _, best = load_model(out / "best.safetensors")
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    dice = {e["step"]: e["validation/dice"] for e in history if "validation/dice" in e}
    assert sorted(dice) == [8, 16, 24]
    best_step = max(dice, key=lambda step: (dice[step], -step))
    assert best["training"]["best"]["step"] == best_step
    assert best["training"]["best"]["mean"] == pytest.approx(dice[best_step])
    assert best["training"]["steps"] == best_step
    assert last["training"]["steps"] == 24
    assert last["training"]["best"]["step"] == best_step
    assert load_state(out)[2]["best"]["step"] == best_step


def test_card_records_the_generator_speed_machine_and_command(trained):
    out, reports = trained
    card = load_model(out / "model.safetensors")[1]
    training = card["training"]
    assert training["data"]["source"] == "generator"
    assert training["data"]["seed"] == 0 and training["data"]["validation_seed"] == 1
    assert training["data"]["settings"]["shape"] == [32, 32]
    assert training["steps_per_s"] > 0 and training["wall_time_s"] > 0
    assert training["generation_s_per_pair"] > 0
    assert 0 <= training["step_s"]["waiting_for_data"] <= training["step_s"]["mean"]
    assert training["step_s"]["cpu"] > 0
    assert training["machine"]["cpus"] >= 1 and training["machine"]["torch"]
    assert training["command"] == "intermodal train --config x.toml"
    assert card["preprocessing"]["spacing"] == [7.0, 7.0]
    assert card["preprocessing"]["shape"] == [32, 32]
    assert all(r["generation_s"] > 0 and r["wait_s"] >= 0 for r in reports)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def test_resumed_generated_run_equals_an_uninterrupted_one(generated_config, tmp_path):
    overrides = ("train.steps=10", "train.validate_every=5", "generator.validation_pairs=2")
    full = generated_config(*overrides, f"out={json.dumps(str(tmp_path / 'full'))}")
    train(full)
    killed = generated_config(*overrides, f"out={json.dumps(str(tmp_path / 'killed'))}")

    def kill_at_7(report):
        if report["step"] == 7:
            raise _Stop

    with pytest.raises(_Stop):
        train(killed, progress=kill_at_7)
    assert load_state(tmp_path / "killed")[2]["step"] == 4
    reports: list[dict] = []
    train(killed, resume=True, progress=reports.append)
    assert [r["step"] for r in reports] == [5, 6, 7, 8, 9, 10]
    expected, got = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    best_full = load_model(tmp_path / "full" / "best.safetensors")[1]["training"]["best"]
    best_killed = load_model(tmp_path / "killed" / "best.safetensors")[1]["training"]["best"]
    assert best_full == best_killed


def test_worker_processes_feed_the_same_pairs(generated_config, tmp_path):
    """Generation in a worker process gives the run that generation in place gives."""
    overrides = ("train.steps=3", "train.validate_every=0", "generator.validation_pairs=0")
    here = generated_config(*overrides, f"out={json.dumps(str(tmp_path / 'here'))}")
    worker = generated_config(
        *overrides, "generator.workers=1", f"out={json.dumps(str(tmp_path / 'worker'))}"
    )
    train(here)
    train(worker)
    expected, got = _weights(tmp_path / "here"), _weights(tmp_path / "worker")
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert not (tmp_path / "here" / "best.safetensors").exists(), "no validation, no best"


def test_dice_term_is_an_option_and_best_by_similarity(generated_config):
    config = generated_config(
        "train.steps=4", "train.validate_every=2", "generator.validation_pairs=2",
        "loss.dice=0.5", "train.best_metric=similarity",
    )  # fmt: skip
    reports: list[dict] = []
    weights = train(config, progress=reports.append)
    assert all("dice" in r for r in reports)
    best = load_model(weights.parent / "best.safetensors")[1]["training"]["best"]
    assert best["metric"] == "similarity" and best["step"] in (2, 4)


def test_generator_run_on_a_3d_grid(generated_config):
    config = generated_config(
        "data.dim=3", "generator.shape=[16, 16, 16]", "generator.spacing=10.0",
        "train.steps=2", "train.validate_every=0", "generator.validation_pairs=1",
    )  # fmt: skip
    weights = train(config)
    model, card = load_model(weights)
    assert model.ndim == 3 and card["preprocessing"]["shape"] == [16, 16, 16]


def test_train_command_with_a_generator_config(capsys, tmp_path):
    config = tmp_path / "train.toml"
    config.write_text(
        f"out = {json.dumps(str(tmp_path / 'run'))}\ndevice = 'cpu'\n"
        "[data]\nsource = 'generator'\ndim = 2\n"
        "[model]\nfeatures = [8, 16]\n"
        "[generator]\nshape = [16, 16]\nspacing = 10.0\nworkers = 0\nvalidation_pairs = 1\n"
        "[train]\nsteps = 2\nbatch_size = 1\nvalidate_every = 2\ncheckpoint_every = 2\n"
    )
    code = main(["train", "--config", str(config), "--set", "generator.seed=3", "--quiet"])
    assert code == 0, capsys.readouterr().err
    card = load_model(tmp_path / "run" / "model.safetensors")[1]["training"]
    assert card["data"]["seed"] == 3
    assert card["command"].startswith("intermodal train --config")
    assert "generator.seed=3" in card["command"]


def test_bad_generator_key_from_the_command_line(capsys):
    code = main(["train", "--set", "data.source=generator", "--set", "generator.colour=1"])
    stderr = capsys.readouterr().err
    assert code == 2 and "generator.colour" in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["general2d", "general3d"])
def test_bundled_generator_configs_are_valid(name):
    config = load_config(REPO / "configs" / f"{name}.toml")
    assert config.data.source == "generator"
    assert config.loss.name == "intra" and config.loss.dice == 0
    assert config.train.direction == "both"
    assert len(config.generator.shape) == config.data.dim
    if config.data.dim == 3:
        assert max(config.generator.shape) <= 64
        assert 4 <= config.generator.spacing <= 6
        assert config.model.output_stride >= 2


def test_manifest_source_still_needs_a_manifest():
    with pytest.raises(IntermodalError, match="data.manifest"):
        train(load_config(None, ["device=cpu"]))


def test_threads_follow_the_setting_and_are_restored(generated_config):
    before = torch.get_num_threads()
    config = generated_config("train.steps=1", "generator.validation_pairs=0", "train.threads=0")
    weights = train(config)
    machine = load_model(weights)[1]["training"]["machine"]
    assert machine["torch_threads"] == max(1, (os.cpu_count() or 1) - 0)
    assert torch.get_num_threads() == before


def test_bfloat16_autocast_path_trains(generated_config, monkeypatch):
    """The mixed-precision path (CUDA only in use), run under CPU autocast."""
    from intermodal.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "_use_amp", lambda config, device: True)
    config = generated_config("train.steps=2", "train.validate_every=2")
    reports: list[dict] = []
    weights = train(config, progress=reports.append)
    assert all(math.isfinite(r["loss"]) for r in reports)
    training = load_model(weights)[1]["training"]
    assert training["amp"] == "bfloat16"
    assert 0 <= training["validation_dice"]["mean"] <= 1
    assert all(p.dtype == torch.float32 for p in load_model(weights)[0].parameters())


def test_held_out_source_is_scored_apart_and_never_picks_the_best(generated_config):
    config = generated_config(
        "train.steps=2", "train.validate_every=2", "generator.pelvis_weight=0",
        "generator.validation_pairs=4", 'generator.validation_sources=["shapes", "pelvis"]',
    )  # fmt: skip
    weights = train(config)
    validation = load_model(weights)[1]["training"]["validation_dice"]
    assert set(validation["per_source"]) == {"shapes", "pelvis"}
    assert validation["mean"] == validation["per_source"]["shapes"]["mean"]
    assert validation["held_out_dice"] == validation["per_source"]["pelvis"]["mean"]
    history = json.loads((weights.parent / "history.json").read_text(encoding="utf-8"))
    assert any("validation/held_out_dice" in e for e in history)


def _mean_dice(warped: torch.Tensor, fixed: torch.Tensor) -> float:
    values = [v for v in torch.cat([warped.unique(), fixed.unique()]).unique().tolist() if v]
    scores = [
        2
        * float(((warped == v) & (fixed == v)).sum())
        / float((warped == v).sum() + (fixed == v).sum())
        for v in values
    ]
    return sum(scores) / len(scores)


@pytest.mark.parametrize("direction", ["mr_to_ct", "ct_to_mr"])
def test_a_tiny_network_overfits_one_generated_pair(direction):
    """The bundled recipe's loss (intra, scales [1, 2, 4]) and contrast (t2), on one pair seen
    as the network sees it in either direction: the labels' Dice rises well above no motion.
    Were the loss's field to warp the wrong subject, or the generator's labels not to follow
    its images, the loss would not lead to the labels' overlap."""
    from intermodal.data.generator import GeneratedPairs, GeneratorConfig, collate_pairs
    from intermodal.networks import RegistrationModel
    from intermodal.spatial import warp
    from intermodal.training.config import LossConfig
    from intermodal.training.objectives import training_loss
    from intermodal.training.pairs import generated_batch

    config = GeneratorConfig(shape=[32, 32], spacing=8.0, mr_contrast="t2", shapes_weight=1.0)
    config.pelvis_weight = config.ct_weight = 0.0
    pairs = GeneratedPairs(config, seed=3, length=1, direction=direction)
    batch = generated_batch(collate_pairs([pairs[0]]), "cpu")
    torch.manual_seed(0)
    model = RegistrationModel(2, features=(8, 16, 16), integration_steps=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_config = LossConfig(name="intra", scales=[1, 2, 4], lncc_window=5)
    before = _mean_dice(batch.moving_labels, batch.fixed_labels)
    for _ in range(60):
        output = model(batch.network_fixed, batch.network_moving)
        loss, _ = training_loss(loss_config, output, batch, integration_steps=5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        displacement = model(batch.network_fixed, batch.network_moving).displacement
    after = _mean_dice(warp(batch.moving_labels, displacement, mode="nearest"), batch.fixed_labels)
    assert after > before + 0.1, (before, after)
    reverse = warp(batch.moving_labels, -displacement, mode="nearest")
    assert _mean_dice(reverse, batch.fixed_labels) < after


def test_card_scaling_is_enforced_by_register(trained):
    """The card records the intensity scaling in the form register reads, so register refuses
    a HU window that contradicts it (the generator's cards once wrote a form it ignored)."""
    import numpy as np
    import SimpleITK as sitk

    from intermodal.registration import Settings, register

    out, _ = trained
    card = load_model(out / "model.safetensors")[1]
    assert card["preprocessing"]["normalisation"]["ct"] == "HU window -1000..1000"
    ct = sitk.GetImageFromArray(np.full((32, 32), -1000.0, np.float32))
    ct[8:24, 8:24] = 40.0
    mr = sitk.GetImageFromArray(np.full((32, 32), 5.0, np.float32))
    mr[10:26, 8:24] = 300.0
    settings = Settings(
        model=str(out / "model.safetensors"), refine=0, device="cpu", hu_window=(-200.0, 300.0)
    )
    with pytest.raises(IntermodalError, match="HU window"):
        register(ct, mr, settings)
