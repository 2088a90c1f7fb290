"""Similarity losses: tables of cases with known answers, gradients and bad inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from loss_images import noise_image, ramp, smooth_image

from intermodal.errors import IntermodalError
from intermodal.losses import (
    lncc,
    mind_loss,
    mind_ssc,
    mutual_information_loss,
    ngf,
    nmi,
    parzen_mutual_information,
)

# ----------------------------------------------------------------------------- LNCC


@pytest.mark.parametrize(
    ("make_pair", "expected", "tolerance"),
    [
        (lambda n: (ramp(n), ramp(n)), -1.0, 0.03),
        (lambda n: (smooth_image(n, 0), smooth_image(n, 0)), -1.0, 0.02),
        (lambda n: (smooth_image(n, 0), 3.0 * smooth_image(n, 0) + 2.0), -1.0, 0.02),
        (lambda n: (smooth_image(n, 0), 0.5 * smooth_image(n, 0) - 1.0), -1.0, 0.03),
        (lambda n: (smooth_image(n, 0), noise_image(n, 1)), 0.0, 0.03),
    ],
    ids=["ramps", "identical", "affine-up", "affine-down", "noise"],
)
def test_lncc_known_values(ndim, make_pair, expected, tolerance):
    fixed, warped = make_pair(ndim)
    assert lncc(fixed, warped).item() == pytest.approx(expected, abs=tolerance)


def test_lncc_is_symmetric_and_bounded(ndim):
    fixed, warped = smooth_image(ndim, 0), smooth_image(ndim, 1)
    forward, backward = lncc(fixed, warped), lncc(warped, fixed)
    assert forward.item() == pytest.approx(backward.item(), abs=1e-6)
    assert -1.0 <= forward.item() <= 0.0


def test_lncc_constant_images_are_finite(ndim):
    constant = torch.full_like(smooth_image(ndim, 0), 0.5)
    assert lncc(constant, constant).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("window", [0, 4, -3])
def test_bad_lncc_window(window):
    image = smooth_image(2, 0)
    with pytest.raises(IntermodalError, match="window"):
        lncc(image, image, window=window)


# ----------------------------------------------------------------------------- MIND


def test_mind_ssc_shape_and_range(ndim):
    image = smooth_image(ndim, 0)
    descriptor = mind_ssc(image)
    channels = {2: 4, 3: 12}[ndim]
    assert descriptor.shape == (1, channels, *image.shape[2:])
    assert descriptor.min() > 0
    # Each voxel's descriptor is normalised so its largest entry is exactly 1.
    assert torch.allclose(descriptor.amax(1), torch.ones(()))


def test_mind_loss_identical_is_zero(ndim):
    image = smooth_image(ndim, 0)
    assert mind_loss(image, image).item() == pytest.approx(0.0, abs=1e-12)


def test_mind_loss_prefers_inverted_contrast_to_unrelated_image(ndim):
    image = smooth_image(ndim, 0)
    inverted = mind_loss(image, 1 - image).item()
    unrelated = mind_loss(image, smooth_image(ndim, 1)).item()
    shuffled = image.flatten()[torch.randperm(image.numel())].view_as(image)
    assert inverted < 1e-6
    assert inverted < unrelated
    assert inverted < mind_loss(image, shuffled).item()


def test_mind_ssc_of_constant_image_is_finite(ndim):
    descriptor = mind_ssc(torch.zeros(1, 1, *smooth_image(ndim, 0).shape[2:]))
    assert torch.isfinite(descriptor).all()


@pytest.mark.parametrize(("radius", "dilation"), [(-1, 2), (1, 0)])
def test_bad_mind_parameters(radius, dilation):
    with pytest.raises(IntermodalError, match="radius|dilation"):
        mind_ssc(smooth_image(2, 0), radius=radius, dilation=dilation)


# ----------------------------------------------------------------------------- NGF


@pytest.mark.parametrize(
    ("transform", "expected", "tolerance"),
    [
        (lambda image: image, 0.0, 0.03),
        (lambda image: 1 - image, 0.0, 0.03),
        (lambda image: 0.5 * image + 0.25, 0.0, 0.05),
    ],
    ids=["identical", "inverted", "affine"],
)
def test_ngf_aligned_edges(ndim, transform, expected, tolerance):
    image = smooth_image(ndim, 0)
    assert ngf(image, transform(image), eps=1e-3).item() == pytest.approx(expected, abs=tolerance)


def test_ngf_inversion_is_exactly_invariant(ndim):
    image = smooth_image(ndim, 0)
    assert ngf(image, 1 - image).item() == pytest.approx(ngf(image, image).item(), abs=1e-6)


def test_ngf_misaligned_is_worse(ndim):
    image = smooth_image(ndim, 0)
    assert ngf(image, smooth_image(ndim, 1)).item() > 0.5
    assert ngf(image, noise_image(ndim, 2)).item() > 0.5


def test_bad_ngf_too_small():
    image = torch.rand(1, 1, 2, 8)
    with pytest.raises(ValueError, match="3 voxels"):
        ngf(image, image)


# ----------------------------------------------------------------------------- MI


def test_mi_identical_beats_noise(ndim):
    image = smooth_image(ndim, 0)
    same = mutual_information_loss(image, image).item()
    noise = mutual_information_loss(image, noise_image(ndim, 1)).item()
    assert same < noise
    assert noise == pytest.approx(0.0, abs=0.1)


def test_mi_is_invariant_to_affine_and_roughly_to_monotone_remapping(ndim):
    image = smooth_image(ndim, 0)
    same = mutual_information_loss(image, image).item()
    affine = mutual_information_loss(image, 4 * image - 1).item()
    monotone = mutual_information_loss(image, image.sqrt()).item()
    unrelated = mutual_information_loss(image, smooth_image(ndim, 1)).item()
    assert affine == pytest.approx(same, rel=1e-4)
    assert monotone == pytest.approx(same, rel=0.15)
    assert monotone < unrelated


def test_mi_subsampling_is_deterministic_with_a_seed(ndim):
    fixed, warped = smooth_image(ndim, 0), smooth_image(ndim, 1)
    first = mutual_information_loss(fixed, warped, num_samples=2000, seed=7)
    second = mutual_information_loss(fixed, warped, num_samples=2000, seed=7)
    full = mutual_information_loss(fixed, warped)
    assert first.item() == second.item()
    assert first.item() == pytest.approx(full.item(), abs=0.1)


@pytest.mark.parametrize(
    "kwargs", [{"bins": 1}, {"sigma": 0.0}, {"num_samples": 0}], ids=["bins", "sigma", "samples"]
)
def test_bad_mi_parameters(kwargs):
    image = smooth_image(2, 0)
    with pytest.raises(IntermodalError):
        mutual_information_loss(image, image, **kwargs)


# ----------------------------------------------------------------------------- NMI


def test_nmi_identical_and_independent():
    rng = np.random.default_rng(0)
    image = rng.random((40, 40, 40))
    assert nmi(image, image) == pytest.approx(2.0, abs=1e-9)
    assert nmi(image, rng.random((40, 40, 40))) == pytest.approx(1.0, abs=0.02)


def test_nmi_accepts_tensors_any_shape_and_a_mask():
    image = smooth_image(3, 0)
    mask = torch.zeros(image.shape, dtype=torch.bool)
    mask[..., 8:24, 8:24, 8:24] = True
    assert nmi(image, image, mask=mask) == pytest.approx(2.0, abs=1e-9)
    assert nmi(image[0, 0].numpy().ravel(), 1 - image[0, 0].numpy().ravel()) == pytest.approx(
        2.0, abs=1e-9
    )


def test_nmi_constant_images():
    assert nmi(np.ones((4, 4)), np.ones((4, 4))) == 1.0


def _histogram2d_nmi(a, b, bins):
    """Reference: NMI from NumPy's own histogram2d, as nmi computed it before."""
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)

    def entropy(counts):
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    h_joint = entropy(joint)
    return 1.0 if h_joint == 0 else (entropy(joint.sum(1)) + entropy(joint.sum(0))) / h_joint


