"""Run by tests/training/test_ddp.py under torchrun: train a few steps, record the weights.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 _ddp_worker.py \
    MANIFEST OUT
Each rank writes OUT/rank<r>.json with a SHA-256 of its final weights and its first pairs
(subject indices; with MANIFEST ``generator``, generated pairs, the first items' indices).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from intermodal.training import load_config, train
from intermodal.training import trainer as trainer_module


def main() -> None:
    manifest, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    models, first_pairs = [], []

    class RecordedModel(trainer_module.RegistrationModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            models.append(self)

    real_sample = trainer_module.sample_pairs

    def recorded_sample(*args, **kwargs):
        pairs = real_sample(*args, **kwargs)
        if not first_pairs:
            first_pairs.extend([p.moving, p.fixed] for p in pairs)
        return pairs

    trainer_module.RegistrationModel = RecordedModel
    trainer_module.sample_pairs = recorded_sample
    common = [
        "model.features=[8, 16, 16]",
        "model.integration_steps=4",
        "train.steps=6",
        "train.batch_size=2",
        "train.lr=3e-3",
        "train.validate_every=3",
        "train.checkpoint_every=3",
        f"out={json.dumps(str(out / 'run'))}",
        "device=cpu",
    ]
    if manifest == "generator":
        real_item = trainer_module.GeneratedPairs.__getitem__

        def recorded_item(self, index):
            if self.seed == 0 and len(first_pairs) < 2:
                first_pairs.append(index)
            return real_item(self, index)

        trainer_module.GeneratedPairs.__getitem__ = recorded_item
        data = [
            "data.source=generator",
            "data.dim=2",
            "generator.shape=[32, 32]",
            "generator.spacing=7.0",
            "generator.workers=0",
            "generator.validation_pairs=2",
        ]
    else:
        data = [f"data.manifest={json.dumps(manifest)}", "data.dim=2", "augment.probability=0.5"]
    config = load_config(None, [*data, *common])
    weights = train(config)
    digest = hashlib.sha256()
    for name, tensor in sorted(models[0].state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    rank = int(os.environ["RANK"])
    record = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "sha256": digest.hexdigest(),
        "first_pairs": first_pairs,
        "weights": str(weights),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
