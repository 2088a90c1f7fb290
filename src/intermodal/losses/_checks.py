"""Input checks shared by the losses (and the networks) at their public boundary."""

from __future__ import annotations

from torch import Tensor

from intermodal.errors import IntermodalError


class ShapeError(IntermodalError, ValueError):
    """A tensor argument has the wrong number of dimensions or the wrong shape.

    It is a :class:`ValueError` too, so callers that expect the usual Python
    exception for a bad argument value catch it.
    """


def check_image(name: str, image: Tensor) -> int:
    """Check that ``image`` is ``(B, C, H, W)`` or ``(B, C, D, H, W)``; return its spatial ndim."""
    if image.ndim not in (4, 5):
        raise ShapeError(
            f"{name} must be (B, C, H, W) or (B, C, D, H, W), not a tensor of shape "
            f"{tuple(image.shape)} ({image.ndim} dimensions)"
        )
    return image.ndim - 2


def check_pair(fixed_name: str, fixed: Tensor, warped_name: str, warped: Tensor) -> int:
    """Check two images of the same, valid shape; return the spatial ndim."""
    ndim = check_image(fixed_name, fixed)
    check_image(warped_name, warped)
    if fixed.shape != warped.shape:
        raise ShapeError(
            f"{fixed_name} and {warped_name} must have the same shape, but {fixed_name} is "
            f"{tuple(fixed.shape)} and {warped_name} is {tuple(warped.shape)}"
        )
    return ndim


def check_displacement(name: str, displacement: Tensor) -> int:
    """Check a ``(B, ndim, *spatial)`` field with ndim 2 or 3; return ndim."""
    ndim = check_image(name, displacement)
    if displacement.shape[1] != ndim:
        raise ShapeError(
            f"{name} must be (B, {ndim}, *spatial) for a {ndim}D field, not "
            f"{tuple(displacement.shape)} ({displacement.shape[1]} channels)"
        )
    return ndim
