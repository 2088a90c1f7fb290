"""The training loop: intra-modality supervised inter-modality registration (Cao et al. 2018).

Each step draws pairs ``(i, j)``, ``i != j``, from the training split of a prepared dataset,
shows the network ``(CT_j, MR_i)`` (or ``(MR_j, CT_i)``), and minimises the loss of
:mod:`intermodal.training.objectives`. The run's folder (``config.out``) receives:

- ``model.safetensors`` and ``model.json``: the weights and model card
  (:mod:`intermodal.checkpoint`), at every checkpoint and at the end;
- ``trainer_state.safetensors`` (and a JSON copy): weights, optimiser and step, for ``resume``;
- ``history.json``: the training loss every ``log_every`` steps and the validation Dice;
- ``config.json``: the resolved configuration;
- ``tensorboard/``: the same scalars, when ``tensorboard`` is installed.

Every file is written atomically. Under ``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from intermodal.checkpoint import save_model
from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.networks import RegistrationModel
from intermodal.preprocess import DEFAULT_HU_WINDOW, DEFAULT_MR_PERCENTILES
from intermodal.spatial import warp
from intermodal.training.config import TrainConfig
from intermodal.training.distributed import Distributed, setup_distributed
from intermodal.training.objectives import training_loss
from intermodal.training.pairs import (
    Pair,
    make_batch,
    sample_pairs,
    step_generator,
    validation_pairs,
)
from intermodal.training.state import STATE_FILE, load_state, save_state, set_rng_states, write_json
from intermodal.training.volumes import Volumes, load_volumes

__all__ = ["MODEL_FILE", "train", "validation_dice"]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"

Progress = Callable[[dict[str, Any]], None]


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
    was_training = model.training
    model.eval()
    scores: list[float] = []
    per_label: dict[int, list[float]] = {value: [] for value in label_values}
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = make_batch(volumes.ct, volumes.mr, volumes.labels, chunk)
            displacement = model(batch.network_fixed, batch.network_moving).displacement
            warped = warp(batch.moving_labels, displacement.float(), mode="nearest")
            for b in range(len(chunk)):
                pair_scores = []
                for value in label_values:
                    in_warped = warped[b] == value
                    in_fixed = batch.fixed_labels[b] == value
                    total = int(in_warped.sum() + in_fixed.sum())
                    if total:
                        dice = 2 * float((in_warped & in_fixed).sum()) / total
                        pair_scores.append(dice)
                        per_label[value].append(dice)
                if pair_scores:
                    scores.append(sum(pair_scores) / len(pair_scores))
    model.train(was_training)
    if not scores:
        return None
    return {
        "mean": sum(scores) / len(scores),
        "per_label": {str(v): sum(s) / len(s) for v, s in per_label.items() if s},
    }


def _preprocessing_card(manifest_path: Path, volumes: Volumes) -> dict[str, Any]:
    """The grid and intensity scaling the model was trained on, for its card."""
    normalisation: Any = {
        "ct": {"hu_window": list(DEFAULT_HU_WINDOW)},
        "mr": {"percentiles": list(DEFAULT_MR_PERCENTILES)},
        "range": [0.0, 1.0],
    }
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
            self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

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
        write_json(self.out / "history.json", self.history)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check_output(out: Path, resume: bool, overwrite: bool) -> None:
    existing = [name for name in (STATE_FILE, MODEL_FILE) if (out / name).exists()]
    if resume:
        if not (out / STATE_FILE).is_file():
            raise IntermodalError(f"{out}: nothing to resume from ({STATE_FILE} not found)")
    elif existing and not overwrite:
        raise OutputExistsError(
            f"{out}: already holds a training run ({existing[0]}); resume it, choose another "
            f"output folder, or overwrite it"
        )


def _use_amp(config: TrainConfig, device: torch.device) -> bool:
    wanted = config.train.amp is True or config.train.amp == "auto"
    if config.train.amp is True and device.type != "cuda":
        logger.info("train.amp is on, but mixed precision is only used on CUDA; training in fp32")
    return wanted and device.type == "cuda"


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Train a registration network on a prepared dataset.

    Args:
        config: the checked settings (see :func:`~intermodal.training.config.load_config`).
        resume: continue the run in ``config.out`` from its last checkpoint, up to
            ``config.train.steps``. With the same configuration the result equals that of an
            uninterrupted run (on the CPU bit for bit).
        overwrite: start afresh even if ``config.out`` already holds a run.
        progress: called after every step (on rank 0) with ``step`` (completed steps),
            ``steps``, ``loss``, the loss terms, ``steps_per_s``, ``lr`` and, on steps
            that validate, ``validation_dice``.

    Returns:
        The final weights, ``config.out/model.safetensors`` (with ``model.json`` beside it).

    Raises:
        IntermodalError: a bad manifest or prepared data (naming the subject), fewer than 2
            training subjects, nothing to resume, a resumed run whose network differs, or a
            non-finite loss (naming the step; the last good checkpoint stays in place).
        OutputExistsError: ``config.out`` holds a run and neither ``resume`` nor
            ``overwrite`` is set.
    """
    config.validate()
    if not config.data.manifest:
        raise IntermodalError("config: data.manifest must name the prepared dataset's manifest")
    distributed = setup_distributed(config.device)
    try:
        return _train(config, distributed, resume=resume, overwrite=overwrite, progress=progress)
    finally:
        distributed.close()


