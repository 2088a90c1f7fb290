"""Fixtures for the I/O tests: small images with oblique directions, anisotropic spacing."""

from __future__ import annotations

import pytest
import SimpleITK as sitk
from io_helpers import make_image


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def image(request: pytest.FixtureRequest) -> sitk.Image:
    return make_image(request.param)


@pytest.fixture
def image3d() -> sitk.Image:
    return make_image(3)
