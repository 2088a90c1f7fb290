"""The trainer's resumable state in one safetensors file, never a pickle.

``trainer_state.safetensors`` holds the model weights (``model.*``), the optimiser's tensors
flattened (``optimizer.<param index>.<name>``) and, in its header metadata under
``"trainer"``, a JSON document: the step, the optimiser's parameter groups and scalars, the
RNG states (as lists of ints), the wall time so far and the resolved
configuration. One file, replaced atomically, so weights and optimiser state can never come
from different steps. ``trainer_state.json`` beside it is a readable copy of the JSON; both are
written in full before either replaces the previous pair.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from intermodal.errors import IntermodalError
from intermodal.io._atomic import atomic_write, write_files_atomic

__all__ = ["STATE_FILE", "load_state", "save_state", "write_json"]

STATE_FILE = "trainer_state.safetensors"
_FORMAT = 1


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically."""
    data = (json.dumps(value, indent=2) + "\n").encode()
    atomic_write(path, lambda tmp: tmp.write_bytes(data), suffix=path.suffix, overwrite=True)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def rng_states() -> dict[str, list[list[int]] | list[int]]:
    """torch's global RNG states (CPU and every CUDA device) as lists of ints."""
    states: dict[str, Any] = {"torch_cpu": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(torch.tensor(states["torch_cpu"], dtype=torch.uint8))
    if "torch_cuda" in states and torch.cuda.is_available():
        cuda = [torch.tensor(s, dtype=torch.uint8) for s in states["torch_cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_state(
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> Path:
    """Write ``out/trainer_state.safetensors`` (and its JSON copy) atomically.

    Args:
        out: the run's folder.
        model: the bare model (not a DDP wrapper).
        optimizer: its optimiser.
        meta: JSON-ready values to keep: at least ``step``.

    Returns:
        The state file's path.
    """
    from safetensors.torch import save

    tensors = {
        f"model.{name}": t.detach().cpu().contiguous() for name, t in model.state_dict().items()
    }
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(optimizer_tensors)
    document = {"format": _FORMAT, **meta, "optimizer": optimizer_meta, "rng": rng_states()}
    data = save(tensors, metadata={"trainer": json.dumps(document)})
    path = out / STATE_FILE
    text = json.dumps(document, indent=2) + "\n"
    # Both files are written in full before either replaces anything, so a full disk leaves
    # the previous state and its readable copy as they were.
    write_files_atomic({path: data, path.with_suffix(".json"): text.encode()})
    return path


def load_state(out: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """Read what :func:`save_state` wrote.

    Returns:
        ``(model_state, optimizer_state, meta)``: a model ``state_dict``, an optimiser
        ``state_dict`` (on the CPU) and the JSON document.

    Raises:
        IntermodalError: no state file in ``out``, one that cannot be read, or one whose
            metadata is malformed (a format that is not an integer or is newer than this
            version, missing keys, a malformed optimiser state); one line naming the file.
    """
    from safetensors import SafetensorError, safe_open

    path = out / STATE_FILE
    if not path.is_file():
        raise IntermodalError(f"{out}: nothing to resume from ({STATE_FILE} not found)")
    try:
        with safe_open(str(path), framework="pt") as stream:
            document = json.loads((stream.metadata() or {})["trainer"])
            tensors = {key: stream.get_tensor(key) for key in stream.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise IntermodalError(f"{path}: not a readable trainer state ({error})") from None
    if not isinstance(document, dict):
        raise IntermodalError(f"{path}: trainer state metadata is not a JSON object")
    version = document.get("format", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise IntermodalError(f"{path}: trainer state format must be an integer, got {version!r}")
    if version > _FORMAT:
        raise IntermodalError(f"{path}: trainer state format {version} is too new")
    missing = [key for key in ("step", "optimizer", "rng") if key not in document]
    if missing:
        raise IntermodalError(f"{path}: trainer state lacks {', '.join(missing)}")
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
    try:
        optimizer_state = _unflatten_optimizer(optimizer_tensors, document["optimizer"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise IntermodalError(f"{path}: malformed optimiser state ({error!r})") from None
    return model_state, optimizer_state, document
