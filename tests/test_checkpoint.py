"""Model files: safetensors plus a card with a checksum; refusals for every bad file."""

from __future__ import annotations

import json

import pytest
import torch

from intermodal.checkpoint import card_path, load_model, save_model
from intermodal.errors import IntermodalError
from intermodal.networks import RegistrationModel
from intermodal.registration import Settings, register


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    model = RegistrationModel(ndim=3, features=(8, 16, 16))
    path = save_model(model, tmp_path / "model.safetensors", {"preprocessing": {"spacing": 5.0}})
    return model, path


def test_round_trip_gives_identical_outputs(saved_model):
    model, path = saved_model
    loaded, card = load_model(path)
    assert card["network"] == model.config()
    assert card["preprocessing"] == {"spacing": 5.0}
    fixed, moving = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = model.eval()(fixed, moving).displacement
        torch.testing.assert_close(loaded(fixed, moving).displacement, expected)


def test_register_with_a_model_uses_its_card(small_pair, saved_model):
    _, path = saved_model
    result = register(small_pair.ct, small_pair.mr, Settings(model=str(path), refine=5))
    assert result.report["network_spacing"] == [5.0, 5.0, 5.0]  # the card's spacing
    assert result.report["working_grid"]["spacing"] == [2.0, 2.0, 2.0]  # the 3D default
    assert result.report["model_card"]["weights_sha256"]


def test_bad_tampered_weights(saved_model):
    _, path = saved_model
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntermodalError, match="checksum"):
        load_model(path)


def test_bad_truncated_weights(saved_model):
    _, path = saved_model
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IntermodalError, match="checksum"):
        load_model(path)


def test_bad_missing_card(saved_model):
    _, path = saved_model
    card_path(path).unlink()
    with pytest.raises(IntermodalError, match="model card"):
        load_model(path)


def test_bad_newer_card_format(saved_model):
    _, path = saved_model
    card = json.loads(card_path(path).read_text(encoding="utf-8"))
    card["format"] = 99
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(IntermodalError, match="newer"):
        load_model(path)


def test_bad_pickle_is_never_loaded(tmp_path):
    pickle_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, pickle_path)
    with pytest.raises(IntermodalError, match=".safetensors"):
        load_model(pickle_path)


def test_bad_2d_model_on_3d_images(tmp_path, small_pair):
    path = save_model(RegistrationModel(ndim=2, features=(8, 16)), tmp_path / "m2.safetensors", {})
    with pytest.raises(IntermodalError, match="2D"):
        register(small_pair.ct, small_pair.mr, Settings(model=str(path), refine=1))