@pytest.mark.parametrize("bins", [2, 7, 32])
def test_nmi_bins_are_exactly_histogram2d_ones(bins):
    rng = np.random.default_rng(3)
    cases = [
        (rng.normal(size=5000), rng.random(5000) * 3 - 1),
        # every value on a bin edge, where a computed index is most likely to be off by one
        (np.tile(np.linspace(-1.3, 2.9, bins + 1), 40), np.repeat(np.linspace(0, 1, 40), bins + 1)),
        # CT-like integers, one constant image (NumPy widens its range by 0.5 either side)
        (rng.integers(-1000, 1500, 4000).astype(float), np.full(4000, 7.0)),
        (np.float32(rng.random(3000) * 1e-3).astype(float), rng.random(3000) ** 3),
    ]
    for a, b in cases:
        assert nmi(a, b, bins=bins) == _histogram2d_nmi(a, b, bins)


def test_bad_nmi_inputs():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        nmi(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="mask"):
        nmi(np.ones((4, 4)), np.ones((4, 4)), mask=np.ones((3, 3), dtype=bool))
    with pytest.raises(IntermodalError, match="no voxel"):
        nmi(np.ones((4, 4)), np.ones((4, 4)), mask=np.zeros((4, 4), dtype=bool))


# ----------------------------------------------------------------------------- all losses

