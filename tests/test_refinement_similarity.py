"""The refinement's similarity: MIND-SSC, NGF and mutual information, as functions of the field."""

from __future__ import annotations

import pytest
import torch

from intermodal.losses import mind_descriptor_loss, mind_ssc, ngf, parzen_mutual_information
from intermodal.registration import MI_BINS, _similarity_loss


def _pair(ndim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (1, 1) + (12,) * ndim
    fixed = torch.rand(shape, generator=generator)
    # a monotone remapping with noise: a contrast that MI and MIND see through
    moving = (1 - fixed).pow(2) * 0.8 + 0.1 * torch.rand(shape, generator=generator)
    return fixed, moving


def _zero_field(fixed: torch.Tensor) -> torch.Tensor:
    ndim = fixed.ndim - 2
    return torch.zeros((1, ndim, *(n // 2 for n in fixed.shape[2:])))


def _mi(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    return parzen_mutual_information(fixed.flatten(1), moving.flatten(1), MI_BINS)[0]


@pytest.mark.parametrize("ndim", [2, 3])
def test_mi_alone_is_minus_the_mutual_information(ndim):
    fixed, moving = _pair(ndim)
    loss = _similarity_loss("mi", fixed, moving)(_zero_field(fixed))
    torch.testing.assert_close(loss, -_mi(fixed, moving))
    assert _mi(fixed, moving) > 0.1


def test_mi_term_is_subtracted_from_mind_and_from_ngf():
    fixed, moving = _pair()
    zero = _zero_field(fixed)
    mind = mind_descriptor_loss(mind_ssc(fixed), mind_ssc(moving))
    with_mi = _similarity_loss("mind", fixed, moving, mi_weight=0.5)(zero)
    torch.testing.assert_close(with_mi, mind - 0.5 * _mi(fixed, moving))
    torch.testing.assert_close(_similarity_loss("mind", fixed, moving)(zero), mind)
    with_mi = _similarity_loss("ngf", fixed, moving, mi_weight=2.0)(zero)
    torch.testing.assert_close(with_mi, ngf(fixed, moving) - 2.0 * _mi(fixed, moving))


@pytest.mark.parametrize("similarity", ["mi", "mind"])
def test_sampled_loss_estimates_the_full_one(similarity):
    """At half the voxels, drawn afresh each call, the mean over draws nears the full value."""
    fixed, moving = _pair()
    zero = _zero_field(fixed)
    full = _similarity_loss(similarity, fixed, moving, mi_weight=1.0)(zero)
    generator = torch.Generator().manual_seed(1)
    sampled = _similarity_loss(similarity, fixed, moving, 0.5, generator, mi_weight=1.0)
    draws = torch.stack([sampled(zero) for _ in range(20)])
    assert draws.std() > 0  # every call draws other voxels
    assert abs(draws.mean() - full) < 0.05 * abs(full)


def test_gradient_of_the_mi_loss_reaches_the_field():
    fixed, moving = _pair()
    field = _zero_field(fixed).requires_grad_(True)
    _similarity_loss("mi", fixed, moving, 0.5, torch.Generator().manual_seed(0))(field).backward()
    assert field.grad is not None and field.grad.abs().sum() > 0
