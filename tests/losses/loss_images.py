"""Synthetic images with known properties for the loss tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHAPES = {2: (64, 64), 3: (32, 32, 32)}


def smooth_image(ndim: int, seed: int, width: int = 4) -> torch.Tensor:
    """A random smooth image ``(1, 1, *SHAPES[ndim])`` scaled to ``[0, 1]``."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 1, *SHAPES[ndim], generator=generator)
    pool = F.avg_pool2d if ndim == 2 else F.avg_pool3d
    for _ in range(3):
        image = pool(image, 2 * width + 1, stride=1, padding=width, count_include_pad=False)
    return (image - image.min()) / (image.max() - image.min())


def noise_image(ndim: int, seed: int) -> torch.Tensor:
    """Independent uniform noise ``(1, 1, *SHAPES[ndim])`` in ``[0, 1]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, *SHAPES[ndim], generator=generator)


def ramp(ndim: int) -> torch.Tensor:
    """A linear ramp along the last axis, ``(1, 1, *SHAPES[ndim])`` in ``[0, 1]``."""
    shape = SHAPES[ndim]
    values = torch.linspace(0, 1, shape[-1])
    return values.expand(*shape).reshape(1, 1, *shape).clone()
