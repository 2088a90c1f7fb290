"""Pair sampling, augmentation and the training losses, on hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch

from intermodal.errors import IntermodalError
from intermodal.losses import lncc
from intermodal.networks import RegistrationOutput
from intermodal.spatial import warp
from intermodal.training.augment import augment_intensity, random_affine, warp_subject
from intermodal.training.config import AugmentConfig, LossConfig
from intermodal.training.objectives import (
    inverse_displacement,
    multiscale_lncc,
    soft_dice_loss,
    training_loss,
)
from intermodal.training.pairs import (
    Pair,
    make_batch,
    sample_pairs,
    step_generator,
    validation_pairs,
)

# --------------------------------------------------------------------------- pairs


def test_pairs_never_match_a_subject_with_itself():
    for step in range(200):
        for pair in sample_pairs(3, 4, seed=1, step=step):
            assert pair.moving != pair.fixed
            assert 0 <= pair.moving < 3 and 0 <= pair.fixed < 3
            assert pair.ct_moving is False


def test_pairs_are_deterministic_and_differ_by_step_and_rank():
    draw = lambda **kw: sample_pairs(10, 8, **{"seed": 3, "step": 5, "rank": 0, **kw})  # noqa: E731
    assert draw() == draw()
    assert draw() != draw(step=6)
    assert draw() != draw(rank=1)
    assert draw() != draw(seed=4)


def test_pairs_cover_every_ordered_pair():
    seen = {(p.moving, p.fixed) for s in range(100) for p in sample_pairs(3, 2, seed=0, step=s)}
    assert seen == {(i, j) for i in range(3) for j in range(3) if i != j}


@pytest.mark.parametrize(
    ("direction", "expected"),
    [("mr_to_ct", {False}), ("ct_to_mr", {True}), ("both", {False, True})],
)
def test_pair_directions(direction, expected):
    flags = {
        p.ct_moving
        for s in range(20)
        for p in sample_pairs(4, 4, seed=0, step=s, direction=direction)
    }
    assert flags == expected


def test_validation_pairs_are_fixed_and_distinct():
    assert validation_pairs(3) == [Pair(0, 1), Pair(1, 2), Pair(2, 0)]
    assert validation_pairs(1) == []


def test_bad_pairs():
    with pytest.raises(IntermodalError, match="at least 2 subjects"):
        sample_pairs(1, 1, seed=0, step=0)
    with pytest.raises(IntermodalError, match="direction"):
        sample_pairs(3, 1, seed=0, step=0, direction="up")


def _volumes(n: int = 3, size: int = 32):
    """Subjects whose CT is labels / 5 and MR is 1 - labels / 5: a square per subject."""
    labels = torch.zeros(n, 1, size, size, dtype=torch.int64)
    for k in range(n):
        labels[k, 0, 8 + k : 20 + k, 6 : 18 + k] = 1 + k % 4
        labels[k, 0, 12:16, 12:16] = 5
    return labels.float() / 5, 1 - labels.float() / 5, labels


def test_batch_holds_the_network_pair_in_each_direction():
    ct, mr, labels = _volumes()
    batch = make_batch(ct, mr, labels, [Pair(0, 1, False), Pair(2, 0, True)])
    torch.testing.assert_close(batch.network_fixed[0], ct[1])
    torch.testing.assert_close(batch.network_moving[0], mr[0])
    torch.testing.assert_close(batch.network_fixed[1], mr[0])
    torch.testing.assert_close(batch.network_moving[1], ct[2])
    torch.testing.assert_close(batch.moving_ct, ct[[0, 2]])
    torch.testing.assert_close(batch.fixed_mr, mr[[1, 0]])
    assert torch.equal(batch.fixed_labels, labels[[1, 0]])


# --------------------------------------------------------------------------- augmentation


def test_affine_moves_ct_mr_and_labels_alike():
    ct, mr, labels = _volumes()
    config = AugmentConfig(probability=1.0, affine_degrees=20, affine_scale=0.2)
    matrices = random_affine(3, 2, config, torch.Generator().manual_seed(0))
    assert not torch.allclose(matrices, torch.eye(2).double().expand(3, 2, 2))
    ct_w, mr_w, labels_w = warp_subject(ct, mr, labels, matrices)
    assert labels_w.dtype == torch.int64
    assert set(labels_w.unique().tolist()) <= set(labels.unique().tolist())
    assert not torch.equal(labels_w, labels)
    same_ct, same_mr, _ = warp_subject(ct, ct, None, matrices)
    assert torch.equal(same_ct, same_mr)
    # where the warped labels are locally constant, the images show the same label
    values = labels_w.float()
    high = torch.nn.functional.max_pool2d(values, 5, 1, 2)
    low = -torch.nn.functional.max_pool2d(-values, 5, 1, 2)
    in_view, _, _ = warp_subject(torch.ones_like(ct), torch.ones_like(ct), None, matrices)
    inside = (high == low) & (in_view == 1)
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(ct_w[inside], labels_w[inside].float() / 5)
    torch.testing.assert_close(mr_w[inside], 1 - labels_w[inside].float() / 5)


def test_affine_with_probability_zero_is_the_identity():
    ct, mr, labels = _volumes()
    matrices = random_affine(3, 2, AugmentConfig(probability=0.0), torch.Generator())
    ct_w, mr_w, labels_w = warp_subject(ct, mr, labels, matrices)
    torch.testing.assert_close(ct_w, ct)
    assert torch.equal(labels_w, labels)


def test_affine_in_3d_is_a_rotation_times_scaling():
    config = AugmentConfig(probability=1.0, affine_degrees=30, affine_scale=0.0)
    matrices = random_affine(4, 3, config, torch.Generator().manual_seed(1))
    eye = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
    torch.testing.assert_close(matrices @ matrices.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(matrices), torch.ones(4, dtype=torch.float64))


def test_intensity_augmentation_is_seeded_and_changes_only_intensities():
    ct, _, _ = _volumes()
    config = AugmentConfig(probability=1.0, gamma=0.3, bias=0.2, noise=0.05)
    first = augment_intensity(ct, config, torch.Generator().manual_seed(5))
    again = augment_intensity(ct, config, torch.Generator().manual_seed(5))
    other = augment_intensity(ct, config, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == ct.shape and not torch.equal(first, ct)
    off = augment_intensity(ct, AugmentConfig(probability=0.0), torch.Generator())
    torch.testing.assert_close(off, ct)


def test_augmented_batch_keeps_clean_images_for_the_loss():
    ct, mr, labels = _volumes()
    config = AugmentConfig(probability=1.0)
    pairs = [Pair(0, 1), Pair(1, 2)]
    batch = make_batch(ct, mr, labels, pairs, augment=config, generator=step_generator(0, 3))
    again = make_batch(ct, mr, labels, pairs, augment=config, generator=step_generator(0, 3))
    assert torch.equal(batch.network_fixed, again.network_fixed)
    torch.testing.assert_close(batch.seen_fixed, batch.fixed_ct)
    assert not torch.equal(batch.network_fixed, batch.fixed_ct)


# --------------------------------------------------------------------------- losses


def _shifted_pair(shift: int):
    """Subject 1 is subject 0 moved by ``shift`` pixels along x; returns a batch and truth."""
    torch.manual_seed(0)
    base = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 40, 40), 5, 1, 2)
    ct = torch.cat([base, torch.roll(base, shift, -1)])
    mr = 1 - ct**2
    return make_batch(ct, mr, None, [Pair(0, 1)])


def _output(displacement: torch.Tensor) -> RegistrationOutput:
    return RegistrationOutput(velocity=displacement, displacement=displacement)


@pytest.mark.parametrize("name", ["intra", "mi", "mind", "ngf"])
def test_true_correspondence_scores_better_than_a_wrong_one(name):
    batch = _shifted_pair(3)
    truth = torch.zeros(1, 2, 40, 40)
    truth[:, 1] = -3.0  # fixed(x) = moving(x - 3)
    wrong = torch.zeros(1, 2, 40, 40)
    wrong[:, 1] = 3.0
    config = LossConfig(name=name, smoothness=1.0)
    right_loss, terms = training_loss(config, _output(truth), batch, integration_steps=0)
    wrong_loss, _ = training_loss(config, _output(wrong), batch, integration_steps=0)
    zero_loss, _ = training_loss(
        config, _output(torch.zeros_like(truth)), batch, integration_steps=0
    )
    assert float(right_loss) < float(zero_loss) < float(wrong_loss) or name != "intra"
    assert float(right_loss) < float(wrong_loss)
    assert terms["smoothness"] == 0.0 and terms["loss"] == pytest.approx(float(right_loss))


def test_intra_loss_of_the_true_shift_is_near_minus_two():
    batch = _shifted_pair(2)
    truth = torch.zeros(1, 2, 40, 40)
    truth[:, 1] = -2.0
    loss, _ = training_loss(LossConfig(lncc_window=5), _output(truth), batch, integration_steps=0)
    assert float(loss) < -1.8  # two LNCC terms of about -1 each, border columns aside


def test_symmetric_intra_uses_the_inverse_field():
    batch = _shifted_pair(2)
    velocity = torch.zeros(1, 2, 40, 40)
    velocity[:, 1] = -2.0
    inverse = inverse_displacement(velocity, (40, 40), steps=3)
    torch.testing.assert_close(inverse, -velocity)
    config = LossConfig(symmetric=True, lncc_window=5)
    out = RegistrationOutput(velocity=velocity, displacement=velocity)
    loss, _ = training_loss(config, out, batch, integration_steps=3)
    assert float(loss) < -1.8


def test_loss_gradients_reach_the_displacement():
    batch = _shifted_pair(2)
    displacement = torch.zeros(1, 2, 40, 40, requires_grad=True)
    loss, _ = training_loss(
        LossConfig(symmetric=True), _output(displacement), batch, integration_steps=2
    )
    loss.backward()
    assert displacement.grad is not None and displacement.grad.abs().sum() > 0


def test_volume_term_costs_expansion_but_not_translation():
    batch = _shifted_pair(2)
    shift = torch.zeros(1, 2, 40, 40)
    shift[:, 1] = -2.0
    config = LossConfig(lncc_window=5, smoothness=0.0, volume_penalty=2.0)
    loss, terms = training_loss(config, _output(shift), batch, integration_steps=0)
    plain, _ = training_loss(
        LossConfig(lncc_window=5, smoothness=0.0), _output(shift), batch, integration_steps=0
    )
    assert terms["volume"] == 0.0 and float(loss) == pytest.approx(float(plain))
    # the shift plus a 10 % expansion along axis 0: det = 1.1 at every voxel
    grown = shift.clone()
    grown[:, 0] = 0.1 * torch.arange(40.0)[:, None]
    loss, terms = training_loss(config, _output(grown), batch, integration_steps=0)
    assert terms["volume"] == pytest.approx(math.log(1.1) ** 2, rel=1e-5)
    assert float(loss) == pytest.approx(terms["similarity"] + 2.0 * terms["volume"], rel=1e-5)
    assert (
        "volume" not in training_loss(LossConfig(), _output(shift), batch, integration_steps=0)[1]
    )


def test_dice_term_is_zero_for_matching_labels_and_positive_otherwise():
    _, _, labels = _volumes()
    zero = torch.zeros(1, 2, 32, 32)
    assert float(soft_dice_loss(labels[:1], labels[:1], zero, 6)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_dice_loss(labels[:1], labels[2:3], zero, 6)) > 0.1
    ct, mr, _ = _volumes()
    batch = make_batch(ct, mr, labels, [Pair(0, 2)])
    _, terms = training_loss(
        LossConfig(dice=1.0), _output(zero), batch, integration_steps=0, n_classes=6
    )
    assert terms["dice"] > 0.1


@pytest.mark.parametrize("scales", [[1], [1, 2], [1, 2, 4]])
def test_multiscale_lncc_of_an_image_with_itself_is_minus_one(scales):
    image = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    value = multiscale_lncc(image, 3 * image + 1, 5, scales)
    # not exactly -1: the eps in each local variance, next to the small variance of block means
    assert float(value) == pytest.approx(-1.0, abs=3e-3)


def test_multiscale_lncc_at_one_scale_is_lncc():
    generator = torch.Generator().manual_seed(1)
    fixed, warped = torch.rand(2, 1, 1, 16, 16, 16, generator=generator)
    assert float(multiscale_lncc(fixed, warped, 5, [1])) == pytest.approx(
        float(lncc(fixed, warped, 5))
    )


def _blob(centre: float, size: int = 64) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    return torch.exp(-((x - centre) ** 2 + (y - size / 2) ** 2) / (2 * 3.0**2)).view(
        1, 1, size, size
    )


def test_coarse_scales_pull_a_shift_wider_than_the_window_back():
    """A blob moved 12 voxels: with a 5-voxel window, full-resolution LNCC gives the
    displacement almost no gradient (the windows never see both blobs); the 4x block average
    does, and it points the right way (this is why the bundled configs use scales [1, 2, 4])."""
    fixed, moving = _blob(26.0), _blob(38.0)
    gradients = {}
    for scales in ([1], [1, 2, 4]):
        shift = torch.zeros(1, requires_grad=True)
        displacement = torch.zeros(1, 2, 64, 64)
        field = displacement + torch.stack([torch.zeros(1), shift]).view(1, 2, 1, 1)
        multiscale_lncc(fixed, warp(moving, field), 5, scales).backward()
        gradients[tuple(scales)] = float(shift.grad)
    # warped(x) = moving(x + u): u = +12 along x aligns them, so the loss falls as u grows
    assert gradients[(1, 2, 4)] < 0
    assert abs(gradients[(1, 2, 4)]) > 10 * abs(gradients[(1,)])
