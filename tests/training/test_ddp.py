"""Distributed data-parallel training: two CPU processes (Gloo) end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from intermodal.checkpoint import load_model

WORKER = Path(__file__).with_name("_ddp_worker.py")


_NEEDS_GLOO = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with Gloo is not available",
)


def _run_two_ranks(data: str, tmp_path: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        data,
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]


@_NEEDS_GLOO
def test_two_ranks_train_identical_weights_on_different_pairs(prepared_manifest, tmp_path):
    ranks = _run_two_ranks(str(prepared_manifest), tmp_path)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    assert ranks[0]["first_pairs"] != ranks[1]["first_pairs"]
    _, card = load_model(ranks[0]["weights"])
    assert card["training"]["steps"] == 6 and card["training"]["world_size"] == 2


@_NEEDS_GLOO
def test_two_ranks_on_generated_pairs_draw_different_items(tmp_path):
    ranks = _run_two_ranks("generator", tmp_path)
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    # step 0: rank 0 takes items 0 and 1, rank 1 items 2 and 3
    assert ranks[0]["first_pairs"] == [0, 1] and ranks[1]["first_pairs"] == [2, 3]
    _, card = load_model(ranks[0]["weights"])
    assert card["training"]["world_size"] == 2 and card["training"]["data"]["source"] == "generator"
    assert (Path(ranks[0]["weights"]).parent / "best.safetensors").is_file()
