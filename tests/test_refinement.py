"""The refinement: its masked similarity, its start, and the pyramid's geometry."""

from __future__ import annotations

import math

import pytest
import torch

from intermodal.losses import mind_loss, ngf, parzen_mutual_information
from intermodal.refinement import (
    MI_BINS,
    Images,
    Options,
    describe,
    refine_on_pyramid,
    refine_velocity,
    similarity_loss,
    similarity_of,
)
from intermodal.spatial import identity_grid, integrate_velocity, resize_displacement


def _pair(ndim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (1, 1) + (12,) * ndim
    fixed = torch.rand(shape, generator=generator)
    # a monotone remapping with noise: a contrast that MI and MIND see through
    moving = (1 - fixed).pow(2) * 0.8 + 0.1 * torch.rand(shape, generator=generator)
    return fixed, moving


def _images(fixed, moving, fixed_mask=None, moving_mask=None) -> Images:
    ones = torch.ones_like(fixed)
    return Images(
        fixed, moving,
        ones if fixed_mask is None else fixed_mask,
        ones if moving_mask is None else moving_mask,
    )  # fmt: skip


def _loss(images: Images, options: Options, generator=None, sampling=None):
    return similarity_loss(describe(images, options), options, generator, sampling)


def _zero_field(fixed: torch.Tensor) -> torch.Tensor:
    ndim = fixed.ndim - 2
    return torch.zeros((1, ndim, *(n // 2 for n in fixed.shape[2:])))


def _mi(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    return parzen_mutual_information(fixed.flatten(1), moving.flatten(1), MI_BINS)[0]


@pytest.mark.parametrize("ndim", [2, 3])
def test_mi_alone_is_minus_the_mutual_information(ndim):
    fixed, moving = _pair(ndim)
    loss = _loss(_images(fixed, moving), Options(similarity="mi"))(_zero_field(fixed))
    torch.testing.assert_close(loss, -_mi(fixed, moving))
    assert _mi(fixed, moving) > 0.1


def test_mi_term_is_subtracted_from_mind_and_from_ngf():
    fixed, moving = _pair()
    zero = _zero_field(fixed)
    images = _images(fixed, moving)
    mind = mind_loss(fixed, moving)
    with_mi = _loss(images, Options(similarity="mind", mi_weight=0.5))(zero)
    torch.testing.assert_close(with_mi, mind - 0.5 * _mi(fixed, moving))
    torch.testing.assert_close(_loss(images, Options(similarity="mind"))(zero), mind)
    with_mi = _loss(images, Options(similarity="ngf", mi_weight=2.0))(zero)
    torch.testing.assert_close(with_mi, ngf(fixed, moving) - 2.0 * _mi(fixed, moving))


@pytest.mark.parametrize("similarity", ["mi", "mind"])
def test_sampled_loss_estimates_the_full_one(similarity):
    """At half the voxels, drawn afresh each call, the mean over draws nears the full value."""
    fixed, moving = _pair()
    zero = _zero_field(fixed)
    options = Options(similarity=similarity, mi_weight=1.0, sampling=0.5)
    full = _loss(_images(fixed, moving), options, sampling=1.0)(zero)
    sampled = _loss(_images(fixed, moving), options, torch.Generator().manual_seed(1))
    draws = torch.stack([sampled(zero) for _ in range(20)])
    assert draws.std() > 0  # every call draws other voxels
    assert abs(draws.mean() - full) < 0.05 * abs(full)


def test_max_samples_caps_the_voxels_drawn_and_the_estimate_stays_unbiased(monkeypatch):
    """``max_samples`` bounds each draw below ``sampling`` x voxels; the mean stays unbiased."""
    fixed, moving = _pair()
    zero = _zero_field(fixed)
    sizes = []
    randint = torch.randint

    def counting(high, size, **kwargs):
        sizes.append(size[0])
        return randint(high, size, **kwargs)

    monkeypatch.setattr(torch, "randint", counting)
    full = _loss(_images(fixed, moving), Options(similarity="mind"), sampling=1.0)(zero)
    capped = Options(similarity="mind", sampling=0.5, max_samples=200)
    sampled = _loss(_images(fixed, moving), capped, torch.Generator().manual_seed(1))
    draws = torch.stack([sampled(zero) for _ in range(40)])
    assert sizes == [200] * 40  # 0.5 x 12^3 = 864 without the cap
    uncapped = Options(similarity="mind", sampling=0.5, max_samples=10_000)
    _loss(_images(fixed, moving), uncapped, torch.Generator().manual_seed(1))(zero)
    assert sizes[-1] == 864
    assert abs(draws.mean() - full) < 0.05 * abs(full)


def test_gradient_of_the_mi_loss_reaches_the_field():
    fixed, moving = _pair()
    field = _zero_field(fixed).requires_grad_(True)
    options = Options(similarity="mi", sampling=0.5)
    _loss(_images(fixed, moving), options, torch.Generator().manual_seed(0))(field).backward()
    assert field.grad is not None and field.grad.abs().sum() > 0


# NGF is always evaluated on every voxel, so it has no sampled case
@pytest.mark.parametrize(
    ("similarity", "sampling"),
    [("mind", 1.0), ("mind", 0.5), ("mi", 1.0), ("mi", 0.5), ("ngf", 1.0)],
)
def test_voxels_outside_the_fixed_mask_do_not_count(similarity, sampling):
    """Two moving images that differ only where the fixed mask is 0 score the same."""
    fixed, moving = _pair()
    mask = torch.zeros_like(fixed)
    mask[..., :6] = 1.0
    other = moving.clone()
    other[..., 9:] = torch.rand_like(other[..., 9:])  # beyond the MIND/NGF stencil's reach
    zero = _zero_field(fixed)
    options = Options(similarity=similarity, sampling=sampling)
    scores = [
        _loss(_images(fixed, m, fixed_mask=mask), options,
                        torch.Generator().manual_seed(3))(zero)
        for m in (moving, other)
    ]  # fmt: skip
    torch.testing.assert_close(scores[0], scores[1])
    unmasked = [_loss(_images(fixed, m), options, sampling=1.0)(zero) for m in (moving, other)]
    assert not torch.allclose(unmasked[0], unmasked[1])


def test_points_outside_the_moving_field_of_view_do_not_count():
    """Where the moving mask is 0 (outside its field of view) the moving values do not count."""
    fixed, moving = _pair()
    outside = torch.ones_like(fixed)
    outside[..., 6:] = 0.0
    other = moving.clone()
    other[..., 10:] = 0.5  # beyond the reach of the MIND stencil of voxels 0..5
    zero = _zero_field(fixed)
    for similarity in ("mind", "mi"):
        options = Options(similarity=similarity)
        scores = [_loss(_images(fixed, m, moving_mask=outside), options)(zero)
                  for m in (moving, other)]  # fmt: skip
        torch.testing.assert_close(scores[0], scores[1])


def test_points_moved_off_the_grid_do_not_count():
    """A shift that moves a band of voxels beyond the grid leaves them out of the score."""
    fixed, moving = _pair(2)
    shift = torch.zeros(1, 2, 6, 6)
    shift[:, 1] = 1.5  # +3 working voxels along x: the last three columns leave the grid
    other = moving.clone()
    other[..., :2] = torch.rand_like(other[..., :2])  # no kept point samples these columns
    options = Options(similarity="mi")
    scores = [_loss(_images(fixed, m), options)(shift) for m in (moving, other)]
    torch.testing.assert_close(scores[0], scores[1])


def test_refinement_starts_from_exactly_the_given_velocity():
    """No step returns the given field itself (not a smoothed copy of it)."""
    fixed, moving = _pair()
    start = torch.randn(1, 3, 6, 6, 6, generator=torch.Generator().manual_seed(2))
    options = Options(velocity_smoothing=2.0)
    assert torch.equal(
        refine_velocity(describe(_images(fixed, moving), options), start, options, steps=0), start
    )
    one = refine_velocity(describe(_images(fixed, moving), options), start, options, steps=1)
    assert 0 < float((one - start).abs().max()) < 0.2


def _blobs(shape: tuple[int, ...], centres: list[list[float]], sigma: float) -> torch.Tensor:
    grid = identity_grid(shape, dtype=torch.float32)
    image = torch.zeros(shape)
    for centre in centres:
        offset = grid - torch.tensor(centre).view(-1, *[1] * len(shape))
        image = image + torch.exp(-(offset**2).sum(0) / (2 * sigma**2))
    return image[None, None]


@pytest.mark.parametrize("factor", [4, 2, 1])
def test_a_known_translation_is_recovered_at_every_level(factor):
    """The moving blobs sit t before the fixed ones; a level of ``factor`` alone recovers -t.

    (``warped(x) = moving(x + u(x))``, so the field that matches them is ``u = -t``.) Before
    the pyramid's resizes shared one convention, the 4x level was off by a voxel and more.
    """
    shape = (64, 64)
    centres = [[20.0, 22.0], [40.0, 30.0], [28.0, 44.0], [46.0, 46.0]]
    shift = torch.tensor([2.0, -3.0])  # working voxels, array order
    fixed = _blobs(shape, centres, 5.0)
    moving = _blobs(shape, [(torch.tensor(c) - shift).tolist() for c in centres], 5.0)
    images = _images(fixed, moving)
    options = Options(similarity="mind", smoothness=0.0, learning_rate=0.2, velocity_smoothing=1.0)
    velocity = torch.zeros(1, 2, 32, 32)
    features = describe(images, options)
    velocity = refine_on_pyramid(features, velocity, options, [(factor, 80)], velocity_stride=2)
    # a constant velocity integrates to itself: read the displacement on the working grid
    displacement = resize_displacement(velocity, shape)[0, :, 20:44, 20:44]
    recovered = displacement.mean((1, 2))
    torch.testing.assert_close(recovered, -shift, atol=0.2, rtol=0)


def test_similarity_of_is_lower_for_the_right_field():
    shape = (32, 32)
    fixed = _blobs(shape, [[12.0, 12.0], [20.0, 18.0]], 3.0)
    moving = _blobs(shape, [[12.0, 14.0], [20.0, 20.0]], 3.0)
    right = torch.zeros(1, 2, 16, 16)
    right[:, 1] = 1.0  # +2 working voxels along x
    images = _images(fixed, moving)
    options = Options()
    features = describe(images, options)
    assert similarity_of(features, right, options) < similarity_of(features, 0 * right, options)
    assert math.isfinite(similarity_of(features, right, options))


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_guards_mind_by_slabs_is_the_whole_grid_loss(monkeypatch, ndim):
    """similarity_of sums MIND a slab at a time: the value of the whole-grid loss, masks and
    voxels that map outside the moving image included."""
    import intermodal.refinement as refinement

    generator = torch.Generator().manual_seed(3)
    shape = (14, 12, 10)[:ndim]
    fixed = torch.rand((1, 1, *shape), generator=generator)
    moving = torch.rand((1, 1, *shape), generator=generator)
    fixed_mask = (torch.rand((1, 1, *shape), generator=generator) > 0.3).float()
    moving_mask = (torch.rand((1, 1, *shape), generator=generator) > 0.2).float()
    features = describe(_images(fixed, moving, fixed_mask, moving_mask), Options())
    # large enough that some voxels leave the moving image
    velocity = 3.0 * torch.randn((1, ndim, *(n // 2 for n in shape)), generator=generator)
    options = Options(integration_steps=3)
    whole = similarity_loss(features, options, sampling=1.0)(integrate_velocity(velocity, 3))
    monkeypatch.setattr(refinement, "SLAB_VOXELS", 7)  # one row of voxels a slab
    by_rows = similarity_of(features, velocity, options)
    monkeypatch.setattr(refinement, "SLAB_VOXELS", 1 << 18)  # one slab
    assert by_rows == pytest.approx(float(whole), rel=1e-5)
    assert similarity_of(features, velocity, options) == pytest.approx(float(whole), rel=1e-5)
    # no displacement: the moving features read as they are give the whole-grid loss too
    still = torch.zeros_like(velocity)
    whole_still = similarity_loss(features, options, sampling=1.0)(still)
    assert similarity_of(features, still, options) == pytest.approx(float(whole_still), rel=1e-6)