LOSSES = {
    "lncc": lncc,
    "mind": mind_loss,
    "ngf": ngf,
    "mi": mutual_information_loss,
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_flow(ndim, name):
    fixed = smooth_image(ndim, 0).repeat(2, 1, *([1] * ndim))
    warped = (0.7 * smooth_image(ndim, 1) + 0.1).repeat(2, 1, *([1] * ndim))
    warped.requires_grad_(True)
    loss = LOSSES[name](fixed, warped)
    assert loss.ndim == 0
    loss.backward()
    assert warped.grad is not None
    assert torch.isfinite(warped.grad).all()
    assert warped.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_shape_mismatch_names_both_shapes(name):
    with pytest.raises(ValueError, match=r"\(1, 1, 16, 16\).*\(1, 1, 16, 17\)"):
        LOSSES[name](torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17))


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("shape", [(16, 16), (1, 16, 16), (1, 1, 4, 4, 4, 4)])
def test_bad_ndim(name, shape):
    with pytest.raises(ValueError, match="must be"):
        LOSSES[name](torch.rand(shape), torch.rand(shape))


@pytest.mark.parametrize("ndim", [2, 3])
def test_mind_ssc_matches_hand_computation_at_an_interior_voxel(ndim):
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(1, 1, *([13] * ndim), generator=generator, dtype=torch.float64)
    radius, dilation, centre = 1, 2, (6,) * ndim
    neighbours = []
    for axis in range(ndim):
        for sign in (-1, 1):
            step = [0] * ndim
            step[axis] = sign * dilation
            neighbours.append(step)
    pairs = [
        (p, q)
        for i, p in enumerate(neighbours)
        for q in neighbours[i + 1 :]
        if any(a + b != 0 for a, b in zip(p, q, strict=True))
    ]
    patch = list(itertools.product(range(-radius, radius + 1), repeat=ndim))

    def value(position):
        return image[(0, 0, *position)].item()

    distances = []
    for p, q in pairs:
        total = 0.0
        for z in patch:
            at_p = [c + a + b for c, a, b in zip(centre, p, z, strict=True)]
            at_q = [c + a + b for c, a, b in zip(centre, q, z, strict=True)]
            total += (value(at_p) - value(at_q)) ** 2
        distances.append(total / len(patch))
    variance = sum(distances) / len(distances)
    expected = [math.exp(-(d - min(distances)) / variance) for d in distances]
    descriptor = mind_ssc(image, radius=radius, dilation=dilation, eps=0.0)
    actual = descriptor[(0, slice(None), *centre)].tolist()
    assert actual == pytest.approx(expected, rel=1e-5)


def test_parzen_mutual_information_hand_worked():
    """With a narrow window the histogram is a plain count: two equiprobable values that
    determine each other share log 2 nats; crossed so that each is independent, none."""
    same = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    crossed = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    mi = parzen_mutual_information(same, same, bins=2, sigma=0.01)
    torch.testing.assert_close(mi, torch.tensor([np.log(2.0)], dtype=torch.float32))
    independent = parzen_mutual_information(same, crossed, bins=2, sigma=0.01)
    torch.testing.assert_close(independent, torch.zeros(1), atol=1e-6, rtol=0)


def test_ngf_weights_select_voxels():
    """A weight map that selects one half scores that half alone; all ones is the plain mean."""
    fixed = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    warped = fixed.clone()
    warped[..., 6:] = torch.rand(1, 1, 12, 6, generator=torch.Generator().manual_seed(2))
    left = torch.zeros(1, 1, 12, 12)
    left[..., :5] = 1.0  # interior columns 1..4, untouched by the noise and its gradient
    torch.testing.assert_close(ngf(fixed, warped, weights=left), ngf(fixed, fixed, weights=left))
    assert float(ngf(fixed, warped)) > float(ngf(fixed, fixed)) + 0.1
    torch.testing.assert_close(ngf(fixed, warped, weights=torch.ones(1, 1, 12, 12)),
                               ngf(fixed, warped))  # fmt: skip


