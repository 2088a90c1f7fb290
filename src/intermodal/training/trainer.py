"""The training loop: intra-modality supervised inter-modality registration (Cao et al. 2018).

Each step takes pairs ``(i, j)``, ``i != j``, either from the training split of a prepared
dataset (``data.source = "manifest"``) or generated on the fly (``"generator"``, see
:mod:`intermodal.data.generator`), shows the network ``(CT_j, MR_i)`` (or ``(MR_j, CT_i)``),
and minimises the loss of :mod:`intermodal.training.objectives`. The run's folder
(``config.out``) receives:

- ``model.safetensors`` and ``model.json``: the last weights and model card
  (:mod:`intermodal.checkpoint`), at every checkpoint and at the end;
- ``best.safetensors`` and ``best.json``: the weights of the best validation so far
  (``train.best_metric``), written whenever a validation beats the previous best;
- ``trainer_state.safetensors`` (and a JSON copy): weights, optimiser and step, for ``resume``;
- ``history.json``: the training loss every ``log_every`` steps and the validation scores;
- ``config.json``: the resolved configuration;
- ``tensorboard/``: the same scalars, when ``tensorboard`` is installed.

With ``overwrite`` these files of an earlier run in the folder are removed before the new
run writes its first, so none of them (a ``best.safetensors`` above all) can outlive it.

The card records the data (the manifest, or the generator's settings and seeds), the steps,
the wall time, the steps per second and the time a step waited for its data, the machine,
the validation scores (with those of no registration, for generated pairs), the best
checkpoint and the command. Every file is written atomically. Under ``torchrun`` only rank 0
writes. On CUDA the network runs under bfloat16 autocast (``train.amp``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from intermodal.checkpoint import card_path, save_model
from intermodal.data.generator import GeneratedPairs, collate_pairs, worker_init
from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.networks import RegistrationModel, RegistrationOutput
from intermodal.preprocess import DEFAULT_HU_WINDOW, DEFAULT_MR_PERCENTILES
from intermodal.spatial import warp
from intermodal.training.config import TrainConfig
from intermodal.training.distributed import Distributed, setup_distributed
from intermodal.training.objectives import training_loss
from intermodal.training.pairs import (
    Pair,
    PairBatch,
    generated_batch,
    make_batch,
    sample_pairs,
    step_generator,
    validation_pairs,
)
from intermodal.training.state import STATE_FILE, load_state, save_state, set_rng_states, write_json
from intermodal.training.volumes import Volumes, load_volumes

if TYPE_CHECKING:
    from intermodal.data.manifest import Manifest

__all__ = ["BEST_FILE", "MODEL_FILE", "score_batches", "train", "validation_dice"]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
_HISTORY_FILE = "history.json"
_CONFIG_FILE = "config.json"
_TENSORBOARD_DIR = "tensorboard"
_RUN_FILES = tuple(
    name
    for weights in (MODEL_FILE, BEST_FILE, STATE_FILE)
    for name in (weights, card_path(weights).name)
) + (_HISTORY_FILE, _CONFIG_FILE)
"""Every file the trainer writes at the top of its folder (``tensorboard/`` aside)."""

StepReport = Callable[[dict[str, Any]], None]
"""Called after every training step with that step's report (see :func:`train`)."""


def _dice_of_batch(
    warped: Tensor, fixed: Tensor, label_values: list[int] | None
) -> list[dict[int, float]]:
    """Per pair, Dice per label of ``label_values`` (None: every label but 0) in either map."""
    scores = []
    for b in range(warped.shape[0]):
        values = label_values
        if values is None:
            values = [int(v) for v in torch.cat([warped[b].unique(), fixed[b].unique()]).unique()]
            values = [v for v in values if v != 0]
        pair: dict[int, float] = {}
        for value in values:
            in_warped = warped[b] == value
            in_fixed = fixed[b] == value
            total = int(in_warped.sum() + in_fixed.sum())
            if total:
                pair[value] = 2 * float((in_warped & in_fixed).sum()) / total
        scores.append(pair)
    return scores


