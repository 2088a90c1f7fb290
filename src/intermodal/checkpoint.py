"""Model files: safetensors weights beside a JSON model card.

A model ``NAME`` is two files: ``NAME.safetensors`` (the weights, never a pickle) and
``NAME.json`` (the card: the network configuration, the preprocessing it was trained with, how
it was trained, and the SHA-256 of the weights file). Loading checks the checksum first, so a
truncated or altered weights file is refused before any tensor is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from intermodal import __version__
from intermodal.errors import IntermodalError
from intermodal.io import write_bytes_atomic, write_text_atomic

CARD_FORMAT = 1


def card_path(weights: str | os.PathLike) -> Path:
    """The model card that belongs to a ``.safetensors`` weights file."""
    return Path(weights).with_suffix(".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: Any, path: str | os.PathLike, card: dict[str, Any]) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) and its card beside it.

    Args:
        model: a :class:`intermodal.networks.RegistrationModel`.
        path: destination ending in ``.safetensors``.
        card: what to record besides the network config, e.g. ``preprocessing``, ``training``.

    Returns:
        The weights path.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise IntermodalError(f"{path}: model weights must end in .safetensors")
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    write_bytes_atomic(path, save(state))
    full_card = {
        "format": CARD_FORMAT,
        "intermodal_version": __version__,
        "network": model.config(),
        **card,
        "weights_sha256": _sha256(path),
    }
    write_text_atomic(card_path(path), json.dumps(full_card, indent=2) + "\n")
    return path


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check the model card that belongs to ``path``."""
    path = Path(path)
    card_file = card_path(path)
    if not path.is_file():
        raise IntermodalError(f"{path}: model weights file not found")
    if not card_file.is_file():
        raise IntermodalError(f"{path}: model card {card_file.name} not found beside the weights")
    try:
        card = json.loads(card_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise IntermodalError(f"{card_file}: not a readable JSON model card ({error})") from None
    if not isinstance(card, dict) or "network" not in card or "weights_sha256" not in card:
        raise IntermodalError(f"{card_file}: model card lacks 'network' or 'weights_sha256'")
    if card.get("format", 0) > CARD_FORMAT:
        raise IntermodalError(
            f"{card_file}: card format {card['format']} is newer than this intermodal "
            f"({__version__}) understands ({CARD_FORMAT}); upgrade intermodal"
        )
    return card


def load_model(path: str | os.PathLike, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load a model saved by :func:`save_model`, checking its checksum.

    Args:
        path: the ``.safetensors`` weights file.
        device: torch device for the weights.

    Returns:
        ``(model, card)`` with the model in eval mode.

    Raises:
        IntermodalError: missing files, a checksum mismatch, or weights that do not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from intermodal.networks import RegistrationModel

    path = Path(path)
    if path.suffix != ".safetensors":
        raise IntermodalError(f"{path}: models are loaded from .safetensors files only")
    card = read_card(path)
    if _sha256(path) != card["weights_sha256"]:
        raise IntermodalError(
            f"{path}: weights do not match the checksum in {card_path(path).name} "
            "(truncated or altered file)"
        )
    try:
        state = load_file(str(path), device=device)
        model = RegistrationModel.from_config(card["network"])
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, TypeError, KeyError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise IntermodalError(
            f"{path}: weights do not fit the card's network ({first_line})"
        ) from None
    return model.to(device).eval(), card
