"""The trainer's state file: round trip, malformed metadata refused in one line, full disk."""

from __future__ import annotations

import errno
import json
import os
import pathlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from intermodal.errors import IntermodalError
from intermodal.training.state import STATE_FILE, load_state, save_state


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def _rewrite_document(path: pathlib.Path, change) -> None:
    """Replace the JSON document in a state file's header by ``change(document)``."""
    with safe_open(str(path), framework="pt") as stream:
        document = json.loads(stream.metadata()["trainer"])
        tensors = {key: stream.get_tensor(key) for key in stream.keys()}  # noqa: SIM118
    save_file(tensors, str(path), metadata={"trainer": json.dumps(change(document))})


def test_state_round_trip(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = save_state(tmp_path, model, optimizer, {"step": 3})
    assert path == tmp_path / STATE_FILE
    assert json.loads((tmp_path / "trainer_state.json").read_text(encoding="utf-8"))["step"] == 3
    model_state, optimizer_state, meta = load_state(tmp_path)
    assert meta["step"] == 3 and meta["format"] == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(model_state[name], tensor)
    restored = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    restored.load_state_dict(optimizer_state)
    assert restored.param_groups[0]["lr"] == 1e-2
    assert torch.equal(
        restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "trainer_state.json",
        "trainer_state.safetensors",
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: {**d, "format": "1"}, "format must be an integer, got '1'"),
        (lambda d: {**d, "format": None}, "format must be an integer, got None"),
        (lambda d: {**d, "format": [1]}, "format must be an integer, got [1]"),
        (lambda d: {**d, "format": True}, "format must be an integer, got True"),
        (lambda d: {**d, "format": 1.5}, "format must be an integer, got 1.5"),
        (lambda d: {**d, "format": 99}, "format 99 is too new"),
        (lambda d: [d], "metadata is not a JSON object"),
        (lambda d: {k: v for k, v in d.items() if k != "rng"}, "lacks rng"),
        (lambda d: {**d, "optimizer": {"param_groups": []}}, "malformed optimiser state"),
        (lambda d: {**d, "optimizer": "adam"}, "malformed optimiser state"),
    ],
)
def test_bad_state_metadata_is_one_line_naming_the_file(tmp_path, change, expected):
    model, optimizer = _model_and_optimizer()
    path = save_state(tmp_path, model, optimizer, {"step": 3})
    _rewrite_document(path, change)
    with pytest.raises(IntermodalError) as err:
        load_state(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message


def test_bad_state_file_not_safetensors(tmp_path):
    (tmp_path / STATE_FILE).write_bytes(b"\x00" * 40)
    with pytest.raises(IntermodalError, match="not a readable trainer state"):
        load_state(tmp_path)


def test_a_full_disk_keeps_both_previous_state_files(tmp_path, monkeypatch):
    """The state and its JSON copy are replaced together or not at all."""
    model, optimizer = _model_and_optimizer()
    save_state(tmp_path, model, optimizer, {"step": 3})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_write = pathlib.Path.write_bytes

    def second_write_fails(self, data):
        # The safetensors file is written in full, then the JSON copy finds the disk full.
        if self.name.startswith(".trainer_state.json"):
            real_write(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", second_write_fails)
    with pytest.raises(IntermodalError, match="No space left on device") as err:
        save_state(tmp_path, model, optimizer, {"step": 4})
    assert "trainer_state.json" in str(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_state(tmp_path)[2]["step"] == 3
