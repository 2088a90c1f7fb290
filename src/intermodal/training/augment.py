"""Random augmentation for training pairs, in torch, drawn from an explicit generator.

A subject's CT, MR and labels are aligned, so one random affine is drawn per subject and
applied to all three (labels by nearest neighbour, so their values stay exact). Intensity
changes (gamma, smooth bias field, Gaussian noise) are drawn per image.

Every random number comes from the CPU :class:`torch.Generator` passed in, and the same
numbers are drawn whether or not an augmentation ends up applied, so a given generator
state always gives the same result on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from intermodal.spatial import identity_grid, warp
from intermodal.training.config import AugmentConfig

__all__ = ["augment_intensity", "random_affine", "warp_subject"]

_BIAS_CONTROL_POINTS = 4


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _rotation(angles: Tensor, ndim: int) -> Tensor:
    """``(ndim, ndim)`` rotation from radians: one angle in 2D, ``Rz Ry Rx`` in 3D."""
    if ndim == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    rotation = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles.tolist()):
        c, s = math.cos(angle), math.sin(angle)
        a, b = [k for k in range(3) if k != axis]
        plane = torch.eye(3, dtype=torch.float64)
        plane[a, a], plane[a, b], plane[b, a], plane[b, b] = c, -s, s, c
        rotation = plane @ rotation
    return rotation


def random_affine(
    batch: int, ndim: int, config: AugmentConfig, generator: torch.Generator
) -> Tensor:
    """Draw ``batch`` random linear maps (rotation times scaling) about the grid centre.

    With probability ``config.probability`` a sample gets a rotation of up to
    ``config.affine_degrees`` about each axis (the in-plane axis in 2D) and a scaling of
    ``1 +- config.affine_scale`` per axis; otherwise the identity.

    Args:
        batch: number of matrices.
        ndim: 2 or 3.
        config: augmentation settings.
        generator: CPU generator for every draw.

    Returns:
        ``(batch, ndim, ndim)`` float64, acting on voxel offsets from the grid centre in
        array order (a voxel grid that is far from isotropic is rotated in voxel units).
    """
    n_angles = 1 if ndim == 2 else 3
    limit = math.radians(config.affine_degrees)
    apply = _uniform((batch,), 0, 1, generator) < config.probability
    angles = _uniform((batch, n_angles), -limit, limit, generator)
    scales = _uniform((batch, ndim), 1 - config.affine_scale, 1 + config.affine_scale, generator)
    matrices = torch.eye(ndim, dtype=torch.float64).repeat(batch, 1, 1)
    for b in range(batch):
        if apply[b]:
            matrices[b] = _rotation(angles[b], ndim) @ torch.diag(scales[b])
    return matrices


def warp_subject(
    ct: Tensor, mr: Tensor, labels: Tensor | None, matrices: Tensor
) -> list[Tensor | None]:
    """Apply one linear map per sample, about the grid centre, to aligned CT, MR and labels.

    Output voxel ``x`` shows input voxel ``c + A (x - c)``, ``c`` the grid centre. Images are
    sampled linearly, labels by nearest neighbour; outside the image both are 0.

    Args:
        ct: ``(B, 1, *spatial)``.
        mr: ``(B, 1, *spatial)``.
        labels: ``(B, 1, *spatial)`` integer labels, or None.
        matrices: ``(B, ndim, ndim)`` from :func:`random_affine`.

    Returns:
        ``[ct, mr, labels]`` warped, same shapes and dtypes (``labels`` None if it was).
    """
    shape = tuple(ct.shape[2:])
    ndim = len(shape)
    grid = identity_grid(shape, device=ct.device, dtype=torch.float32)
    centre = torch.tensor([(n - 1) / 2 for n in shape], device=ct.device).view(ndim, *[1] * ndim)
    offsets = (grid - centre).flatten(1)  # (ndim, N)
    linear = matrices.to(ct.device, torch.float32) - torch.eye(ndim, device=ct.device)
    displacement = (linear @ offsets).view(-1, ndim, *shape)
    warped = [
        warp(ct, displacement, padding_mode="zeros"),
        warp(mr, displacement, padding_mode="zeros"),
        None
        if labels is None
        else warp(labels, displacement, mode="nearest", padding_mode="zeros"),
    ]
    return warped


def augment_intensity(image: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Random gamma, smooth multiplicative bias field and Gaussian noise, per sample.

    Each of the three is applied with probability ``config.probability``:
    ``image ** exp(N(0, gamma))`` (image clamped to [0, 1] first),
    ``image * exp(bias * smooth N(0, 1))`` (a 4-per-axis grid of draws, upsampled linearly)
    and ``image + U(0, noise) * N(0, 1)``.

    Args:
        image: ``(B, C, *spatial)``, intensities in [0, 1].
        config: augmentation settings.
        generator: CPU generator for every draw.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    batch, ndim = image.shape[0], image.ndim - 2
    spatial = tuple(image.shape[2:])
    view = (batch, *[1] * (image.ndim - 1))
    apply = (_uniform((3, batch), 0, 1, generator) < config.probability).to(image.dtype)
    gamma = torch.exp(config.gamma * torch.randn(batch, generator=generator))
    control = torch.randn((batch, 1, *[_BIAS_CONTROL_POINTS] * ndim), generator=generator)
    noise_sd = config.noise * torch.rand(batch, generator=generator)
    noise = torch.randn(image.shape, generator=generator)

    device, dtype = image.device, image.dtype
    apply = apply.to(device)
    result = image.clamp(0, 1)
    gamma = torch.where(apply[0] > 0, gamma.to(device, dtype), torch.ones((), device=device))
    result = result ** gamma.view(view)
    mode = "bilinear" if ndim == 2 else "trilinear"
    field = F.interpolate(control.to(device, dtype), size=spatial, mode=mode, align_corners=True)
    result = result * torch.exp(config.bias * apply[1].view(view) * field)
    sd = (apply[2] * noise_sd.to(device, dtype)).view(view)
    return result + sd * noise.to(device, dtype)
