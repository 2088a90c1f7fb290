"""Training configuration: dataclasses with defaults, read from TOML plus overrides.

A configuration file has one table per section (``[data]``, ``[model]``, ``[loss]``,
``[train]``, ``[augment]``) and two top-level keys, ``out`` and ``device``::

    out = "runs/pelvis"
    [data]
    manifest = "prepared/manifest.json"
    dim = 3
    [loss]
    name = "intra"
    smoothness = 1.0

Every key is optional. Overrides are ``dotted.key=value`` strings (``loss.smoothness=0.5``,
``out=runs/x``); the value is read as a TOML literal (``true``, ``3``, ``[8, 16]``,
``"text"``) and, if it is not one, taken as a plain string. Paths are kept as written and
are relative to the current directory, not to the configuration file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from intermodal.data.generator import GeneratorConfig
from intermodal.errors import IntermodalError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "LOSSES",
    "AugmentConfig",
    "DataConfig",
    "GeneratorConfig",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "TrainingConfig",
    "load_config",
]

LOSSES = ("intra", "mi", "mind", "ngf")
"""Training losses: ``intra`` is Cao et al.'s intra-modality supervision; the other three
compare the inter-modality pair the network sees directly, as baselines."""

DIRECTIONS = ("mr_to_ct", "ct_to_mr", "both")
"""Which way the network registers: MR moving onto a CT fixed (the paper), the reverse, or
either with probability 1/2 per sample."""

DEVICES = ("auto", "cpu", "cuda")

SOURCES = ("manifest", "generator")
"""Where training pairs come from: a prepared dataset on disk, or generated on the fly."""

BEST_METRICS = ("dice", "similarity")
"""What picks the best checkpoint: the validation Dice (higher is better) or the validation
intra-modality similarity loss (lower is better; needs no labels)."""


@dataclass
class DataConfig:
    """Where the training pairs come from.

    Attributes:
        source: ``manifest`` (a prepared dataset) or ``generator`` (pairs generated on the
            fly, see the ``[generator]`` section and :mod:`intermodal.data.generator`).
        manifest: the prepared dataset's manifest (JSON); its ``training`` split trains and
            its ``validation`` split (if any) is used for validation Dice.
        dim: 2 or 3, the dimension of the images.
        validation_labels: label values averaged in the validation Dice of a manifest's
            validation split; each must occur in its label maps (a pair scores those present
            in either of its maps). Generated pairs score every label but 0.
    """

    source: str = "manifest"
    manifest: str = ""
    dim: int = 3
    validation_labels: list[int] = field(default_factory=lambda: [2, 3, 4, 5])


@dataclass
class ModelConfig:
    """The network, see :class:`intermodal.networks.RegistrationModel`.

    Attributes:
        features: channels per encoder level, finest first.
        output_stride: 1, 2 or 4; the velocity grid is the image grid divided by it.
        integration_steps: scaling-and-squaring steps (0: the output is a displacement).
        instance_norm: instance norm after every hidden convolution.
    """

    features: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    output_stride: int = 2
    integration_steps: int = 7
    instance_norm: bool = False


@dataclass
class LossConfig:
    """What training minimises.

    Attributes:
        name: ``intra`` (LNCC between CT_j and warped CT_i plus between MR_j and warped MR_i),
            or an inter-modality baseline on the pair the network sees: ``mi``, ``mind``,
            ``ngf``.
        symmetric: also warp the fixed pair by the inverse field ``exp(-v)`` and compare it
            with the moving pair; the two directions are averaged.
        smoothness: weight of the diffusion regulariser on the displacement (voxels).
        volume_penalty: weight of the mean squared log Jacobian determinant of the
            displacement (:func:`intermodal.losses.log_jacobian_penalty`), which costs local
            volume change but not rotation or shear; 0 turns it off.
        dice: weight of a soft Dice term on the warped one-hot labels; 0 turns it off (and
            the labels are then not needed).
        lncc_window: LNCC box width in voxels (odd).
        scales: the image scales at which ``intra`` compares its pairs, as block-average
            factors: ``[1]`` compares at full resolution only; ``[1, 2, 4]`` also compares
            2x and 4x block averages with the same window (so 2x and 4x wider in
            millimetres), averaged. The coarser scales see displacements larger than the
            window, which the full-resolution LNCC alone barely pulls towards (measured on 4
            generated 2D pairs, 175 steps: Dice 0.38 -> 0.51 with ``[1]``, 0.70 with
            ``[1, 2, 4]``).
        mi_bins: histogram bins for ``mi``.
        mi_samples: voxels sampled per image for ``mi`` (0: all).
    """

    name: str = "intra"
    symmetric: bool = False
    smoothness: float = 1.0
    volume_penalty: float = 0.0
    dice: float = 0.0
    lncc_window: int = 9
    scales: list[int] = field(default_factory=lambda: [1])
    mi_bins: int = 32
    mi_samples: int = 0


@dataclass
class TrainingConfig:
    """The optimisation loop.

    Attributes:
        steps: total optimiser steps (a resumed run continues up to this number).
        batch_size: pairs per step (per process under DDP).
        lr: Adam learning rate.
        grad_clip: the largest global gradient norm a step may apply; a larger gradient is
            scaled down to it (0: no clipping). A bound on the step stops one bad batch from
            throwing the weights into a region where the loss explodes.
        seed: seeds the weights, the pair sampling and the augmentation.
        direction: ``both`` (the default: MR->CT and CT->MR, a fair coin per pair, so the
            model serves either input order), ``mr_to_ct`` (the paper's) or ``ct_to_mr``.
        validate_every: steps between validation Dice evaluations (0: only at the end).
        checkpoint_every: steps between checkpoints (0: only at the end).
        log_every: steps between entries in the training history.
        amp: mixed precision (bfloat16): ``"auto"`` (on with CUDA), ``true`` or ``false``.
            Only ever used on CUDA.
        best_metric: what picks ``best.safetensors`` among the validations: ``dice`` or
            ``similarity`` (the intra-modality loss on the validation pairs; generated data
            only, a manifest's validation scores the Dice).
        threads: torch threads of the training process on the CPU; 0: the CPU count less
            the generator's worker processes (at least 1), or torch's default when the data
            comes from a manifest. More threads than free cores make every step slower, not
            faster (on 2 shared cores, 2 threads took 4x the CPU time of 1).
    """

    steps: int = 10000
    batch_size: int = 1
    lr: float = 1e-4
    grad_clip: float = 0.0
    seed: int = 0
    direction: str = "both"
    validate_every: int = 500
    checkpoint_every: int = 1000
    log_every: int = 10
    amp: bool | str = "auto"
    best_metric: str = "dice"
    threads: int = 0


@dataclass
class AugmentConfig:
    """Random augmentation of the training pairs.

    The affine is drawn per subject and applied to its CT, MR and labels alike; the
    intensity changes are drawn per image and applied to the network's inputs only (the
    losses compare the geometrically augmented images, not the intensity-augmented ones).

    Attributes:
        probability: chance that each augmentation (affine, gamma, bias, noise) is applied.
        affine_degrees: maximum rotation in degrees about each axis (in-plane in 2D).
        affine_scale: maximum relative scaling per axis (0.1: 0.9 to 1.1).
        gamma: standard deviation of ``log(gamma)``; the image becomes ``image ** gamma``.
        bias: standard deviation of the log of a smooth multiplicative bias field.
        noise: maximum standard deviation of additive Gaussian noise (images in [0, 1]).
    """

    probability: float = 0.0
    affine_degrees: float = 10.0
    affine_scale: float = 0.1
    gamma: float = 0.2
    bias: float = 0.1
    noise: float = 0.02


@dataclass
class TrainConfig:
    """Everything :func:`intermodal.training.train` needs.

    Attributes:
        data, model, loss, train, augment, generator: the sections (``generator`` is used
            with ``data.source = "generator"``).
        out: output folder (weights, card, trainer state, history, TensorBoard logs).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    out: str = "runs/train"
    device: str = "auto"

    def resolved(self) -> dict[str, Any]:
        """Every setting as plain JSON/TOML-ready values, sections as nested dicts."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The resolved settings as a TOML document that :func:`load_config` reads back."""
        values = self.resolved()
        top = [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
        lines = top + [""]
        for section, table in values.items():
            if isinstance(table, dict):
                lines.append(f"[{section}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
                lines.append("")
        return "\n".join(lines)

    def validate(self) -> TrainConfig:
        """Check value ranges; return ``self``.

        Raises:
            IntermodalError: naming the first key whose value is out of range.
        """
        _check(self.data.dim in (2, 3), "data.dim", "2 or 3", self.data.dim)
        _check(self.data.source in SOURCES, "data.source", f"one of {SOURCES}", self.data.source)
        _check(
            len(self.model.features) > 0 and min(self.model.features) > 0,
            "model.features",
            "a non-empty list of positive ints",
            self.model.features,
        )
        _check(
            self.model.output_stride in (1, 2, 4),
            "model.output_stride",
            "1, 2 or 4",
            self.model.output_stride,
        )
        _check(
            self.model.integration_steps >= 0,
            "model.integration_steps",
            "an int >= 0",
            self.model.integration_steps,
        )
        _check(self.loss.name in LOSSES, "loss.name", f"one of {LOSSES}", self.loss.name)
        for key in ("smoothness", "volume_penalty", "dice"):
            value = getattr(self.loss, key)
            _check(math.isfinite(value) and value >= 0, f"loss.{key}", "a number >= 0", value)
        _check(
            self.loss.lncc_window > 0 and self.loss.lncc_window % 2 == 1,
            "loss.lncc_window",
            "a positive odd int",
            self.loss.lncc_window,
        )
        _check(
            len(self.loss.scales) > 0
            and all(isinstance(f, int) and not isinstance(f, bool) for f in self.loss.scales)
            and min(self.loss.scales) >= 1,
            "loss.scales",
            "a non-empty list of ints >= 1",
            self.loss.scales,
        )
        _check(self.loss.mi_bins >= 2, "loss.mi_bins", "an int >= 2", self.loss.mi_bins)
        _check(self.loss.mi_samples >= 0, "loss.mi_samples", "an int >= 0", self.loss.mi_samples)
        t = self.train
        _check(t.steps >= 1, "train.steps", "an int >= 1", t.steps)
        _check(t.batch_size >= 1, "train.batch_size", "an int >= 1", t.batch_size)
        _check(math.isfinite(t.lr) and t.lr > 0, "train.lr", "a number > 0", t.lr)
        _check(
            math.isfinite(t.grad_clip) and t.grad_clip >= 0,
            "train.grad_clip",
            "a number >= 0",
            t.grad_clip,
        )
        _check(t.seed >= 0, "train.seed", "an int >= 0", t.seed)
        _check(t.direction in DIRECTIONS, "train.direction", f"one of {DIRECTIONS}", t.direction)
        for key in ("validate_every", "checkpoint_every"):
            _check(getattr(t, key) >= 0, f"train.{key}", "an int >= 0", getattr(t, key))
        _check(t.log_every >= 1, "train.log_every", "an int >= 1", t.log_every)
        _check(t.threads >= 0, "train.threads", "an int >= 0", t.threads)
        _check(
            isinstance(t.amp, bool) or t.amp == "auto", "train.amp", 'true, false or "auto"', t.amp
        )
        _check(
            t.best_metric in BEST_METRICS,
            "train.best_metric",
            f"one of {BEST_METRICS}",
            t.best_metric,
        )
        _check(
            len(self.data.validation_labels) > 0,
            "data.validation_labels",
            "a non-empty list of label values",
            self.data.validation_labels,
        )
        _check(
            t.best_metric != "similarity" or self.data.source == "generator",
            "train.best_metric",
            "'dice' with data.source = 'manifest' (its validation scores the Dice only)",
            t.best_metric,
        )
        a = self.augment
        _check(0 <= a.probability <= 1, "augment.probability", "a number in [0, 1]", a.probability)
        _check(
            0 <= a.affine_scale < 1, "augment.affine_scale", "a number in [0, 1)", a.affine_scale
        )
        for key in ("affine_degrees", "gamma", "bias", "noise"):
            value = getattr(a, key)
            _check(math.isfinite(value) and value >= 0, f"augment.{key}", "a number >= 0", value)
        _check(self.device in DEVICES, "device", f"one of {DEVICES}", self.device)
        if self.data.source == "generator":
            g = self.generator
            _check(
                len(g.shape) == self.data.dim,
                "generator.shape",
                f"{self.data.dim} voxel counts (data.dim is {self.data.dim})",
                g.shape,
            )
            g.validate("generator.", multiple=2 ** (len(self.model.features) - 1))
            _check(
                a.probability == 0,
                "augment.probability",
                "0 with data.source = 'generator' (the generator draws its own contrasts and "
                "motion)",
                a.probability,
            )
        return self


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise IntermodalError(f"config: {key} must be {expected}, not {got!r}")


# --------------------------------------------------------------------------- reading


def _valid_keys(cls: type) -> list[str]:
    """Every settable dotted key of a config dataclass, sections expanded."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += [f"{f.name}.{sub}" for sub in _valid_keys(hint)]
        else:
            keys.append(f.name)
    return keys


def _unknown_key(key: str, valid: Sequence[str]) -> IntermodalError:
    return IntermodalError(f"config: unknown key {key!r}; valid keys are: {', '.join(valid)}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint, converting int to float where needed."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(key, value, option)
            except IntermodalError:
                continue
        names = " or ".join(_type_name(option) for option in typing.get_args(hint))
        raise IntermodalError(f"config: {key} must be {names}, not {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise IntermodalError(f"config: {key} must be a list, not {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
    raise IntermodalError(f"config: {key} must be {_type_name(hint)}, not {value!r}")


def _type_name(hint: Any) -> str:
    if hint is str:
        return "a string"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    return str(hint)


def _apply(config: Any, values: Mapping[str, Any], prefix: str, valid: Sequence[str]) -> None:
    """Set the fields of a config dataclass from a (nested) mapping, checking every key."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise _unknown_key(key, valid)
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise IntermodalError(
                    f"config: {key} is a section; give it as a table ([{key}]) or set "
                    f"{key}.<key>, not {value!r}"
                )
            _apply(getattr(config, name), value, f"{key}.", valid)
        else:
            setattr(config, name, _coerce(key, value, hint))


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise IntermodalError(f"{path}: configuration file not found")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            with open(path, "rb") as stream:
                return tomllib.load(stream)
        except tomllib.TOMLDecodeError as error:
            raise IntermodalError(f"{path}: not valid TOML ({error})") from None
    raise IntermodalError(f"{path}: configuration must be a .toml file, not {suffix!r}")


def parse_value(text: str) -> Any:
    """Read an override's value as a TOML literal, or keep it as a string if it is not one."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Build a :class:`TrainConfig` from the defaults, a file and ``key=value`` overrides.

    Args:
        path: a ``.toml`` file, or None for the defaults alone.
        overrides: ``dotted.key=value`` strings applied after the file, in order, e.g.
            ``["loss.smoothness=0.5", "train.steps=200", "data.manifest=prep/manifest.json"]``.

    Returns:
        The checked configuration.

    Raises:
        IntermodalError: an unreadable file, an unknown key (the message names it and lists
            the valid keys), a value of the wrong type, or a value out of range.

    Example:
        >>> config = load_config(None, ["data.manifest=m.json", "train.steps=20"])
        >>> config.train.steps, config.loss.name
        (20, 'intra')
    """
    config = TrainConfig()
    valid = _valid_keys(TrainConfig)
    if path is not None:
        path = Path(path)
        values = _read_file(path)
        try:
            _apply(config, values, "", valid)
        except IntermodalError as error:
            raise IntermodalError(f"{path}: {error}") from None
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise IntermodalError(
                f"config override {override!r} must look like key=value, e.g. train.steps=100"
            )
        if key not in valid and not any(k.startswith(f"{key}.") for k in valid):
            raise _unknown_key(key, valid)
        nested: dict[str, Any] = {}
        leaf = nested
        *sections, name = key.split(".")
        for section in sections:
            leaf = leaf.setdefault(section, {})
        leaf[name] = parse_value(text.strip())
        _apply(config, nested, "", valid)
    return config.validate()


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from :meth:`TrainConfig.resolved` output (unchecked)."""
    config = TrainConfig()
    _apply(config, values, "", _valid_keys(TrainConfig))
    return config