def score_batches(
    model: RegistrationModel,
    batches: Iterable[PairBatch],
    label_values: list[int] | None = None,
    similarity: Callable[[RegistrationOutput, PairBatch], float] | None = None,
    *,
    amp: bool = False,
) -> dict[str, Any] | None:
    """Mean Dice of the moving labels warped (nearest neighbour) onto the fixed labels.

    For each pair, Dice per label present in either map (of ``label_values``, or every label
    but 0 when it is None), averaged; then averaged over pairs.

    Args:
        model: the network, evaluated without gradients.
        batches: the pairs, with labels.
        label_values: the labels (organs) to score; None: all but 0.
        similarity: if given, also averaged over the batches (e.g. the training loss's
            similarity term) and returned as ``similarity``.
        amp: run the network under bfloat16 autocast (CUDA).

    Returns:
        ``{"mean": float, "per_label": {value: float}}`` (and ``similarity``), or None if no
        pair scores a label.
    """
    was_training = model.training
    model.eval()
    scores: list[float] = []
    per_label: dict[int, list[float]] = {}
    similarities: list[float] = []
    with torch.no_grad():
        for batch in batches:
            device = batch.network_fixed.device
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                output = model(batch.network_fixed, batch.network_moving)
            output = RegistrationOutput(output.velocity.float(), output.displacement.float())
            if similarity is not None:
                similarities.append(similarity(output, batch))
            if batch.moving_labels is None or batch.fixed_labels is None:
                continue
            warped = warp(batch.moving_labels, output.displacement, mode="nearest")
            for pair in _dice_of_batch(warped, batch.fixed_labels, label_values):
                for value, dice in pair.items():
                    per_label.setdefault(value, []).append(dice)
                if pair:
                    scores.append(sum(pair.values()) / len(pair))
    model.train(was_training)
    if not scores and not similarities:
        return None
    result: dict[str, Any] = {}
    if scores:
        result["mean"] = sum(scores) / len(scores)
        result["per_label"] = {str(v): sum(s) / len(s) for v, s in sorted(per_label.items())}
    if similarities:
        result["similarity"] = sum(similarities) / len(similarities)
    return result


def validation_dice(
    model: RegistrationModel,
    volumes: Volumes,
    pairs: list[Pair],
    label_values: list[int],
    batch_size: int = 1,
) -> dict[str, Any] | None:
    """Mean Dice of the moving labels warped (nearest neighbour) onto the fixed labels.

    For each pair, Dice per label of ``label_values`` present in either map, averaged; then
    averaged over pairs.

    Args:
        model: the network, evaluated without gradients.
        volumes: images and labels (``labels`` must not be None).
        pairs: which subjects to register.
        label_values: the labels (organs) to score.
        batch_size: pairs per forward pass.

    Returns:
        ``{"mean": float, "per_label": {value: float}}``, or None if no pair scores a label.
    """
    if volumes.labels is None or not pairs:
        return None
    batches = (
        make_batch(volumes.ct, volumes.mr, volumes.labels, pairs[start : start + batch_size])
        for start in range(0, len(pairs), batch_size)
    )
    result = score_batches(model, batches, label_values)
    return result if result is not None and "mean" in result else None


def _preprocessing_card(manifest_path: Path, volumes: Volumes) -> dict[str, Any]:
    """The grid and intensity scaling the model was trained on, for its card."""
    normalisation: Any = _DEFAULT_NORMALISATION
    try:
        raw = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
        # `intermodal prepare` records its grid and intensity scaling under "prepared"
        block = raw.get("prepared") if isinstance(raw, dict) else None
        if isinstance(block, dict):
            normalisation = block.get("normalisation", normalisation)
    except (OSError, json.JSONDecodeError):
        pass
    return {
        "spacing": list(volumes.spacing),
        "shape": list(volumes.shape),
        "axes": "spacing in (x, y, z) mm; shape in array order (z, y, x)",
        "normalisation": normalisation,
    }


_DEFAULT_NORMALISATION = {
    # the form `intermodal prepare` records and `register` reads from a card (and refuses a
    # --hu-window or --mr-percentiles that contradicts it)
    "ct": "HU window {:g}..{:g}".format(*DEFAULT_HU_WINDOW),
    "mr": "percentiles {:g}..{:g}".format(*DEFAULT_MR_PERCENTILES),
}


