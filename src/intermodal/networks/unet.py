"""A small U-Net that predicts a stationary velocity field from a fixed/moving pair.

Following Cao et al. (MLMI 2018), the network sees an MR image and a CT image and
predicts the deformation between them; training compares images of the same
modality, so the network itself never needs an intensity mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intermodal.errors import IntermodalError
from intermodal.losses._checks import ShapeError, check_image
from intermodal.spatial.functional import integrate_velocity, resize_displacement

__all__ = ["RegistrationModel", "RegistrationOutput", "RegistrationUNet"]

_OUTPUT_STRIDES = (1, 2, 4)


def _conv(ndim: int, in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    return conv(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


class _ConvBlock(nn.Sequential):
    """Conv (optionally strided) -> [InstanceNorm] -> LeakyReLU(0.2)."""

    def __init__(
        self, ndim: int, in_channels: int, out_channels: int, stride: int, instance_norm: bool
    ) -> None:
        layers: list[nn.Module] = [_conv(ndim, in_channels, out_channels, stride)]
        if instance_norm:
            norm = nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d
            layers.append(norm(out_channels, affine=True))
        layers.append(nn.LeakyReLU(0.2))
        super().__init__(*layers)


class RegistrationUNet(nn.Module):
    """U-Net mapping ``(fixed, moving)`` to a velocity field on a coarser grid.

    The encoder has ``len(features)`` levels: level 0 at the input resolution with
    two convolutions of ``features[0]`` channels, each further level halving the
    resolution with a stride-2 convolution and adding a second convolution. The
    decoder upsamples (linear interpolation), concatenates the encoder output of
    the same resolution and applies two convolutions, and stops once it reaches
    ``input_size / output_stride``: a coarse velocity is cheaper to predict and is
    smooth by construction. A last convolution gives ``ndim`` channels; it starts
    with weights drawn from ``N(0, 1e-5^2)`` and zero bias, so an untrained network
    predicts an almost-zero velocity (the identity transform).

    Args:
        ndim: 2 or 3 spatial dimensions.
        in_channels: Channels of ``fixed`` plus channels of ``moving``.
        features: Channels per encoder level, finest first. Its length sets the
            depth: input sizes must be multiples of ``2 ** (len(features) - 1)``.
        output_stride: 1, 2 or 4; the velocity grid is the input grid divided by it.
        instance_norm: Put an instance norm after every hidden convolution.

    Raises:
        IntermodalError: for an unsupported ``ndim``, empty or non-positive
            ``features``, or an ``output_stride`` not in (1, 2, 4) or deeper than
            the encoder.

    Example:
        >>> net = RegistrationUNet(ndim=3)
        >>> fixed = moving = torch.zeros(1, 1, 32, 32, 32)
        >>> net(fixed, moving).shape
        torch.Size([1, 3, 16, 16, 16])
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int = 2,
        features: Sequence[int] = (16, 32, 32, 32),
        output_stride: int = 2,
        instance_norm: bool = False,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise IntermodalError(f"ndim must be 2 or 3, not {ndim!r}")
        features = tuple(int(f) for f in features)
        if not features or min(features) < 1:
            raise IntermodalError(
                f"features must be a non-empty sequence of positive integers, not {features}"
            )
        if in_channels < 1:
            raise IntermodalError(f"in_channels must be positive, not {in_channels}")
        if output_stride not in _OUTPUT_STRIDES:
            raise IntermodalError(
                f"output_stride must be one of {_OUTPUT_STRIDES}, not {output_stride!r}"
            )
        output_level = output_stride.bit_length() - 1
        if output_level > len(features) - 1:
            raise IntermodalError(
                f"output_stride {output_stride} needs at least {output_level + 1} encoder levels, "
                f"but features {features} has {len(features)}"
            )
        self.ndim = ndim
        self.in_channels = in_channels
        self.features = features
        self.output_stride = output_stride
        self.instance_norm = instance_norm

        self.encoder = nn.ModuleList()
        previous = in_channels
        for level, channels in enumerate(features):
            stride = 1 if level == 0 else 2
            self.encoder.append(
                nn.Sequential(
                    _ConvBlock(ndim, previous, channels, stride, instance_norm),
                    _ConvBlock(ndim, channels, channels, 1, instance_norm),
                )
            )
            previous = channels

        # decoder[i] produces level len(features) - 2 - i from the level below it.
        self.decoder = nn.ModuleList()
        for level in range(len(features) - 2, output_level - 1, -1):
            channels = features[level]
            self.decoder.append(
                nn.Sequential(
                    _ConvBlock(ndim, previous + channels, channels, 1, instance_norm),
                    _ConvBlock(ndim, channels, channels, 1, instance_norm),
                )
            )
            previous = channels

        self.head = _conv(ndim, previous, ndim)
        nn.init.normal_(self.head.weight, mean=0.0, std=1e-5)
        nn.init.zeros_(self.head.bias)

    @property
    def required_multiple(self) -> int:
        """Every input spatial size must be a multiple of this, ``2 ** (levels - 1)``."""
        return 2 ** (len(self.features) - 1)

    def check_inputs(self, fixed: Tensor, moving: Tensor) -> None:
        """Raise a :class:`ShapeError` (a ``ValueError``) unless the pair fits the network."""
        if check_image("fixed", fixed) != self.ndim or check_image("moving", moving) != self.ndim:
            raise ShapeError(
                f"this network is {self.ndim}D, but fixed is {tuple(fixed.shape)} and moving is "
                f"{tuple(moving.shape)}"
            )
        if fixed.shape[0] != moving.shape[0] or fixed.shape[2:] != moving.shape[2:]:
            raise ShapeError(
                "fixed and moving must have the same batch and spatial sizes, but fixed is "
                f"{tuple(fixed.shape)} and moving is {tuple(moving.shape)}"
            )
        if fixed.shape[1] + moving.shape[1] != self.in_channels:
            raise ShapeError(
                f"the network expects {self.in_channels} input channels in total, but fixed has "
                f"{fixed.shape[1]} and moving has {moving.shape[1]}"
            )
        spatial = tuple(fixed.shape[2:])
        if any(size % self.required_multiple for size in spatial):
            raise ShapeError(
                f"spatial size {spatial} must be a multiple of {self.required_multiple} along "
                f"every axis for {len(self.features)} levels; pad or resample the images"
            )

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """Predict the velocity field.

        Args:
            fixed: ``(B, Cf, *spatial)`` with ``spatial`` ``(H, W)`` or ``(D, H, W)``.
            moving: ``(B, Cm, *spatial)``, ``Cf + Cm == in_channels``.

        Returns:
            Velocity ``(B, ndim, *(spatial // output_stride))`` in voxels of that
            output grid; channel ``i`` is along spatial array axis ``i``.

        Raises:
            ValueError: (a :class:`ShapeError`) if the shapes do not fit the network.
        """
        self.check_inputs(fixed, moving)
        x = torch.cat([fixed, moving], dim=1)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        for i, block in enumerate(self.decoder):
            skip = skips[-2 - i]
            x = F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class RegistrationOutput(NamedTuple):
    """What :class:`RegistrationModel` returns.

    Attributes:
        velocity: ``(B, ndim, *spatial / output_stride)`` stationary velocity in
            voxels of the coarse grid.
        displacement: ``(B, ndim, *spatial)`` displacement ``u`` in voxels of the
            input grid, ``warped(x) = moving(x + u(x))``.
    """

    velocity: Tensor
    displacement: Tensor