def test_parzen_mutual_information_weights_leave_out_pairs():
    """Weight 0 removes a pair: the crossed pairs added at weight 0 change nothing, and
    whole weights count a pair that many times."""
    same = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with_noise = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 1.0]])
    crossed = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    weights = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    masked = parzen_mutual_information(with_noise, crossed, 2, 0.01, weights)
    torch.testing.assert_close(masked, parzen_mutual_information(same, same, 2, 0.01))
    doubled = parzen_mutual_information(same, same, 2, 0.01, torch.full((1, 4), 2.0))
    torch.testing.assert_close(doubled, parzen_mutual_information(same, same, 2, 0.01))
    with pytest.raises(ValueError, match="weights must be"):
        parzen_mutual_information(same, same, 2, 0.01, torch.ones(1, 3))


def test_parzen_mutual_information_agrees_with_the_image_loss():
    image = torch.rand(1, 1, 6, 7, 8, generator=torch.Generator().manual_seed(0))
    other = image.sqrt()
    values = parzen_mutual_information(image.flatten(1), other.flatten(1))
    # mutual_information_loss rescales each image to [0, 1] first; these already nearly span it
    scaled = [(t - t.min()) / (t.max() - t.min()) for t in (image, other)]
    expected = parzen_mutual_information(scaled[0].flatten(1), scaled[1].flatten(1))
    torch.testing.assert_close(-mutual_information_loss(image, other), expected[0])
    assert values[0] > 1.0


@pytest.mark.parametrize(
    ("fixed", "warped", "kwargs", "message"),
    [
        (torch.zeros(1, 4), torch.zeros(1, 5), {}, "must both be"),
        (torch.zeros(4), torch.zeros(4), {}, "must both be"),
        (torch.zeros(1, 4), torch.zeros(1, 4), {"bins": 1}, "bins"),
        (torch.zeros(1, 4), torch.zeros(1, 4), {"sigma": 0.0}, "sigma"),
    ],
)
def test_parzen_mutual_information_bad_input(fixed, warped, kwargs, message):
    with pytest.raises(IntermodalError, match=message):
        parzen_mutual_information(fixed, warped, **kwargs)


def _all_bin_mutual_information(fixed, warped, bins, sigma):
    """Reference: every sample weighs every bin (the estimator before the window was cut)."""
    centres = torch.linspace(0, 1, bins, dtype=fixed.dtype)

    def parzen(values):
        weights = torch.exp(-0.5 * ((values.unsqueeze(-1) - centres) / sigma) ** 2)
        return weights / weights.sum(-1, keepdim=True)

    joint = parzen(fixed).transpose(1, 2) @ parzen(warped) / fixed.shape[1]
    marginals = joint.sum(2, keepdim=True) * joint.sum(1, keepdim=True)
    return (joint * (torch.log(joint + 1e-10) - torch.log(marginals + 1e-10))).sum((1, 2))


@pytest.mark.parametrize(("bins", "sigma"), [(32, None), (64, None), (16, 0.05), (8, 0.2)])
def test_parzen_window_cut_at_six_sigmas_matches_every_bin(bins, sigma):
    generator = torch.Generator().manual_seed(1)
    fixed = torch.rand(2, 3000, generator=generator, dtype=torch.float64)
    noise = torch.rand(2, 3000, generator=generator, dtype=torch.float64)
    warped = (0.7 * fixed + 0.3 * noise).requires_grad_(True)
    width = 0.5 / (bins - 1) if sigma is None else sigma
    got = parzen_mutual_information(fixed, warped, bins, sigma)
    want = _all_bin_mutual_information(fixed, warped, bins, width)
    # the bins left out weigh exp(-18) = 1.5e-8 of the nearest one at most
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    (g_got,) = torch.autograd.grad(got.sum(), warped)
    (g_want,) = torch.autograd.grad(want.sum(), warped)
    torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=1e-9)


def test_parzen_mutual_information_of_samples_far_outside_the_unit_range_is_finite():
    # 8 and -5 are hundreds of sigmas from every bin: each puts its mass on the end bin
    fixed = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    warped = torch.tensor([[-5.0, -5.0, 8.0, 8.0]], requires_grad=True)
    mi = parzen_mutual_information(fixed, warped, bins=4, sigma=0.01)
    torch.testing.assert_close(mi, torch.tensor([np.log(2.0)], dtype=torch.float32))
    (gradient,) = torch.autograd.grad(mi.sum(), warped)
    assert torch.isfinite(gradient).all()
