"""intermodal.optim.Adam against torch.optim.Adam, and what it spares a registration."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from intermodal.optim import Adam


def _quadratic_steps(optimizer_of, steps: int = 25) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    target = torch.randn(2, 3, 4, 5, generator=generator)
    scale = torch.rand(2, 3, 4, 5, generator=generator) + 0.1
    weights = torch.zeros_like(target).requires_grad_(True)
    optimizer = optimizer_of(weights)
    for _ in range(steps):
        optimizer.zero_grad()
        (scale * (weights - target) ** 2).sum().backward()
        optimizer.step()
    return weights.detach()


@pytest.mark.parametrize(
    ("lr", "betas", "eps"), [(0.1, (0.9, 0.999), 1e-8), (0.45, (0.5, 0.9), 1e-3)]
)
def test_steps_match_torch_adam(lr, betas, eps):
    ours = _quadratic_steps(lambda w: Adam(w, lr=lr, betas=betas, eps=eps))
    theirs = _quadratic_steps(lambda w: torch.optim.Adam([w], lr=lr, betas=betas, eps=eps))
    assert not torch.equal(ours, torch.zeros_like(ours))
    # float32 rounding, amplified by the oscillation at a high rate, is all that differs
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_first_step_moves_every_weight_by_the_learning_rate():
    # after one step m / sqrt(v) is sign(g) once both moments are bias-corrected
    weights = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    optimizer = Adam(weights, lr=0.25, eps=1e-12)
    (weights * torch.tensor([4.0, -0.01, 7.0])).sum().backward()
    optimizer.step()
    torch.testing.assert_close(weights.detach(), torch.tensor([0.75, -1.75, 2.75]))


def test_no_gradient_no_change():
    weights = torch.ones(3, requires_grad=True)
    optimizer = Adam(weights, lr=1.0)
    optimizer.step()
    assert torch.equal(weights.detach(), torch.ones(3)) and optimizer.steps == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be positive"),
        ({"betas": (0.9, 1.0)}, "betas must each be in"),
        ({"eps": -1.0}, "eps must be positive"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Adam(torch.zeros(2, requires_grad=True), **kwargs)


def test_param_must_be_a_leaf_that_requires_grad():
    with pytest.raises(ValueError, match="leaf tensor that requires grad"):
        Adam(torch.zeros(2))


def test_a_registration_imports_none_of_dynamo_sympy_or_scipy_ndimage():
    # torch.optim.Adam() imported torch._dynamo (1.75 s) and torch.unravel_index sympy (0.66 s)
    # at the first registration of every process; the sampled refinement uses neither now.
    # scipy.ndimage (0.2 s) is for the surface distances of evaluation, not for register.
    script = """
import sys
import numpy as np
import SimpleITK as sitk
from intermodal.registration import Settings, register
grid = np.mgrid[:24, :28, :20].astype(np.float32)
blob = np.exp(-((grid[0] - 12) ** 2 + (grid[1] - 14) ** 2 + (grid[2] - 10) ** 2) / 40)
fixed = sitk.GetImageFromArray((1000 * blob - 500).astype(np.float32))
moving = sitk.GetImageFromArray((300 * np.roll(blob, 2, 0)).astype(np.float32))
register(fixed, moving, Settings(model=None, init="moments", refine=3, sampling=0.5,
                                 spacing=1.0, fixed_modality="ct", moving_modality="mr",
                                 device="cpu", pyramid=(1,)))
print(sorted(m for m in ("torch._dynamo", "sympy", "scipy.ndimage") if m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