def _check_validation_split(manifest: Manifest) -> None:
    """Warn about a validation split of one subject: it switches the validation Dice off, and
    with it ``best.*``.

    A warning, not an error: ``intermodal synth`` gives a split of 3 to 9 subjects one
    validation subject, and such a dataset trains, without validation. (A validation subject
    without labels is refused where the split is loaded, :func:`_load_validation`.)
    """
    if len(manifest.split("validation")) == 1:
        logger.warning(
            "%s: the 'validation' split has 1 subject, but validation registers pairs of 2 "
            "different subjects: training runs without validation and writes no best.*; add "
            "a subject to the split to validate",
            manifest.path,
        )


def _load_validation(manifest: Manifest, config: TrainConfig, reference: Volumes) -> Volumes:
    """The validation split, refused if ``data.validation_labels`` names a label it lacks.

    A label that no validation subject holds is never scored: all of them missing would
    leave no validation at all, and some missing would report a mean over fewer organs than
    the configuration names.
    """
    validation = load_volumes(
        manifest, "validation", dim=config.data.dim, labels="required", reference=reference,
        labels_for="the validation Dice (data.validation_labels)",
    )  # fmt: skip
    labels = validation.labels
    present = set() if labels is None else {int(v) for v in labels.unique()}
    wanted = config.data.validation_labels
    missing = [v for v in wanted if v not in present]
    if missing:
        names = f"label{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
        raise IntermodalError(
            f"config: data.validation_labels {wanted} names {names}, which no subject of the "
            f"'validation' split of {manifest.path} holds (its label maps hold "
            f"{sorted(present - {0})}); name labels it has"
        )
    return validation


class _ManifestData:
    """Pairs of a prepared dataset's training split; validation on its validation split."""

    def __init__(self, config: TrainConfig, distributed: Distributed) -> None:
        from intermodal.data.manifest import load_manifest

        if not config.data.manifest:
            raise IntermodalError(
                "config: data.manifest must name the prepared dataset's manifest (or set "
                "data.source = 'generator')"
            )
        self.config = config
        self.distributed = distributed
        manifest = load_manifest(config.data.manifest)
        dim = config.data.dim
        labels = "required" if config.loss.dice > 0 else "if_all"
        _check_validation_split(manifest)
        volumes = load_volumes(manifest, "training", dim=dim, labels=labels)
        if len(volumes) < 2:
            raise IntermodalError(
                f"{manifest.path}: training needs at least 2 subjects in the 'training' split "
                f"(pairs i != j), it has {len(volumes)}"
            )
        validation = None
        if manifest.splits.get("validation"):
            validation = _load_validation(manifest, config, volumes)
        label_values = [int(k) for k in manifest.labels] or [0]
        if volumes.labels is not None:
            label_values.append(int(volumes.labels.max()))
        self.n_classes = 1 + max(label_values)
        self.shape = volumes.shape
        self.where = f"{manifest.path}: the prepared grid"
        self.preprocessing = _preprocessing_card(manifest.path, volumes)
        self.card = {
            "source": "manifest",
            "manifest": str(config.data.manifest),
            "subjects": len(volumes),
            "n_validation": 0 if validation is None else len(validation),
        }
        device = distributed.device
        self.volumes = volumes.to(device)
        self.validation = None if validation is None else validation.to(device)
        self.validation_pairs = (
            [] if validation is None else validation_pairs(len(validation), config.train.direction)
        )

    def batches(self, start_step: int) -> Iterator[tuple[PairBatch, list[float]]]:
        """The batch of every step from ``start_step`` on, and its generation times (none)."""
        config, volumes = self.config, self.volumes
        for step in range(start_step, config.train.steps):
            pairs = sample_pairs(
                len(volumes),
                config.train.batch_size,
                seed=config.train.seed,
                step=step,
                rank=self.distributed.rank,
                direction=config.train.direction,
            )
            batch = make_batch(
                volumes.ct,
                volumes.mr,
                volumes.labels,
                pairs,
                augment=config.augment,
                generator=step_generator(config.train.seed, step, self.distributed.rank),
            )
            yield batch, []

    def validate(self, model: RegistrationModel, amp: bool) -> dict[str, Any] | None:
        if self.validation is None or not self.validation_pairs:
            return None
        return validation_dice(
            model,
            self.validation,
            self.validation_pairs,
            self.config.data.validation_labels,
            self.config.train.batch_size,
        )

    def close(self) -> None:
        pass


