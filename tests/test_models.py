"""The bundled models: where they are, what their cards say, and that they help."""

from __future__ import annotations

import json

import pytest

from intermodal.checkpoint import load_model
from intermodal.errors import IntermodalError
from intermodal.models import BUNDLED, bundled_path, resolve_model


@pytest.mark.parametrize("spec", [None, "none", "None"])
def test_none_means_no_network(spec):
    assert resolve_model(spec, 3) is None


@pytest.mark.parametrize(("ndim", "name"), [(3, "general3d"), (2, "general2d")])
def test_auto_picks_the_model_for_the_dimension(ndim, name):
    path = resolve_model("auto", ndim)
    assert path is not None and path.endswith(f"{name}.safetensors")
    assert resolve_model(name, ndim) == path


def test_the_default_is_no_network_in_2d_and_3d():
    """No bundled model helped the whole registration on the realistic sets (DEFAULT_MODELS)."""
    from intermodal.models import default_models_in_words
    from intermodal.registration import Settings

    assert Settings().model == "default"
    assert resolve_model("default", 2) is None
    assert resolve_model("default", 3) is None
    assert default_models_in_words() == "none"


def test_register_loads_a_bundled_model_on_request_and_the_guard_judges_it():
    import numpy as np
    import SimpleITK as sitk

    from intermodal.registration import Settings, register

    square = np.zeros((48, 48), np.float32)
    square[12:36, 14:34] = 1000.0
    fixed = sitk.GetImageFromArray(square)
    moving = sitk.GetImageFromArray(np.roll(square, 3, axis=1) * 0.5 + 100.0)
    result = register(fixed, moving, Settings(model="auto", refine=4))
    assert result.report["model_path"].endswith("general2d.safetensors")
    assert "kept" in result.report["stages"]["network"]
    default = register(fixed, moving, Settings(refine=4))
    assert default.report["model_path"] is None


def test_a_path_is_kept_as_given(tmp_path):
    path = str(tmp_path / "mine.safetensors")
    assert resolve_model(path, 3) == path


def test_unknown_bundled_name_lists_the_known_ones():
    with pytest.raises(IntermodalError, match="general3d"):
        bundled_path("brain3d")


def test_auto_for_an_unsupported_dimension():
    with pytest.raises(IntermodalError, match="4D"):
        resolve_model("auto", 4)


def test_missing_bundled_files_say_how_to_retrain(monkeypatch, tmp_path):
    import intermodal.models as models

    monkeypatch.setattr(models.resources, "files", lambda _: tmp_path)
    with pytest.raises(IntermodalError, match="make model-3d"):
        bundled_path("general3d")


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_card_records_how_it_was_trained(name):
    path = bundled_path(name)
    model, card = load_model(path)  # checks the weights' SHA-256 against the card
    assert model.ndim == BUNDLED[name] == card["network"]["ndim"]
    training = card["training"]
    assert training["loss"] == "intra"
    assert training["config"]["loss"]["dice"] == 0  # supervised by intensities only
    assert training["direction"] == "both"
    assert 0 < training["steps"] <= training["config"]["train"]["steps"]
    assert training["wall_time_s"] > 0 and training["steps_per_s"] > 0
    assert training["machine"]["platform"]
    data = training["data"]
    assert data["source"] == "generator" and data["seed"] != data["validation_seed"]
    assert data["settings"]["pelvis_weight"] == 0  # the pelvis stays an unseen anatomy
    for scores in (training["validation_dice"], training["validation_identity"]):
        assert 0 < scores["mean"] <= 1 and 0 < scores["held_out_dice"] <= 1
    provenance = card["provenance"]
    assert provenance["command"].startswith(f"make model-{BUNDLED[name]}d")
    assert card["preprocessing"]["spacing"] and card["preprocessing"]["shape"]
    # no machine-specific absolute paths in a shipped card
    assert "/work/" not in json.dumps(card)


def test_bundled_2d_model_beats_no_motion_on_generated_pairs():
    """Recomputed here, not read from the card: on 8 validation pairs of the 2D model's own
    generator (random shapes, validation seed), the network's field lifts the labels' Dice
    over no motion."""
    import torch

    from intermodal.data.generator import GeneratedPairs, GeneratorConfig, collate_pairs
    from intermodal.training.pairs import generated_batch
    from intermodal.training.trainer import score_batches

    model, card = load_model(bundled_path("general2d"))
    data = card["training"]["data"]
    fields = GeneratorConfig.__dataclass_fields__
    config = GeneratorConfig(**{k: v for k, v in data["settings"].items() if k in fields})
    pairs = GeneratedPairs(config, seed=data["validation_seed"], length=8, sources=["shapes"])
    batch = generated_batch(collate_pairs([pairs[k] for k in range(8)]), "cpu")
    identity = type(model).from_config(model.config())
    with torch.no_grad():
        identity.unet.head.weight.zero_()
        identity.unet.head.bias.zero_()
    before = score_batches(identity, [batch])["mean"]
    after = score_batches(model, [batch])["mean"]
    assert after > before + 0.01, (before, after)


def _pelvis_slices():
    from intermodal.data.synth import SEED_STRIDE, generate_subject

    fixed = generate_subject(5 * SEED_STRIDE, dim=2, shape=(64, 64), spacing=5.0)
    moving = generate_subject(5 * SEED_STRIDE + 1, dim=2, shape=(64, 64), spacing=5.0)
    return fixed, moving


def test_bad_model_of_another_dimension_is_refused():
    from intermodal.registration import Settings, register

    fixed, moving = _pelvis_slices()
    settings = Settings(model="general3d", refine=0, device="cpu")
    with pytest.raises(IntermodalError, match="model is for 3D images, the inputs are 2D"):
        register(fixed.ct, moving.mr, settings)


def test_bad_intensity_scaling_that_contradicts_the_card_is_refused():
    from intermodal.registration import Settings, register

    fixed, moving = _pelvis_slices()
    settings = Settings(model="general2d", refine=0, device="cpu", hu_window=(-200.0, 300.0))
    with pytest.raises(IntermodalError, match="contradicts"):
        register(fixed.ct, moving.mr, settings)
