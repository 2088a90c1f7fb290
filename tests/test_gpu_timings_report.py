"""benchmarks/gpu_timings.py: the GPU target verdict follows the measured numbers."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_timings():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("gpu_timings")
    finally:
        sys.path.remove(str(BENCHMARKS))


def payload(ours_s: float, vxm_s: float | None, alignment_s: float = 4.0) -> dict:
    forward = [{"network": "intermodal", "precision": "fp32", "seconds": ours_s,
                "peak_gpu_mib": 900.0}]  # fmt: skip
    if vxm_s is not None:
        forward.append({"network": "voxelmorph", "precision": "fp32", "seconds": vxm_s,
                        "peak_gpu_mib": 3000.0})  # fmt: skip
    else:
        forward.append({"network": "voxelmorph", "error": "not importable: no module"})
    return {
        "date": "2026-01-01 00:00 UTC",
        "command": "python benchmarks/gpu_timings.py --out x.json",
        "machine": {"gpu": "Test GPU", "cpus": 4, "torch": "2.x"},
        "forward_repeats": 30,
        "forward_warmup": 5,
        "register_repeats": 3,
        "forward": forward,
        "register": [{"settings": "defaults", "seconds": 5.0, "stage_s": {
            "initial_alignment": alignment_s, "network": 0.1, "refine": 0.5, "output": 0.4}}],
    }  # fmt: skip


def test_a_fast_network_meets_the_target_with_the_ratio_to_voxelmorph(gpu_timings):
    text = gpu_timings.render(payload(0.0078, 0.0133))
    assert "**MET** (7.8 ms fp32; VxmPairwise 13.3 ms in the same run (ratio 0.59))" in text
    assert "| defaults | 5.00 | 4.00 | 0.10 | 0.50 | 0.40 |" in text
    assert "80 % of the defaults' 5.0 s" in text


def test_a_slow_network_does_not_meet_it(gpu_timings):
    text = gpu_timings.render(payload(0.3, None))
    assert "**NOT MET** (300.0 ms fp32)" in text
    assert "| voxelmorph | - | not run: not importable: no module | |" in text


def test_the_stored_measurement_renders(gpu_timings):
    stored = BENCHMARKS / "measured" / "gpu_timings.json"
    measured = json.loads(stored.read_text(encoding="utf-8"))
    text = gpu_timings.render(measured)
    ours = next(r for r in measured["forward"] if r["network"] == "intermodal")
    assert f"{1000 * ours['seconds']:.1f} ms fp32" in text
    assert text.startswith("<!-- gpu_timings:begin -->")
    assert text.endswith("<!-- gpu_timings:end -->")
