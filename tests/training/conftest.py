"""A tiny prepared 2D dataset (64 x 64 pixels) and a fast training configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from intermodal.data.synth import generate_subject
from intermodal.io import write_image
from intermodal.preprocess import normalize_intensity
from intermodal.training.config import load_config

LABEL_NAMES = {
    "0": "background",
    "1": "body",
    "2": "bone",
    "3": "bladder",
    "4": "prostate",
    "5": "rectum",
}


def write_prepared_dataset(folder: Path, n_subjects: int = 6, n_validation: int = 2) -> Path:
    """Subjects resampled onto one 64 x 64 grid of 3.75 mm, intensities in [0, 1]."""
    entries = []
    for k in range(n_subjects):
        subject = generate_subject(100 + k, dim=2, shape=(64, 64), spacing=3.75)
        grid = subject.ct
        ct = normalize_intensity(subject.ct, "ct")
        mr = sitk.Resample(
            normalize_intensity(subject.mr, "mr"),
            grid,
            sitk.Transform(),
            sitk.sitkLinear,
            0.0,
            sitk.sitkFloat32,
        )
        subject_id = f"s{k:02d}"
        write_image(ct, folder / subject_id / "ct.nii.gz")
        write_image(mr, folder / subject_id / "mr.nii.gz")
        write_image(subject.ct_labels, folder / subject_id / "labels.nii.gz")
        entries.append(
            {
                "id": subject_id,
                "ct": f"{subject_id}/ct.nii.gz",
                "mr": f"{subject_id}/mr.nii.gz",
                "labels": f"{subject_id}/labels.nii.gz",
            }
        )
    ids = [e["id"] for e in entries]
    n_train = n_subjects - n_validation
    manifest = {
        "name": "tiny-prepared",
        "labels": LABEL_NAMES,
        "subjects": entries,
        "training": ids[:n_train],
        "validation": ids[n_train:],
        "test": [],
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


@pytest.fixture(scope="session")
def prepared_manifest(tmp_path_factory) -> Path:
    return write_prepared_dataset(tmp_path_factory.mktemp("prepared"))


@pytest.fixture
def tiny_config(prepared_manifest, tmp_path):
    """20 steps of a small 2D network on the CPU, checkpointing every 5 steps."""

    def make(*overrides: str):
        return load_config(
            None,
            [
                f"data.manifest={json.dumps(str(prepared_manifest))}",
                "data.dim=2",
                "model.features=[8, 16, 16]",
                "model.integration_steps=4",
                "train.steps=20",
                "train.batch_size=2",
                "train.lr=3e-3",
                "train.validate_every=10",
                "train.checkpoint_every=5",
                "train.log_every=1",
                f"out={json.dumps(str(tmp_path / 'run'))}",
                "device=cpu",
                *overrides,
            ],
        )

    return make


@pytest.fixture(autouse=True)
def _one_thread():
    """These tiny networks run fastest on one thread, and a busy second core cannot stall them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
