"""The box mean behind LNCC and MIND-SSC: the clipped-box mean that average pooling gives."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from intermodal.losses.similarity import _box_mean


def _pooled(image: torch.Tensor, size: int) -> torch.Tensor:
    """The reference: for every voxel, the plain mean over its box clipped to the image."""
    reach = size // 2
    out = torch.empty_like(image)
    for index in itertools.product(*(range(n) for n in image.shape[2:])):
        box = tuple(slice(max(i - reach, 0), i + reach + 1) for i in index)
        out[(..., *index)] = image[(..., *box)].flatten(2).mean(2)
    return out


def test_reference_is_the_mean_over_the_clipped_box():
    image = torch.arange(5.0, dtype=torch.float64).view(1, 1, 5, 1)
    expected = torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0], dtype=torch.float64).view(1, 1, 5, 1)
    torch.testing.assert_close(_pooled(image, 5), expected)
    torch.testing.assert_close(_box_mean(image, 5), expected)


@pytest.mark.parametrize("size", [1, 3, 5, 9])
@pytest.mark.parametrize("shape", [(2, 3, 11, 7), (1, 2, 6, 9, 4)])
def test_box_mean_equals_pooling_with_the_border_clipped(shape, size):
    torch.manual_seed(0)
    image = torch.rand(shape, dtype=torch.float64)
    # a 9-wide box is larger than the 4- to 7-voxel axes: every voxel sees a clipped box
    torch.testing.assert_close(_box_mean(image, size), _pooled(image, size))


def test_box_mean_gradient_equals_pooling():
    torch.manual_seed(1)
    image = torch.rand(1, 2, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(1, 2, 8, 5, 6, dtype=torch.float64)
    (ours,) = torch.autograd.grad((_box_mean(image, 5) * weights).sum(), image)
    pooled = F.avg_pool3d(image, 5, stride=1, padding=2, count_include_pad=False)
    (reference,) = torch.autograd.grad((pooled * weights).sum(), image)
    torch.testing.assert_close(ours, reference)
    assert image.grad is None