class _StepIndices(torch.utils.data.Sampler):
    """Generated-pair indices of steps ``start..steps - 1`` for one process, in order.

    Step ``s`` of rank ``r`` in a world of ``w`` takes items ``(s w + r) B .. (s w + r) B +
    B - 1``: each item is drawn once in the whole run, and a resumed run continues the same
    sequence.
    """

    def __init__(self, start: int, steps: int, batch_size: int, rank: int, world: int) -> None:
        self.start, self.steps, self.batch_size = start, steps, batch_size
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.steps):
            first = (step * self.world + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.batch_size


class _GeneratedData:
    """Pairs generated on the fly (:mod:`intermodal.data.generator`), in worker processes.

    Validation is a fixed set of pairs from ``generator.validation_seed``, generated once.
    """

    def __init__(self, config: TrainConfig, distributed: Distributed) -> None:
        self.config = config
        self.distributed = distributed
        g = config.generator
        self.shape = tuple(g.shape)
        self.where = "config: generator.shape"
        n_classes = {"shapes": g.shape_labels + 1, "pelvis": 10, "ct": 4}
        self.n_classes = max(n for name, n in n_classes.items() if getattr(g, f"{name}_weight"))
        self.preprocessing = {
            "spacing": [float(g.spacing)] * len(g.shape),
            "shape": list(g.shape),
            "axes": "spacing in (x, y, z) mm; shape in array order (z, y, x)",
            "normalisation": _DEFAULT_NORMALISATION,
        }
        self.card = {
            "source": "generator",
            "generator": "intermodal.data.generator",
            "seed": g.seed,
            "validation_seed": g.validation_seed,
            "n_validation": g.validation_pairs,
            "settings": dataclasses.asdict(g),
        }
        self.loader: Any = None
        device = distributed.device
        # validation batches grouped by label source, so each source is scored on its own
        self.validation: dict[str, list[PairBatch]] = {}
        if distributed.is_main and g.validation_pairs:
            pairs = GeneratedPairs(
                g,
                seed=g.validation_seed,
                length=g.validation_pairs,
                direction="both",
                sources=g.validation_sources,
            )
            by_source: dict[str, list[dict[str, Any]]] = {}
            for k in range(len(pairs)):
                item = pairs[k]
                by_source.setdefault(item["source"], []).append(item)
            size = config.train.batch_size
            for source, items in sorted(by_source.items()):
                self.validation[source] = [
                    generated_batch(collate_pairs(items[first : first + size]), device)
                    for first in range(0, len(items), size)
                ]

    def batches(self, start_step: int) -> Iterator[tuple[PairBatch, list[float]]]:
        """The batch of every step from ``start_step`` on, and each pair's generation time."""
        config, g = self.config, self.config.generator
        world, rank = self.distributed.world_size, self.distributed.rank
        dataset = GeneratedPairs(
            g,
            seed=g.seed,
            length=config.train.steps * world * config.train.batch_size,
            direction=config.train.direction,
        )
        sampler = _StepIndices(start_step, config.train.steps, config.train.batch_size, rank, world)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=config.train.batch_size,
            sampler=sampler,
            num_workers=g.workers,
            collate_fn=collate_pairs,
            worker_init_fn=worker_init if g.workers else None,
            prefetch_factor=2 if g.workers else None,
            pin_memory=self.distributed.device.type == "cuda",
        )
        device = self.distributed.device
        for items in self.loader:
            yield generated_batch(items, device), list(items["seconds"])

    def validate(self, model: RegistrationModel, amp: bool) -> dict[str, Any] | None:
        if not self.validation:
            return None
        config = self.config

        def similarity(output: RegistrationOutput, batch: PairBatch) -> float:
            _, terms = training_loss(
                config.loss,
                output,
                batch,
                integration_steps=config.model.integration_steps,
                n_classes=self.n_classes,
                seed=config.train.seed,
            )
            return terms["similarity"]

        result: dict[str, Any] = {"per_source": {}}
        totals: dict[str, list[float]] = {"mean": [], "similarity": []}
        held_out: list[float] = []
        g = config.generator
        for source, batches in self.validation.items():
            score = score_batches(model, batches, None, similarity, amp=amp)
            if score is None:
                continue
            pairs = sum(batch.fixed_ct.shape[0] for batch in batches)
            score.pop("per_label", None)
            result["per_source"][source] = {**score, "pairs": pairs}
            if not getattr(g, f"{source}_weight"):
                # an anatomy training never sees: reported, never used to pick the best
                held_out += [score["mean"]] * pairs if "mean" in score else []
                continue
            for key, values in totals.items():
                if key in score:
                    values += [score[key]] * pairs
        for key, values in totals.items():
            if values:
                result[key] = sum(values) / len(values)
        if held_out:
            result["held_out_dice"] = sum(held_out) / len(held_out)
        return result

    def close(self) -> None:
        self.loader = None


