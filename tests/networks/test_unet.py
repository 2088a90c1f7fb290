"""Registration U-Net and model: shapes, identity at start, gradients, config round trip."""

from __future__ import annotations

import pytest
import torch

from intermodal.errors import IntermodalError
from intermodal.networks import RegistrationModel, RegistrationOutput, RegistrationUNet

SPATIAL = {2: (32, 48), 3: (16, 24, 32)}


def pair(ndim: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    fixed = torch.rand(batch, 1, *SPATIAL[ndim], generator=generator)
    moving = torch.rand(batch, 1, *SPATIAL[ndim], generator=generator)
    return fixed, moving


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("output_stride", [1, 2, 4])
def test_unet_velocity_shape(ndim, output_stride):
    net = RegistrationUNet(ndim, output_stride=output_stride)
    fixed, moving = pair(ndim, batch=2)
    velocity = net(fixed, moving)
    expected = tuple(size // output_stride for size in SPATIAL[ndim])
    assert velocity.shape == (2, ndim, *expected)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("output_stride", [1, 2, 4])
def test_model_output_shapes_and_near_identity(ndim, output_stride):
    torch.manual_seed(0)
    model = RegistrationModel(ndim, output_stride=output_stride)
    fixed, moving = pair(ndim)
    out = model(fixed, moving)
    assert isinstance(out, RegistrationOutput)
    coarse = tuple(size // output_stride for size in SPATIAL[ndim])
    assert out.velocity.shape == (1, ndim, *coarse)
    assert out.displacement.shape == (1, ndim, *SPATIAL[ndim])
    # The head starts at N(0, 1e-5^2): an untrained model is (almost) the identity.
    assert out.displacement.abs().max().item() < 1e-2


@pytest.mark.parametrize("ndim", [2, 3])
def test_model_without_integration_returns_the_velocity(ndim):
    model = RegistrationModel(ndim, output_stride=1, integration_steps=0)
    fixed, moving = pair(ndim)
    out = model(fixed, moving)
    assert torch.equal(out.velocity, out.displacement)


@pytest.mark.parametrize(("ndim", "features"), [(2, (16, 32, 32, 32)), (3, (16, 32, 32, 32))])
def test_default_parameter_count_is_small(ndim, features):
    count = sum(p.numel() for p in RegistrationUNet(ndim, features=features).parameters())
    # A few hundred thousand parameters: a few MB of float32 in 3D, less in 2D.
    limit = 600_000 if ndim == 3 else 200_000
    assert 10_000 < count < limit


def test_required_multiple():
    assert RegistrationUNet(3).required_multiple == 8
    assert RegistrationUNet(2, features=(8, 16)).required_multiple == 2
    assert RegistrationModel(3, features=(8, 8, 8, 8, 8)).required_multiple == 16


@pytest.mark.parametrize("ndim", [2, 3])
def test_gradient_reaches_first_conv(ndim):
    model = RegistrationModel(ndim)
    fixed, moving = pair(ndim)
    out = model(fixed, moving)
    (out.displacement.square().mean() + out.velocity.sum()).backward()
    first_conv = model.unet.encoder[0][0][0]
    assert first_conv.weight.grad is not None
    assert torch.isfinite(first_conv.weight.grad).all()
    assert first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("instance_norm", [False, True])
def test_config_round_trip_gives_identical_outputs(ndim, instance_norm):
    torch.manual_seed(0)
    model = RegistrationModel(
        ndim,
        features=(8, 16, 16),
        output_stride=2,
        integration_steps=5,
        instance_norm=instance_norm,
    )
    # A visible (not near-zero) output, so the comparison means something.
    torch.nn.init.normal_(model.unet.head.weight, std=0.1)
    clone = RegistrationModel.from_config(model.config())
    clone.load_state_dict(model.state_dict())
    assert clone.config() == model.config()
    fixed, moving = pair(ndim)
    with torch.no_grad():
        expected = model(fixed, moving)
        actual = clone(fixed, moving)
    assert torch.equal(expected.velocity, actual.velocity)
    assert torch.equal(expected.displacement, actual.displacement)


def test_config_is_plain_json():
    import json

    config = RegistrationModel(3).config()
    assert json.loads(json.dumps(config)) == config
    assert config == {
        "ndim": 3,
        "in_channels": 2,
        "features": [16, 32, 32, 32],
        "output_stride": 2,
        "integration_steps": 7,
        "instance_norm": False,
    }


@pytest.mark.parametrize("ndim", [2, 3])
def test_bad_spatial_size_names_size_and_multiple(ndim):
    net = RegistrationUNet(ndim)
    spatial = (20,) * ndim
    image = torch.zeros(1, 1, *spatial)
    with pytest.raises(ValueError, match=rf"{spatial[0]}.*multiple of 8"):
        net(image, image)


@pytest.mark.parametrize(
    ("fixed_shape", "moving_shape", "match"),
    [
        ((1, 1, 16, 16), (1, 1, 16, 16, 16), "3D"),
        ((1, 1, 16, 16, 16), (1, 1, 16, 16, 8), "same batch and spatial"),
        ((1, 2, 16, 16, 16), (1, 1, 16, 16, 16), "input channels"),
        ((16, 16, 16), (16, 16, 16), "must be"),
    ],
)
def test_bad_input_shapes(fixed_shape, moving_shape, match):
    net = RegistrationUNet(3)
    with pytest.raises(ValueError, match=match):
        net(torch.zeros(fixed_shape), torch.zeros(moving_shape))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ndim": 4},
        {"ndim": 3, "features": ()},
        {"ndim": 3, "features": (16, 0)},
        {"ndim": 3, "output_stride": 3},
        {"ndim": 3, "features": (16, 32), "output_stride": 4},
        {"ndim": 3, "in_channels": 0},
    ],
)
def test_bad_unet_arguments(kwargs):
    with pytest.raises(IntermodalError):
        RegistrationUNet(**kwargs)


@pytest.mark.parametrize("cfg", [{"ndim": 3, "depth": 4}, {"features": [8, 8]}])
def test_bad_config(cfg):
    with pytest.raises(IntermodalError, match="config"):
        RegistrationModel.from_config(cfg)


@pytest.mark.parametrize("steps", [-1, 2.5])
def test_bad_integration_steps(steps):
    with pytest.raises(IntermodalError, match="integration_steps"):
        RegistrationModel(3, integration_steps=steps)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("output_stride", [1, 2, 4])
def test_constant_velocity_gives_the_matching_translation(ndim, output_stride):
    # Head weights 0 and bias c: the velocity is the constant c voxels of the coarse
    # grid, exp(c) is the translation c, and on the input grid (cell-centred, like the
    # pyramid) it is c * stride voxels along each axis.
    model = RegistrationModel(ndim, output_stride=output_stride)
    shift = torch.tensor([0.5, -1.0, 0.25][:ndim])
    with torch.no_grad():
        model.unet.head.weight.zero_()
        model.unet.head.bias.copy_(shift)
    fixed, moving = pair(ndim)
    out = model(fixed, moving)
    for axis, size in enumerate(SPATIAL[ndim]):
        expected = shift[axis] * size / (size // output_stride)
        assert torch.allclose(out.velocity[:, axis], shift[axis])
        assert torch.allclose(out.displacement[:, axis], expected.expand(1, *SPATIAL[ndim]))
