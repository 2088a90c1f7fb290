"""Too little memory: a coarser working grid and a warning, or a clear refusal; never OOM.

The available memory is patched to chosen values; the estimate itself
(:func:`intermodal.registration.estimate_memory`) is the fit documented in ``registration.py``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from intermodal import registration
from intermodal.cli import main
from intermodal.data.phantom import make_phantom_pair
from intermodal.errors import IntermodalError
from intermodal.registration import Settings, estimate_memory, register

MIB = 1 << 20
SIZE = 256  # pixels per side, 1 mm: the working grid at 1 mm is 256 x 256


@pytest.fixture(scope="module")
def pair() -> tuple[sitk.Image, sitk.Image]:
    phantom = make_phantom_pair(shape=(SIZE, SIZE), spacing=1.0, rotation_deg=4.0)
    return phantom.ct, phantom.mr


def settings() -> Settings:
    return Settings(model=None, refine=3, init="none", device="cpu")


def need(working_side: int) -> float:
    """The margin-inflated estimate (bytes) for a square working grid of this many pixels."""
    estimate = estimate_memory(working_side**2, SIZE**2, ndim=2)
    return registration._MEMORY_MARGIN * estimate


def test_the_estimate_grows_with_the_grids():
    assert 0 < estimate_memory(10, 10, 3) < estimate_memory(10**6, 10, 3)
    assert estimate_memory(10**6, 10, 3) < estimate_memory(10**6, 10**6, 3)
    assert estimate_memory(10**6, 10**6, 2) < estimate_memory(10**6, 10**6, 3)


def test_available_memory_is_read_on_linux():
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        pytest.skip("no /proc/meminfo")
    lines = meminfo.read_text(encoding="utf-8").splitlines()
    total = int(next(x for x in lines if x.startswith("MemTotal:")).split()[1]) * 1024
    available = registration.available_memory()
    assert available is not None and 0 < available <= total


def test_enough_memory_keeps_the_grid_and_records_the_figures(pair):
    result = register(*pair, settings())
    assert result.report["working_grid"]["size"] == [SIZE, SIZE]
    assert result.report["warnings"] == []
    memory = result.report["memory"]
    assert memory["estimated_mib"] == round(need(SIZE) / MIB)
    assert memory["available_mib"] > memory["estimated_mib"]


@pytest.mark.parametrize("factor", [2, 4])
def test_too_little_memory_coarsens_the_grid_with_a_warning(pair, monkeypatch, caplog, factor):
    # Just enough for the grid `factor` times coarser, not for the one in between.
    available = int(need(SIZE // factor) + 0.5 * (need(SIZE // factor * 2) - need(SIZE // factor)))
    monkeypatch.setattr(registration, "available_memory", lambda: available)
    with caplog.at_level(logging.WARNING, logger="intermodal.registration"):
        result = register(*pair, settings())
    grid = result.report["working_grid"]
    assert grid["size"] == [SIZE // factor, SIZE // factor]
    assert grid["spacing"] == [float(factor), float(factor)]
    [warning] = result.report["warnings"]
    assert f"{factor}x coarser" in warning
    assert f"about {need(SIZE) / MIB:.0f} MiB" in warning
    assert f"{available / MIB:.0f} MiB are available" in warning
    assert f"{SIZE // factor}x{SIZE // factor} voxels of {factor}x{factor} mm" in warning
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [warning]
    # The outputs are still on the fixed image's own grid.
    assert result.displacement.GetSize() == pair[0].GetSize()
    assert result.report["memory"]["estimated_mib"] == round(need(SIZE // factor) / MIB)


def test_bad_too_little_memory_even_for_the_coarsest_grid(pair, monkeypatch):
    monkeypatch.setattr(registration, "available_memory", lambda: 50 * MIB)
    with pytest.raises(IntermodalError) as err:
        register(*pair, settings())
    message = str(err.value)
    assert "\n" not in message and message.startswith("not enough memory")
    assert f"about {need(SIZE) / MIB:.0f} MiB" in message
    coarsest = SIZE // registration._MAX_COARSENING
    assert f"about {need(coarsest) / MIB:.0f} MiB on the coarsest" in message
    assert "50 MiB are available" in message


def test_bad_too_little_memory_from_the_command_line(pair, monkeypatch, tmp_path, capsys):
    fixed, moving = tmp_path / "ct.nii.gz", tmp_path / "mr.nii.gz"
    sitk.WriteImage(pair[0], str(fixed))
    sitk.WriteImage(pair[1], str(moving))
    monkeypatch.setattr(registration, "available_memory", lambda: 1 * MIB)
    out = tmp_path / "out"
    args = ["register", "--fixed", str(fixed), "--moving", str(moving), "--out", str(out)]
    code = main([*args, "--model", "none", "--refine", "3", "--init", "none", "--quiet"])
    stderr = capsys.readouterr().err.strip()
    assert code == 2
    assert len(stderr.splitlines()) == 1 and "not enough memory" in stderr, stderr
    assert "1 MiB are available" in stderr
    assert not out.exists()


def test_cuda_holds_only_the_outputs_against_host_memory(pair, monkeypatch):
    """On the GPU the working-grid term is not host memory; only the fixed-image term counts."""
    on_host = registration._MEMORY_MARGIN * estimate_memory(0, SIZE**2, 2)
    monkeypatch.setattr(registration, "available_memory", lambda: int(on_host) + 1)
    grid = sitk.Image([SIZE, SIZE], sitk.sitkFloat32)
    kept, record = registration._grid_in_memory(pair[0], grid, 4, torch.device("cuda"))
    assert kept is grid and record["warning"] is None
    with pytest.raises(IntermodalError, match="not enough memory"):
        registration._grid_in_memory(pair[0], grid, 4, torch.device("cpu"))
    assert math.isclose(record["estimated_mib"], on_host / MIB, abs_tol=1)
