"""Training losses on a :class:`~intermodal.training.pairs.PairBatch`.

``intra`` is the supervision of Cao et al. (MLMI 2018). The network registers an
inter-modality pair, but because subject ``i``'s CT and MR are aligned (and so are subject
``j``'s), the one displacement ``u`` it predicts warps both of subject ``i``'s images onto
subject ``j``'s, and each can be compared with the image of its own modality::

    L = LNCC(CT_j, CT_i o phi) + LNCC(MR_j, MR_i o phi) + smoothness * diffusion(u)

whichever modality pair the network saw. With ``scales`` (e.g. ``[1, 2, 4]``) each LNCC is
the mean of the LNCCs of the images and of their 2x and 4x block averages.

``mi``, ``mind`` and ``ngf`` are baselines on the same pipeline that compare the network's
own inter-modality pair directly: ``S(fixed, moving o phi)``.

With ``symmetric`` the fixed images are also warped by the inverse transform ``exp(-v)``
and compared with the moving images; the two directions are averaged. A soft Dice term on
the warped one-hot labels can be added with weight ``dice``, and a penalty on local volume
change, the mean squared log Jacobian determinant of ``u``, with weight ``volume_penalty``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

from intermodal.losses import (
    diffusion,
    lncc,
    log_jacobian_penalty,
    mind_loss,
    mutual_information_loss,
    ngf,
)
from intermodal.networks import RegistrationOutput
from intermodal.spatial import integrate_velocity, resize_displacement, warp
from intermodal.training.config import LossConfig
from intermodal.training.pairs import PairBatch

__all__ = ["inverse_displacement", "multiscale_lncc", "soft_dice_loss", "training_loss"]


def inverse_displacement(velocity: Tensor, shape: tuple[int, ...], steps: int) -> Tensor:
    """The displacement of ``exp(-v)`` on the image grid, the inverse of the model's field.

    Args:
        velocity: ``(B, ndim, *coarse)`` in voxels of the coarse grid.
        shape: the image grid's spatial shape.
        steps: the model's scaling-and-squaring steps (0: ``-v`` as a displacement).

    Returns:
        ``(B, ndim, *shape)`` in voxels.
    """
    return resize_displacement(integrate_velocity(-velocity, steps=steps), shape)


def soft_dice_loss(
    moving_labels: Tensor, fixed_labels: Tensor, displacement: Tensor, n_classes: int
) -> Tensor:
    """``1 -`` mean soft Dice over foreground classes of the warped one-hot moving labels.

    The one-hot maps of ``moving_labels`` are warped linearly (so the loss has a gradient)
    and compared with the one-hot ``fixed_labels``; classes absent from both are skipped.

    Args:
        moving_labels: ``(B, 1, *spatial)`` integer labels.
        fixed_labels: ``(B, 1, *spatial)`` integer labels.
        displacement: ``(B, ndim, *spatial)`` in voxels.
        n_classes: one more than the largest label value.

    Returns:
        Scalar in ``[0, 1]``.
    """

    def one_hot(labels: Tensor) -> Tensor:
        encoded = F.one_hot(labels[:, 0].long().clamp(0, n_classes - 1), n_classes)
        return encoded.movedim(-1, 1).to(displacement.dtype)

    warped = warp(one_hot(moving_labels), displacement)[:, 1:]
    fixed = one_hot(fixed_labels)[:, 1:]
    dims = tuple(range(2, warped.ndim))
    overlap = (warped * fixed).sum(dims)
    total = warped.sum(dims) + fixed.sum(dims)
    present = total > 0
    if not bool(present.any()):
        return displacement.sum() * 0
    dice = 2 * overlap[present] / total[present]
    return 1 - dice.mean()


def multiscale_lncc(fixed: Tensor, warped: Tensor, window: int, scales: Sequence[int]) -> Tensor:
    """LNCC averaged over block-average scales of the pair (:func:`intermodal.losses.lncc`).

    Args:
        fixed: ``(B, C, *spatial)``.
        warped: the warped moving image, the same shape.
        window: the LNCC box width in voxels of each scale (odd).
        scales: block-average factors, e.g. ``(1, 2, 4)``; 1 is the images themselves. A
            factor that leaves fewer than 2 voxels along an axis is skipped.

    Returns:
        Scalar in ``[-1, 0]``.
    """
    terms = []
    for factor in scales:
        if factor == 1:
            terms.append(lncc(fixed, warped, window))
        elif min(fixed.shape[2:]) // factor >= 2:
            # block averages (a trailing partial block is dropped)
            pool = F.avg_pool3d if fixed.ndim == 5 else F.avg_pool2d
            terms.append(lncc(pool(fixed, factor), pool(warped, factor), window))
    return sum(terms) / len(terms)


def _similarity(config: LossConfig, seed: int) -> Callable[[Tensor, Tensor], Tensor]:
    """The inter-modality similarity of a baseline loss, as ``f(fixed, warped)``."""
    if config.name == "mi":
        samples = config.mi_samples or None

        def mi(fixed: Tensor, warped: Tensor) -> Tensor:
            return mutual_information_loss(
                fixed, warped, bins=config.mi_bins, num_samples=samples, seed=seed
            )

        return mi
    if config.name == "mind":
        return mind_loss
    return ngf


def training_loss(
    config: LossConfig,
    output: RegistrationOutput,
    batch: PairBatch,
    *,
    integration_steps: int,
    n_classes: int = 0,
    seed: int = 0,
) -> tuple[Tensor, dict[str, float]]:
    """The loss of one batch, and its terms for logging.

    Args:
        config: which loss and its weights.
        output: the model's output for ``(batch.network_fixed, batch.network_moving)``.
        batch: the pairs, see :class:`~intermodal.training.pairs.PairBatch`.
        integration_steps: the model's scaling-and-squaring steps (for the inverse field).
        n_classes: one more than the largest label value (for the Dice term).
        seed: makes the voxel sampling of ``mi`` (with ``mi_samples``) deterministic.

    Returns:
        ``(loss, terms)``: the scalar to minimise and a dict of floats (``similarity``,
        ``smoothness``, ``volume`` and ``dice`` where used, ``loss``).
    """
    displacement = output.displacement.float()
    shape = tuple(displacement.shape[2:])
    inverse = None
    if config.symmetric:
        inverse = inverse_displacement(output.velocity.float(), shape, integration_steps)

    def one_way(moving: tuple[Tensor, Tensor], fixed: tuple[Tensor, Tensor], field: Tensor):
        if config.name == "intra":
            return sum(
                multiscale_lncc(f, warp(m, field), config.lncc_window, config.scales)
                for m, f in zip(moving, fixed)
            )
        similarity = _similarity(config, seed)
        return similarity(fixed[0], warp(moving[0], field))

    if config.name == "intra":
        moving, fixed = (batch.moving_ct, batch.moving_mr), (batch.fixed_ct, batch.fixed_mr)
    else:
        moving, fixed = (batch.seen_moving,) * 2, (batch.seen_fixed,) * 2
    similarity = one_way(moving, fixed, displacement)
    smoothness = diffusion(displacement)
    if inverse is not None:
        similarity = 0.5 * (similarity + one_way(fixed, moving, inverse))
        smoothness = 0.5 * (smoothness + diffusion(inverse))
    loss = similarity + config.smoothness * smoothness
    terms = {"similarity": float(similarity.detach()), "smoothness": float(smoothness.detach())}
    if config.volume_penalty > 0:
        volume = log_jacobian_penalty(displacement)
        if inverse is not None:
            volume = 0.5 * (volume + log_jacobian_penalty(inverse))
        loss = loss + config.volume_penalty * volume
        terms["volume"] = float(volume.detach())
    if config.dice > 0 and batch.moving_labels is not None and batch.fixed_labels is not None:
        dice = soft_dice_loss(batch.moving_labels, batch.fixed_labels, displacement, n_classes)
        if inverse is not None:
            dice = 0.5 * (
                dice + soft_dice_loss(batch.fixed_labels, batch.moving_labels, inverse, n_classes)
            )
        loss = loss + config.dice * dice
        terms["dice"] = float(dice.detach())
    terms["loss"] = float(loss.detach())
    return loss, terms