class _Logger:
    """History (JSON, rewritten atomically at each checkpoint) and optional TensorBoard."""

    def __init__(self, out: Path, enabled: bool, history: list[dict[str, Any]]) -> None:
        self.out = out
        self.enabled = enabled
        self.history = history
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except (ImportError, AttributeError):
            logger.info("tensorboard is not installed; metrics go to history.json only")
        else:
            self.writer = SummaryWriter(log_dir=str(out / _TENSORBOARD_DIR))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.history.append({"step": step, **values})
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        if not self.enabled:
            return
        write_json(self.out / _HISTORY_FILE, self.history)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse ``out`` before anything is written unless it is new, empty, or a run to resume.

    A training run is recognised by the files only the trainer writes, its trainer state and
    its last weights. Any other visible entry (a hidden one is never written over) may be the
    user's own file of the same name as one the trainer writes (``history.json``,
    ``config.json``), so a folder that holds one needs ``overwrite``.
    """
    if out.exists() and not out.is_dir():
        raise IntermodalError(
            f"{out}: exists and is not a folder; out must name a folder for the training run"
        )
    nearest = next((p for p in out.parents if p.exists()), None)
    if nearest is not None and not nearest.is_dir():
        raise IntermodalError(f"{out}: cannot create the folder, {nearest} is not a folder")
    if resume:
        if not (out / STATE_FILE).is_file():
            raise IntermodalError(f"{out}: nothing to resume from ({STATE_FILE} not found)")
        return
    if overwrite or not out.is_dir():
        return
    existing = [name for name in (STATE_FILE, MODEL_FILE) if (out / name).exists()]
    if existing:
        raise OutputExistsError(
            f"{out}: already holds a training run ({existing[0]}); resume it, choose another "
            f"output folder, or overwrite it"
        )
    if any(not entry.name.startswith(".") for entry in out.iterdir()):
        raise OutputExistsError(
            f"{out}: folder is not empty and holds no training run ({STATE_FILE}); choose "
            f"another output folder, or pass --overwrite to write into it"
        )


def _remove_earlier_run(out: Path) -> None:
    """Delete what an earlier run wrote in ``out``: its files and its TensorBoard events.

    Without this, an ``overwrite`` run that never beats a validation (or has none) would
    leave the earlier run's ``best.safetensors`` beside its own ``model.safetensors``. Other
    files are kept; so is ``tensorboard/`` itself when it holds anything but event files.
    """
    paths = [out / name for name in _RUN_FILES]
    tensorboard = out / _TENSORBOARD_DIR
    if tensorboard.is_dir():
        paths += sorted(tensorboard.glob("events.out.tfevents.*"))
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise IntermodalError(
                f"{path}: cannot remove this file of the earlier run: {err.strerror}"
            ) from err
    if tensorboard.is_dir() and not any(tensorboard.iterdir()):
        tensorboard.rmdir()


def _use_amp(config: TrainConfig, device: torch.device) -> bool:
    wanted = config.train.amp is True or config.train.amp == "auto"
    if config.train.amp is True and device.type != "cuda":
        logger.info("train.amp is on, but mixed precision is only used on CUDA; training in fp32")
    return wanted and device.type == "cuda"


def _machine(device: torch.device) -> dict[str, Any]:
    """Where the run trains, for the card."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        )
        or device.type,
    }


