"""Which subjects are paired at each training step, and the batch tensors of those pairs.

Every draw depends only on ``(seed, step, rank)``: a run resumed at step ``k`` sees the same
pairs and augmentations as an uninterrupted run, and every DDP process sees different pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from intermodal.errors import IntermodalError
from intermodal.training.augment import augment_intensity, random_affine, warp_subject
from intermodal.training.config import DIRECTIONS, AugmentConfig

__all__ = [
    "Pair",
    "PairBatch",
    "generated_batch",
    "make_batch",
    "sample_pairs",
    "step_generator",
    "validation_pairs",
]

# A fixed stream tag so that the pair draws and the augmentation draws never share numbers.
_PAIR_STREAM = 0
_AUGMENT_STREAM = 1


@dataclass(frozen=True)
class Pair:
    """One training sample: subject ``moving`` registered onto subject ``fixed``.

    Attributes:
        moving: index of subject ``i`` in the training split.
        fixed: index of subject ``j``, never equal to ``moving``.
        ct_moving: False: the network sees ``(fixed=CT_j, moving=MR_i)`` (MR to CT, as in the
            paper); True: it sees ``(fixed=MR_j, moving=CT_i)``.
    """

    moving: int
    fixed: int
    ct_moving: bool = False


def _seed_sequence(seed: int, step: int, rank: int, stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), int(step), int(rank), stream])


def sample_pairs(
    n_subjects: int,
    batch_size: int,
    *,
    seed: int,
    step: int,
    rank: int = 0,
    direction: str = "mr_to_ct",
) -> list[Pair]:
    """Draw ``batch_size`` ordered pairs ``(i, j)``, ``i != j``, for one step of one process.

    Args:
        n_subjects: subjects in the training split, at least 2.
        batch_size: pairs to draw.
        seed: the run's seed.
        step: the training step (0-based); each step draws afresh.
        rank: the DDP process; different ranks draw different pairs.
        direction: ``mr_to_ct``, ``ct_to_mr`` or ``both`` (each pair flips a fair coin).

    Returns:
        ``batch_size`` :class:`Pair` objects, the same for the same arguments.

    Raises:
        IntermodalError: fewer than 2 subjects or an unknown direction.
    """
    if n_subjects < 2:
        raise IntermodalError(
            f"training needs at least 2 subjects to pair (i != j), the training split has "
            f"{n_subjects}"
        )
    if direction not in DIRECTIONS:
        raise IntermodalError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    rng = np.random.default_rng(_seed_sequence(seed, step, rank, _PAIR_STREAM))
    pairs = []
    for _ in range(batch_size):
        moving = int(rng.integers(n_subjects))
        # j uniform over the other n - 1 subjects
        fixed = int(rng.integers(n_subjects - 1))
        fixed += fixed >= moving
        flip = bool(rng.random() < 0.5)
        ct_moving = direction == "ct_to_mr" or (direction == "both" and flip)
        pairs.append(Pair(moving, fixed, ct_moving))
    return pairs


def validation_pairs(n_subjects: int, direction: str = "mr_to_ct") -> list[Pair]:
    """Fixed validation pairs: each subject ``i`` onto subject ``i + 1`` (cyclically).

    ``both`` validates MR to CT, the paper's direction. Fewer than 2 subjects: no pairs.
    """
    if n_subjects < 2:
        return []
    ct_moving = direction == "ct_to_mr"
    return [Pair(i, (i + 1) % n_subjects, ct_moving) for i in range(n_subjects)]


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator for the augmentation of one step of one process."""
    state = _seed_sequence(seed, step, rank, _AUGMENT_STREAM).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class PairBatch(NamedTuple):
    """A batch of pairs, every tensor ``(B, 1, *spatial)`` on one grid.

    The ``moving_*`` images are subject ``i``'s, the ``fixed_*`` subject ``j``'s, after the
    geometric augmentation (one affine per subject, the same for its CT, MR and labels).
    ``network_fixed``/``network_moving`` are what the network sees: ``(CT_j, MR_i)``, or
    ``(MR_j, CT_i)`` where ``ct_moving`` is set, with the intensity augmentation on top.
    Labels are int64, or None when the data has none.
    """

    moving_mr: Tensor
    moving_ct: Tensor
    fixed_ct: Tensor
    fixed_mr: Tensor
    moving_labels: Tensor | None
    fixed_labels: Tensor | None
    ct_moving: Tensor
    network_fixed: Tensor
    network_moving: Tensor

    @property
    def seen_fixed(self) -> Tensor:
        """The fixed image of the network's pair, without intensity augmentation."""
        mask = _batch_mask(self.ct_moving, self.fixed_ct)
        return torch.where(mask, self.fixed_mr, self.fixed_ct)

    @property
    def seen_moving(self) -> Tensor:
        """The moving image of the network's pair, without intensity augmentation."""
        mask = _batch_mask(self.ct_moving, self.moving_ct)
        return torch.where(mask, self.moving_ct, self.moving_mr)


