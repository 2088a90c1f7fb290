"""Model files are refused in one clear line whenever they are not exactly what was saved.

Weights load only from safetensors and only when their SHA-256 matches the card; pickles are
never unpickled (a pickle that would leave a marker file when unpickled proves it).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from intermodal.checkpoint import CARD_FORMAT, card_path, load_model, save_model
from intermodal.errors import IntermodalError
from intermodal.networks import RegistrationModel
from intermodal.registration import Settings, register


def tiny_model(ndim: int = 2, features: tuple[int, ...] = (4, 8), seed: int = 0):
    torch.manual_seed(seed)
    return RegistrationModel(ndim=ndim, features=features)


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_model(tiny_model(), tmp_path / "model.safetensors", {"training": {"steps": 1}})


def refused(path: Path, *words: str) -> str:
    with pytest.raises(IntermodalError) as err:
        load_model(path)
    message = str(err.value)
    assert "\n" not in message, message
    assert path.name in message or card_path(path).name in message, message
    for word in words:
        assert word in message, message
    return message


def rewrite_card(path: Path, **changes) -> None:
    card = json.loads(card_path(path).read_text(encoding="utf-8"))
    card.update(changes)
    card_path(path).write_text(json.dumps(card))


def test_saved_model_loads_with_identical_weights(saved):
    model, card = load_model(saved)
    assert card["format"] == CARD_FORMAT
    for name, tensor in tiny_model().state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_one_changed_byte_anywhere_is_refused(saved, where):
    data = bytearray(saved.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    saved.write_bytes(bytes(data))
    refused(saved, "checksum")


@pytest.mark.parametrize("keep", [0, 8, 0.5])
def test_truncated_weights_are_refused(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    refused(saved, "checksum")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"format": CARD_FORMAT + 1}, ("newer", "upgrade")),
        ({"format": "2"}, ("format must be an integer",)),
        ({"weights_sha256": "abc"}, ("SHA-256",)),
        ({"network": "unet"}, ("'network' must be an object",)),
        ({"training": ["not", "an", "object"]}, ("'training' must be an object",)),
    ],
)
def test_bad_card_fields_are_refused(saved, changes, words):
    rewrite_card(saved, **changes)
    refused(saved, *words)


def test_card_that_is_not_json_is_refused(saved):
    card_path(saved).write_bytes(b"\xff\xfe{not json")
    refused(saved, "not a readable JSON model card")


def test_weights_of_another_network_are_refused_even_with_a_matching_checksum(saved, tmp_path):
    # The card describes features (4, 8); the weights are a (4, 8, 8) network. Updating the
    # checksum makes the file "intact", but the weights still do not fit the card.
    other = save_model(tiny_model(features=(4, 8, 8)), tmp_path / "other.safetensors", {})
    saved.write_bytes(other.read_bytes())
    rewrite_card(saved, weights_sha256=hashlib.sha256(saved.read_bytes()).hexdigest())
    refused(saved, "do not fit")


def test_weights_swapped_without_their_card_are_refused(saved, tmp_path):
    other = save_model(tiny_model(seed=1), tmp_path / "other.safetensors", {})
    saved.write_bytes(other.read_bytes())
    refused(saved, "checksum")


class _Marker:
    """Unpickling this touches a file: the proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def no_unpickling(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model file was unpickled")

    monkeypatch.setattr(torch, "load", fail)
    monkeypatch.setattr(pickle, "load", fail)
    monkeypatch.setattr(pickle, "loads", fail)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_pickles_are_refused_and_never_unpickled(tmp_path, suffix, no_unpickling):
    marker = tmp_path / "unpickled"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"state_dict": _Marker(marker)}))
    refused(path, "pickle", "never")
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_with_a_forged_card_is_refused(tmp_path, no_unpickling):
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(_Marker(marker)))
    card = {
        "format": CARD_FORMAT,
        "network": tiny_model().config(),
        "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    card_path(path).write_text(json.dumps(card))
    refused(path, "do not fit")
    assert not marker.exists()


def test_2d_model_on_3d_images_is_refused(saved):
    values = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    fixed, moving = sitk.GetImageFromArray(values), sitk.GetImageFromArray(values[::-1].copy())
    with pytest.raises(IntermodalError) as err:
        register(fixed, moving, Settings(model=str(saved), refine=0))
    message = str(err.value)
    assert "\n" not in message and saved.name in message
    assert "2D" in message and "3D" in message
