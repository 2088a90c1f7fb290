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
from intermodal.io._atomic import write_files_atomic

CARD_FORMAT = 1
"""The newest model card format this version reads; a newer card is refused."""
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")
"""Extensions of pickled PyTorch files, refused by name: a pickle is never opened."""
_HEX = "0123456789abcdef"


def card_path(weights: str | os.PathLike) -> Path:
    """The model card that belongs to a ``.safetensors`` weights file."""
    return Path(weights).with_suffix(".json")


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
    weights = save(state)
    full_card = {
        "format": CARD_FORMAT,
        "intermodal_version": __version__,
        "network": model.config(),
        **card,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    # Both files are written in full before either replaces anything: a full disk leaves
    # no half-written model and no weights without their card.
    text = json.dumps(full_card, indent=2) + "\n"
    write_files_atomic({path: weights, card_path(path): text.encode("utf-8")})
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
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: bad JSON or bad UTF-8
        raise IntermodalError(f"{card_file}: not a readable JSON model card ({error})") from None
    if not isinstance(card, dict) or "network" not in card or "weights_sha256" not in card:
        raise IntermodalError(f"{card_file}: model card lacks 'network' or 'weights_sha256'")
    digest = card["weights_sha256"]
    if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set(_HEX)):
        raise IntermodalError(f"{card_file}: weights_sha256 is not a SHA-256 hex digest")
    version = card.get("format", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise IntermodalError(f"{card_file}: card format must be an integer, got {version!r}")
    for key in ("network", "preprocessing", "training"):
        if key in card and not isinstance(card[key], dict):
            raise IntermodalError(
                f"{card_file}: {key!r} must be an object, got {str(card[key])[:60]!r}"
            )
    if version > CARD_FORMAT:
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
        IntermodalError: a pickle (``.pt``, ``.pth``, ``.ckpt``...: never opened), another
            extension, a missing or unreadable card, a card format newer than
            :data:`CARD_FORMAT`, a checksum mismatch (a truncated or altered file), or weights
            that do not fit the card's network. Each in one line naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from intermodal.networks import RegistrationModel

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise IntermodalError(
            f"{path}: a {path.suffix} file is a Python pickle, which can run code when loaded; "
            "intermodal never opens one: models are .safetensors weights with a .json card"
        )
    if path.suffix != ".safetensors":
        raise IntermodalError(f"{path}: models are loaded from .safetensors files only")
    card = read_card(path)
    try:
        weights = path.read_bytes()
    except OSError as error:
        raise IntermodalError(f"{path}: cannot read model weights ({error.strerror})") from None
    # The bytes that are checked are the bytes that are loaded (no second read to swap).
    if hashlib.sha256(weights).hexdigest() != card["weights_sha256"]:
        raise IntermodalError(
            f"{path}: weights do not match the checksum in {card_path(path).name} "
            "(truncated or altered file)"
        )
    try:
        state = load_safetensors(weights)
        model = RegistrationModel.from_config(card["network"])
        model.load_state_dict(state)
    except (
        IntermodalError,
        SafetensorError,
        RuntimeError,
        TypeError,
        KeyError,
        ValueError,
    ) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise IntermodalError(
            f"{path}: weights do not fit the card's network ({first_line})"
        ) from None
    return model.to(device).eval(), card
