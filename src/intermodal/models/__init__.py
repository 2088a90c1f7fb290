"""Models shipped inside the package.

Two models are bundled, both trained on pairs generated on the fly
(:mod:`intermodal.data.generator`: random smooth shapes, CT and T2-like MR rendered from each,
random affine and two-scale deformations; no pelvis, so that anatomy stays unseen) with the
``intra`` loss of Cao et al. (MLMI 2018):

- ``general3d``: 3D, 6 mm; what ``"auto"`` picks for 3D inputs;
- ``general2d``: 2D slices, 5 mm; what ``"auto"`` picks for 2D inputs.

``register`` loads no model by default (:data:`DEFAULT_MODELS`): neither has been measured to
help the whole registration on realistic data. With ``--model``, it keeps a model's field only
where it improves the similarity.
Each is ``NAME.safetensors`` with its card ``NAME.json`` beside it; the card records the
generator and its seeds, the training configuration, the steps, the wall time, the machine,
the validation scores (with those of no registration) and the one command that retrains it
(``make model-3d`` / ``make model-2d``, see ``tools/train_bundled.py``).

A model *specification*, as ``register --model`` takes it, is one of:

- ``"default"``: :data:`DEFAULT_MODELS`'s choice for the inputs' dimension;
- ``"auto"``: the bundled model for the inputs' dimension;
- ``"none"`` (or ``None``): no network, test-time refinement alone;
- a bundled model's name (``"general3d"``, ``"general2d"``);
- the path of any ``.safetensors`` model with its card.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from intermodal.errors import IntermodalError

__all__ = ["BUNDLED", "DEFAULT_MODELS", "bundled_path", "default_models_in_words", "resolve_model"]

BUNDLED = {"general3d": 3, "general2d": 2}
"""Bundled model names and the dimension each is for."""

DEFAULT_MODELS: dict[int, str | None] = {2: None, 3: None}
"""The model ``"default"`` loads for each dimension: one that helps the whole registration on
the realistic sets, else none.

Chosen on the *tuning* cases, never the held-out ones: ``python benchmarks/training.py
register --dim 2 --model general2d --cases 8 --split tuning`` (2026-12-07,
``benchmarks/measured/training/tuning_register_2d.json``) gave, for register with ``general2d``
against none, Dice 0.727 against 0.697 on 8 synthetic pelvis slices (an anatomy the model never
saw) but a mean error of 4.32 against 2.78 mm on 6 real slices with a known motion (3.69 with
every refinement step): on the realistic set it hurts, so 2D runs without one. (An earlier
choice of ``general2d`` was measured on real slices whose MR was the mirror image of the CT's,
:func:`intermodal.data.realistic.turned_mr`.) In 3D ``general3d`` lowers the whole
registration's Dice a little (benchmarks/RESULTS.md, "Learned models").
"""


def default_models_in_words() -> str:
    """:data:`DEFAULT_MODELS` for a help text: ``"none"`` when no dimension has a model, else
    e.g. ``"general2d for 2D images, none for 3D"``."""
    if not any(DEFAULT_MODELS.values()):
        return "none"
    return ", ".join(
        f"{name or 'none'} for {ndim}D{' images' if ndim == 2 else ''}"
        for ndim, name in sorted(DEFAULT_MODELS.items())
    )


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
        spec: ``"default"``, ``"auto"``, ``"none"``/``None``, a bundled name, or a path
            (see the module).
        ndim: the inputs' dimension, 2 or 3, which ``"auto"`` picks the model by.

    Returns:
        The path of a ``.safetensors`` file, or ``None``.

    Example:
        >>> resolve_model("auto", 3).endswith("general3d.safetensors")
        True
    """
    if spec == "default":
        spec = DEFAULT_MODELS.get(ndim)
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