class RegistrationModel(nn.Module):
    """A :class:`RegistrationUNet` followed by scaling and squaring.

    ``displacement = resize(exp(velocity))``: the velocity is integrated with
    ``integration_steps`` squarings on the coarse grid, then the displacement is
    resized to the input grid (vectors rescaled to its voxels). Integrating before
    upsampling costs ``output_stride ** ndim`` times less than the other order and,
    since the velocity is smooth at the coarse scale, gives nearly the same field.
    With ``integration_steps == 0`` the network output is used as a displacement.

    Args:
        ndim: 2 or 3.
        in_channels: Channels of ``fixed`` plus channels of ``moving``.
        features: Channels per encoder level, see :class:`RegistrationUNet`.
        output_stride: 1, 2 or 4.
        integration_steps: Number of squarings (``2 ** steps`` Euler steps); 0 for
            a plain displacement network.
        instance_norm: Instance norm after every hidden convolution.

    Example:
        >>> model = RegistrationModel(ndim=2)
        >>> out = model(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))
        >>> out.velocity.shape, out.displacement.shape
        (torch.Size([1, 2, 32, 32]), torch.Size([1, 2, 64, 64]))
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int = 2,
        features: Sequence[int] = (16, 32, 32, 32),
        output_stride: int = 2,
        integration_steps: int = 7,
        instance_norm: bool = False,
    ) -> None:
        super().__init__()
        if (
            isinstance(integration_steps, bool)
            or not isinstance(integration_steps, int)
            or (integration_steps < 0)
        ):
            raise IntermodalError(
                f"integration_steps must be a non-negative integer, not {integration_steps!r}"
            )
        self.unet = RegistrationUNet(
            ndim,
            in_channels=in_channels,
            features=features,
            output_stride=output_stride,
            instance_norm=instance_norm,
        )
        self.integration_steps = integration_steps

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions, 2 or 3."""
        return self.unet.ndim

    @property
    def required_multiple(self) -> int:
        """Every input spatial size must be a multiple of this."""
        return self.unet.required_multiple

    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain JSON-ready values, for a model card."""
        return {
            "ndim": self.unet.ndim,
            "in_channels": self.unet.in_channels,
            "features": list(self.unet.features),
            "output_stride": self.unet.output_stride,
            "integration_steps": self.integration_steps,
            "instance_norm": self.unet.instance_norm,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> RegistrationModel:
        """Build an (untrained) model from :meth:`config`'s dictionary.

        Raises:
            IntermodalError: if ``cfg`` has keys the constructor does not know or
                lacks ``ndim``.
        """
        known = {
            "ndim",
            "in_channels",
            "features",
            "output_stride",
            "integration_steps",
            "instance_norm",
        }
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise IntermodalError(
                f"model config has unknown keys {unknown}; known: {sorted(known)}"
            )
        if "ndim" not in cfg:
            raise IntermodalError("model config lacks 'ndim'")
        return cls(**cfg)

    def forward(self, fixed: Tensor, moving: Tensor) -> RegistrationOutput:
        """Predict the transform that warps ``moving`` onto ``fixed``.

        Args:
            fixed: ``(B, Cf, *spatial)``.
            moving: ``(B, Cm, *spatial)``, ``Cf + Cm == in_channels``; every spatial
                size a multiple of :attr:`required_multiple`.

        Returns:
            :class:`RegistrationOutput` with the coarse ``velocity`` and the
            full-resolution ``displacement`` ``(B, ndim, *spatial)`` in voxels.

        Raises:
            ValueError: (a :class:`ShapeError`) if the shapes do not fit the network.
        """
        velocity = self.unet(fixed, moving)
        coarse = integrate_velocity(velocity, steps=self.integration_steps)
        displacement = resize_displacement(coarse, tuple(fixed.shape[2:]))
        return RegistrationOutput(velocity=velocity, displacement=displacement)