def _better(metric: str, score: dict[str, Any] | None, best: dict[str, Any] | None) -> bool:
    """Whether validation ``score`` beats ``best`` on ``metric`` (``dice`` or ``similarity``)."""
    key = "mean" if metric == "dice" else "similarity"
    if score is None or key not in score:
        return False
    if best is None or key not in best:
        return True
    return score[key] > best[key] if metric == "dice" else score[key] < best[key]


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: StepReport | None = None,
    command: str | None = None,
) -> Path:
    """Train a registration network on a prepared dataset or on generated pairs.

    Args:
        config: the checked settings (see :func:`~intermodal.training.config.load_config`).
        resume: continue the run in ``config.out`` from its last checkpoint, up to
            ``config.train.steps``. With the same configuration the result equals that of an
            uninterrupted run (on the CPU bit for bit).
        overwrite: start afresh even if ``config.out`` already holds a run or other files:
            the files a run writes (``model.*``, ``best.*``, ``trainer_state.*``,
            ``history.json``, ``config.json``, ``tensorboard/`` events) are removed first,
            once the configuration and data have passed their checks; other files are kept.
        progress: called after every step (on rank 0) with ``step`` (completed steps),
            ``steps``, ``loss``, the loss terms, ``steps_per_s``, ``lr``, ``wait_s`` (time
            the step waited for its data), ``generation_s`` (mean time to generate one of its
            pairs, generated data only) and, on steps that validate, ``validation_dice``.
        command: the command line that runs this training, recorded on the card.

    Returns:
        The last weights, ``config.out/model.safetensors`` (with ``model.json`` beside it).
        The weights with the best validation score so far are ``best.safetensors`` (and
        ``best.json``) beside them.

    Raises:
        IntermodalError: a bad manifest or prepared data (naming the subject), fewer than 2
            training subjects, ``config.out`` that is (or lies under) a file, nothing to
            resume, a resumed run whose network differs, or a non-finite loss (naming the
            step; the last good checkpoint stays in place).
        OutputExistsError: ``config.out`` holds a run, or is a folder that is not empty,
            and neither ``resume`` nor ``overwrite`` is set.
    """
    config.validate()
    if config.data.source == "manifest" and not config.data.manifest:
        raise IntermodalError(
            "config: data.manifest must name the prepared dataset's manifest (or set "
            "data.source = 'generator')"
        )
    distributed = setup_distributed(config.device)
    threads = torch.get_num_threads()
    if distributed.device.type == "cpu":
        torch.set_num_threads(_training_threads(config))
    try:
        return _train(
            config,
            distributed,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            command=command,
        )
    finally:
        torch.set_num_threads(threads)
        distributed.close()