def _batch_mask(flags: Tensor, like: Tensor) -> Tensor:
    return flags.view(-1, *([1] * (like.ndim - 1))).to(like.device)


def make_batch(
    ct: Tensor,
    mr: Tensor,
    labels: Tensor | None,
    pairs: Sequence[Pair],
    *,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> PairBatch:
    """Gather the images of ``pairs`` and augment them.

    Args:
        ct: ``(N, 1, *spatial)`` CTs of the split, intensities in [0, 1].
        mr: ``(N, 1, *spatial)`` MRs, aligned with the CTs subject by subject.
        labels: ``(N, 1, *spatial)`` integer labels on the same grid, or None.
        pairs: the pairs of this step.
        augment: augmentation settings; None or ``probability == 0`` for none.
        generator: CPU generator for the augmentation draws (needed with ``augment``).

    Returns:
        A :class:`PairBatch` on the device of ``ct``.
    """
    moving_idx = torch.tensor([p.moving for p in pairs], device=ct.device)
    fixed_idx = torch.tensor([p.fixed for p in pairs], device=ct.device)
    ct_moving = torch.tensor([p.ct_moving for p in pairs], device=ct.device)
    moving = [ct[moving_idx], mr[moving_idx], None if labels is None else labels[moving_idx]]
    fixed = [ct[fixed_idx], mr[fixed_idx], None if labels is None else labels[fixed_idx]]
    active = augment is not None and augment.probability > 0
    if active:
        if generator is None:
            raise IntermodalError("make_batch: augmentation needs a torch.Generator")
        ndim = ct.ndim - 2
        for images in (moving, fixed):
            matrices = random_affine(len(pairs), ndim, augment, generator)
            images[:] = warp_subject(images[0], images[1], images[2], matrices)
    moving_ct, moving_mr, moving_labels = moving
    fixed_ct, fixed_mr, fixed_labels = fixed
    batch = PairBatch(
        moving_mr,
        moving_ct,
        fixed_ct,
        fixed_mr,
        moving_labels,
        fixed_labels,
        ct_moving,
        fixed_ct,
        moving_mr,
    )
    network_fixed, network_moving = batch.seen_fixed, batch.seen_moving
    if active:
        network_fixed = augment_intensity(network_fixed, augment, generator)
        network_moving = augment_intensity(network_moving, augment, generator)
    return batch._replace(network_fixed=network_fixed, network_moving=network_moving)


def generated_batch(items: Mapping[str, Any], device: torch.device | str) -> PairBatch:
    """A :class:`PairBatch` of generated pairs (a batch of :mod:`intermodal.data.generator`).

    Args:
        items: what :func:`intermodal.data.generator.collate_pairs` returns: ``moving_ct``,
            ``moving_mr``, ``fixed_ct``, ``fixed_mr`` (the images the loss compares),
            ``network_fixed``, ``network_moving`` (the images the network sees),
            ``moving_labels``, ``fixed_labels`` ``(B, 1, *spatial)`` and ``ct_moving`` ``(B,)``
            bool.
        device: where the batch goes.

    Returns:
        The batch: the network sees ``(CT_j, MR_i)``, or ``(MR_j, CT_i)`` where ``ct_moving``,
        as acquired (with a couch and crops where the generator drew them).
    """
    moved = {
        name: items[name].to(device, non_blocking=True)
        for name in (
            "moving_mr",
            "moving_ct",
            "fixed_ct",
            "fixed_mr",
            "moving_labels",
            "fixed_labels",
            "ct_moving",
        )
    }
    return PairBatch(
        **moved,
        network_fixed=items["network_fixed"].to(device, non_blocking=True),
        network_moving=items["network_moving"].to(device, non_blocking=True),
    )
