"""Helpers for the I/O tests: small synthetic images, error message checks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``angle`` radians (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def make_image(ndim: int, *, oblique: bool = True, seed: int = 0) -> sitk.Image:
    """A float32 ramp plus noise with anisotropic spacing, an offset origin, oblique direction."""
    rng = np.random.default_rng(seed)
    shape = (5, 6, 7)[3 - ndim :]
    values = rng.normal(size=shape).astype(np.float32) + np.arange(shape[-1], dtype=np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 1.3, 2.9)[:ndim])
    image.SetOrigin((-12.5, 40.25, 7.0)[:ndim])
    if oblique:
        if ndim == 3:
            direction = rotation(np.array([1.0, 2.0, 3.0]), 0.6)
        else:
            c, s = np.cos(0.4), np.sin(0.4)
            direction = np.array([[c, -s], [s, c]])
        image.SetDirection(direction.ravel().tolist())
    return image


def assert_one_line_naming(err: pytest.ExceptionInfo[BaseException], name: str) -> None:
    """The error message is one line and names the file."""
    message = str(err.value)
    assert "\n" not in message, message
    assert name in message, message