def _training_threads(config: TrainConfig) -> int:
    """torch threads for training on the CPU: ``train.threads``, or the cores left free."""
    if config.train.threads:
        return config.train.threads
    if config.data.source == "generator":
        # torchrun's processes on this machine share its cores
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
        return max(1, (os.cpu_count() or 1) // local - config.generator.workers)
    return torch.get_num_threads()


def _train(
    config: TrainConfig,
    distributed: Distributed,
    *,
    resume: bool,
    overwrite: bool,
    progress: StepReport | None,
    command: str | None,
) -> Path:
    started = time.perf_counter()
    device = distributed.device
    out = Path(config.out)
    _check_output(out, resume, overwrite)
    # Every rank checks before rank 0 writes config.json, which would read as a foreign file.
    distributed.barrier()
    amp = _use_amp(config, device)
    if config.data.source == "generator":
        data: _ManifestData | _GeneratedData = _GeneratedData(config, distributed)
    else:
        data = _ManifestData(config, distributed)

    torch.manual_seed(config.train.seed)
    model = RegistrationModel(
        config.data.dim,
        features=tuple(config.model.features),
        output_stride=config.model.output_stride,
        integration_steps=config.model.integration_steps,
        instance_norm=config.model.instance_norm,
    )
    multiple = model.required_multiple
    if any(n % multiple for n in data.shape):
        raise IntermodalError(
            f"{data.where} {data.shape} must be a multiple of {multiple} along every axis for "
            f"model.features of length {len(config.model.features)}; prepare the data with a "
            f"padded grid or use fewer levels"
        )
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    # Mixed precision is bfloat16, which keeps float32's range: no gradient scaling.

    start_step, wall_time, history = 0, 0.0, []
    last_validation: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    if resume:
        model_state, optimizer_state, meta = load_state(out)
        if meta.get("network") != model.config():
            raise IntermodalError(
                f"{out}: the saved network {meta.get('network')} differs from the "
                f"configured one {model.config()}; resume with the same model settings"
            )
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        set_rng_states(meta["rng"])
        start_step = int(meta["step"])
        wall_time = float(meta.get("wall_time_s", 0.0))
        last_validation = meta.get("validation_dice")
        best = meta.get("best")
        history_file = out / _HISTORY_FILE
        if history_file.is_file():
            history = [
                e
                for e in json.loads(history_file.read_text(encoding="utf-8"))
                if e["step"] <= start_step
            ]
    if start_step >= config.train.steps:
        logger.info("run in %s is already at step %d of %d", out, start_step, config.train.steps)

    main = distributed.is_main
    if main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise IntermodalError(f"{out}: cannot create the folder: {err.strerror}") from err
        if overwrite and not resume:
            # Only now, once the data and the network have passed their checks, so a refused
            # configuration leaves the earlier run whole.
            _remove_earlier_run(out)
        write_json(out / _CONFIG_FILE, config.resolved())
    log = _Logger(out, main, history)
    if distributed.enabled:
        network: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        network = model
    model.train()

    identity = None
    if main and config.data.source == "generator":
        identity = data.validate(_identity_model(model), amp)
    good_step = start_step
    timing = {
        "steps": 0,
        "loop_s": 0.0,
        "wait_s": 0.0,
        "cpu_s": 0.0,
        "generation_s": 0.0,
        "pairs": 0,
    }

    def card(step: int, elapsed: float, validation: dict[str, Any] | None) -> dict[str, Any]:
        steps = max(timing["steps"], 1)
        return {
            "preprocessing": data.preprocessing,
            "training": {
                "config": config.resolved(),
                "loss": config.loss.name,
                "direction": config.train.direction,
                "steps": step,
                "wall_time_s": elapsed,
                "steps_per_s": timing["steps"] / max(timing["loop_s"], 1e-9),
                "step_s": {
                    "mean": timing["loop_s"] / steps,
                    "waiting_for_data": timing["wait_s"] / steps,
                    # this process's CPU time (all its threads): what the step costs on a
                    # machine that others share
                    "cpu": timing["cpu_s"] / steps,
                },
                "generation_s_per_pair": (
                    timing["generation_s"] / timing["pairs"] if timing["pairs"] else None
                ),
                "timed_steps": timing["steps"],
                "validation_dice": validation,
                "validation_identity": identity,
                "best": best,
                "data": data.card,
                "seed": config.train.seed,
                "world_size": distributed.world_size,
                "machine": _machine(device),
                "command": command,
                "amp": "bfloat16" if amp else None,
            },
        }

    def checkpoint(step: int) -> None:
        nonlocal good_step
        good_step = step
        if not main:
            return
        # History first: a run killed between the two writes then still has the history of
        # every step up to the saved state (resume drops entries past the state's step).
        log.flush()
        elapsed = wall_time + time.perf_counter() - started
        save_state(
            out,
            model,
            optimizer,
            {
                "step": step,
                "network": model.config(),
                "wall_time_s": elapsed,
                "validation_dice": last_validation,
                "best": best,
                "config": config.resolved(),
            },
        )
        save_model(model, out / MODEL_FILE, card(step, elapsed, last_validation))
        log.flush()

    def save_best(step: int) -> None:
        elapsed = wall_time + time.perf_counter() - started
        save_model(model, out / BEST_FILE, card(step, elapsed, last_validation))

    batches = data.batches(start_step)
    try:
        waited = time.perf_counter()
        for step, (batch, generation) in zip(range(start_step, config.train.steps), batches):
            done = step + 1
            began, began_cpu = time.perf_counter(), time.process_time()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                output = network(batch.network_fixed, batch.network_moving)
            loss, terms = training_loss(
                config.loss,
                output,
                batch,
                integration_steps=config.model.integration_steps,
                n_classes=data.n_classes,
                seed=config.train.seed * 1_000_003 + step,
            )
            mean_loss = _mean_loss(loss, distributed, done, out, good_step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.train.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), config.train.grad_clip
                )
                terms = {**terms, "grad_norm": float(grad_norm)}
            optimizer.step()
            finished = time.perf_counter()
            timing["steps"] += 1
            timing["loop_s"] += finished - waited
            timing["wait_s"] += began - waited
            timing["cpu_s"] += time.process_time() - began_cpu
            timing["generation_s"] += sum(generation)
            timing["pairs"] += len(generation)

            report: dict[str, Any] = {"step": done, "steps": config.train.steps, **terms}
            report["loss"] = mean_loss
            report["steps_per_s"] = timing["steps"] / max(timing["loop_s"], 1e-9)
            report["lr"] = optimizer.param_groups[0]["lr"]
            report["wait_s"] = began - waited
            if generation:
                report["generation_s"] = sum(generation) / len(generation)
            if done % config.train.log_every == 0 or done == config.train.steps:
                values = {f"train/{k}": v for k, v in terms.items()}
                log.log(done, {**values, "train/loss": mean_loss})
            validate_every = config.train.validate_every
            if main and (
                (validate_every and done % validate_every == 0) or done == config.train.steps
            ):
                validation = data.validate(model, amp)
                if validation is not None:
                    last_validation = {**validation, "step": done}
                    values = {}
                    if "mean" in validation:
                        report["validation_dice"] = validation["mean"]
                        values["validation/dice"] = validation["mean"]
                    if "similarity" in validation:
                        report["validation_similarity"] = validation["similarity"]
                        values["validation/similarity"] = validation["similarity"]
                    if "held_out_dice" in validation:
                        values["validation/held_out_dice"] = validation["held_out_dice"]
                    log.log(done, values)
                    if _better(config.train.best_metric, validation, best):
                        best = {
                            **{k: v for k, v in validation.items() if k != "per_label"},
                            "step": done,
                            "metric": config.train.best_metric,
                        }
                        save_best(done)
            every = config.train.checkpoint_every
            if (every and done % every == 0) or done == config.train.steps:
                checkpoint(done)
            if progress is not None and main:
                progress(report)
            waited = time.perf_counter()
        if start_step >= config.train.steps and main and not (out / MODEL_FILE).is_file():
            checkpoint(start_step)
    finally:
        batches.close()
        data.close()
        log.close()
    distributed.barrier()
    return out / MODEL_FILE


