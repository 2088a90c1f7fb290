"""Models shipped inside the package.

Two models are bundled, both trained on pairs generated on the fly
(:mod:`intermodal.data.generator`: random smooth shapes, CT and T2-like MR rendered from each,
random affine and two-scale deformations; no pelvis, so that anatomy stays unseen) with the
``intra`` loss of Cao et al. (MLMI 2018):

- ``general3d``: 3D, 6 mm; what ``"auto"`` picks for 3D inputs;
- ``general2d``: 2D slices, 5 mm; what ``"auto"`` picks for 2D inputs.

Neither is used unless asked for (``register``'s default is no model), and ``register`` keeps a
model's field only where it improves the similarity. Each is ``NAME.safetensors`` with its card
``NAME.json`` beside it; the card records the generator and its seeds, the training
configuration, the steps, the wall time, the machine, the validation scores (with those of no
registration) and the one command that retrains it (``make model-3d`` / ``make model-2d``, see
``tools/train_bundled.py``).

A model *specification*, as ``register --model`` takes it, is one of:

- ``"auto"``: the bundled model for the inputs' dimension;
- ``"none"`` (or ``None``): no network, test-time refinement alone;
- a bundled model's name (``"general3d"``, ``"general2d"``);
- the path of any ``.safetensors`` model with its card.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from intermodal.errors import IntermodalError

__all__ = ["BUNDLED", "bundled_path", "resolve_model"]

BUNDLED = {"general3d": 3, "general2d": 2}
"""Bundled model names and the dimension each is for."""


def bundled_path(name: str) -> Path:
    """The weights file of the bundled model ``name``.

    Raises:
        IntermodalError: an unknown name, or the files are missing from this installation.
    """
    if name not in BUNDLED:
        raise IntermodalError(f"no bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    path = Path(str(resources.files(__name__) / f"{name}.safetensors"))
    if not path.is_file() or not path.with_suffix(".json").is_file():
        raise IntermodalError(
            f"bundled model {name} is missing from this installation ({path}); "
            f"retrain it with `make model-{BUNDLED[name]}d` or pass --model PATH or --model none"
        )
    return path


def resolve_model(spec: str | None, ndim: int) -> str | None:
    """Turn a model specification into a weights path, or ``None`` for no network.

    Args:
        spec: ``"auto"``, ``"none"``/``None``, a bundled name, or a path (see the module).
        ndim: the inputs' dimension, 2 or 3, which ``"auto"`` picks the model by.

    Returns:
        The path of a ``.safetensors`` file, or ``None``.

    Example:
        >>> resolve_model("auto", 3).endswith("general3d.safetensors")
        True
    """
    if spec is None or spec.lower() == "none":
        return None
    if spec == "auto":
        names = [n for n, d in BUNDLED.items() if d == ndim]
        if not names:
            raise IntermodalError(f"no bundled model for {ndim}D images")
        return str(bundled_path(names[0]))
    if spec in BUNDLED:
        return str(bundled_path(spec))
    return spec
