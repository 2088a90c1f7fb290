"""benchmarks/plastimatch_peer.py: its configurations and scores, on synthetic masks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "plastimatch_peer.py"


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location("plastimatch_peer", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_regularised_configuration_differs_only_by_lambda(peer) -> None:
    plain, regularised = peer.plastimatch_configs().values()
    assert plain == peer.PLASTIMATCH_STAGES
    assert regularised.count(f"regularization_lambda={peer.PLASTIMATCH_LAMBDA}") == 2
    assert regularised.replace(f"regularization_lambda={peer.PLASTIMATCH_LAMBDA}\n", "") == plain


def test_largest_component_fills_holes(peer) -> None:
    mask = np.zeros((9, 12, 12), bool)
    mask[2:7, 2:10, 2:10] = True
    mask[4, 5, 5] = False  # a hole
    mask[0, 0, 0] = True  # a speck
    body = peer.largest_component(mask)
    assert body[4, 5, 5] and not body[0, 0, 0]
    assert body.sum() == 5 * 8 * 8


@pytest.mark.parametrize("shift", [0, 1])
def test_agreement_known_answers(peer, shift: int) -> None:
    reference = np.zeros((10, 10, 10), bool)
    reference[2:8, 2:8, 2:8] = True
    candidate = np.roll(reference, shift, axis=2)
    scores = peer.agreement(reference, candidate, (1.0, 1.0, 2.0))
    assert scores["dice"] == pytest.approx(1.0 if shift == 0 else 2 * 180 / 432, abs=1e-4)
    assert (scores["mean_distance_mm"] == 0.0) == (shift == 0)