def _identity_model(model: RegistrationModel) -> RegistrationModel:
    """A copy of ``model`` that predicts a zero velocity: the score of no registration."""
    identity = RegistrationModel.from_config(model.config()).to(next(model.parameters()).device)
    with torch.no_grad():
        identity.unet.head.weight.zero_()
        identity.unet.head.bias.zero_()
    return identity


def _mean_loss(
    loss: Tensor, distributed: Distributed, step: int, out: Path, good_step: int
) -> float:
    """The loss averaged over processes; stop every process if it is not finite on any."""
    value = float(loss.detach())
    finite = math.isfinite(value)
    summed = torch.tensor([value if finite else 0.0, 0.0 if finite else 1.0], device=loss.device)
    mean, bad = (
        distributed.all_reduce_sum(summed)
        / torch.tensor([distributed.world_size, 1], device=loss.device)
    ).tolist()
    if bad == 0:
        return mean
    kept = (
        f"the last good checkpoint (step {good_step}) is kept in {out}"
        if good_step > 0 and (out / MODEL_FILE).exists()
        else "no checkpoint had been written yet"
    )
    raise IntermodalError(
        f"training stopped: the loss is not finite at step {step} ({value}); {kept}. "
        f"Try a lower train.lr or a larger loss.smoothness, then resume"
    )