def _train(
    config: TrainConfig,
    distributed: Distributed,
    *,
    resume: bool,
    overwrite: bool,
    progress: Progress | None,
) -> Path:
    from intermodal.data.manifest import load_manifest

    started = time.perf_counter()
    device = distributed.device
    out = Path(config.out)
    _check_output(out, resume, overwrite)
    manifest = load_manifest(config.data.manifest)
    dim = config.data.dim
    labels = "required" if config.loss.dice > 0 else "if_all"
    train_volumes = load_volumes(manifest, "training", dim=dim, labels=labels)
    if len(train_volumes) < 2:
        raise IntermodalError(
            f"{manifest.path}: training needs at least 2 subjects in the 'training' split "
            f"(pairs i != j), it has {len(train_volumes)}"
        )
    validation_volumes = None
    if manifest.splits.get("validation"):
        validation_volumes = load_volumes(
            manifest, "validation", dim=dim, labels="if_all", reference=train_volumes
        )
    label_values = [int(k) for k in manifest.labels] or [0]
    if train_volumes.labels is not None:
        label_values.append(int(train_volumes.labels.max()))
    n_classes = 1 + max(label_values)

    torch.manual_seed(config.train.seed)
    model = RegistrationModel(
        dim,
        features=tuple(config.model.features),
        output_stride=config.model.output_stride,
        integration_steps=config.model.integration_steps,
        instance_norm=config.model.instance_norm,
    )
    multiple = model.required_multiple
    if any(n % multiple for n in train_volumes.shape):
        raise IntermodalError(
            f"{manifest.path}: the prepared grid {train_volumes.shape} must be a multiple of "
            f"{multiple} along every axis for model.features of length "
            f"{len(config.model.features)}; prepare the data with a padded grid or use fewer "
            f"levels"
        )
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    amp = _use_amp(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_step, wall_time, history = 0, 0.0, []
    last_validation: dict[str, Any] | None = None
    if resume:
        model_state, optimizer_state, meta = load_state(out)
        if meta.get("network") != model.config():
            raise IntermodalError(
                f"{out}: the saved network {meta.get('network')} differs from the "
                f"configured one {model.config()}; resume with the same model settings"
            )
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        set_rng_states(meta["rng"])
        start_step = int(meta["step"])
        wall_time = float(meta.get("wall_time_s", 0.0))
        last_validation = meta.get("validation_dice")
        history_file = out / "history.json"
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
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config.resolved())
    log = _Logger(out, main, history)
    train_volumes = train_volumes.to(device)
    if validation_volumes is not None:
        validation_volumes = validation_volumes.to(device)
    if distributed.enabled:
        network: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        network = model
    model.train()

    preprocessing = _preprocessing_card(manifest.path, train_volumes)
    n_validation = 0 if validation_volumes is None else len(validation_volumes)
    val_pairs = (
        [] if validation_volumes is None else validation_pairs(n_validation, config.train.direction)
    )
    good_step = start_step

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
                "scaler": scaler.state_dict() if amp else None,
                "wall_time_s": elapsed,
                "validation_dice": last_validation,
                "config": config.resolved(),
            },
        )
        card = {
            "preprocessing": preprocessing,
            "training": {
                "config": config.resolved(),
                "loss": config.loss.name,
                "direction": config.train.direction,
                "steps": step,
                "wall_time_s": elapsed,
                "validation_dice": last_validation,
                "data": {
                    "manifest": str(config.data.manifest),
                    "subjects": len(train_volumes),
                    "n_validation": n_validation,
                },
                "seed": config.train.seed,
                "world_size": distributed.world_size,
            },
        }
        save_model(model, out / MODEL_FILE, card)
        log.flush()

    loop_start, loop_first = time.perf_counter(), start_step
    try:
        for step in range(start_step, config.train.steps):
            done = step + 1
            pairs = sample_pairs(
                len(train_volumes),
                config.train.batch_size,
                seed=config.train.seed,
                step=step,
                rank=distributed.rank,
                direction=config.train.direction,
            )
            batch = make_batch(
                train_volumes.ct,
                train_volumes.mr,
                train_volumes.labels,
                pairs,
                augment=config.augment,
                generator=step_generator(config.train.seed, step, distributed.rank),
            )
            with torch.autocast(device_type=device.type, enabled=amp):
                output = network(batch.network_fixed, batch.network_moving)
            loss, terms = training_loss(
                config.loss,
                output,
                batch,
                integration_steps=config.model.integration_steps,
                n_classes=n_classes,
                seed=config.train.seed * 1_000_003 + step,
            )
            mean_loss = _mean_loss(loss, distributed, done, out, good_step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

            report: dict[str, Any] = {"step": done, "steps": config.train.steps, **terms}
            report["loss"] = mean_loss
            report["steps_per_s"] = (done - loop_first) / max(
                time.perf_counter() - loop_start, 1e-9
            )
            report["lr"] = optimizer.param_groups[0]["lr"]
            if done % config.train.log_every == 0 or done == config.train.steps:
                values = {f"train/{k}": v for k, v in terms.items()}
                log.log(done, {**values, "train/loss": mean_loss})
            validate_every = config.train.validate_every
            if (
                val_pairs
                and main
                and ((validate_every and done % validate_every == 0) or done == config.train.steps)
            ):
                last_validation = validation_dice(
                    model,
                    validation_volumes,
                    val_pairs,
                    config.data.validation_labels,
                    config.train.batch_size,
                )
                if last_validation is not None:
                    last_validation["step"] = done
                    report["validation_dice"] = last_validation["mean"]
                    log.log(done, {"validation/dice": last_validation["mean"]})
            every = config.train.checkpoint_every
            if (every and done % every == 0) or done == config.train.steps:
                checkpoint(done)
            if progress is not None and main:
                progress(report)
        if start_step >= config.train.steps and main and not (out / MODEL_FILE).is_file():
            checkpoint(start_step)
    finally:
        log.close()
    distributed.barrier()
    return out / MODEL_FILE


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
