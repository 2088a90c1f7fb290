"""Manifests load from JSON and CSV, and every problem is reported in one error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.data.manifest import ManifestError, load_manifest, write_manifest
from intermodal.data.synth import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth") / "data", 4, seed=2, dim=2)


def test_synth_manifest_loads(dataset):
    manifest = load_manifest(dataset)
    assert len(manifest.subjects) == 4
    assert {s.id for s in manifest.split("training")} <= {s.id for s in manifest.subjects}
    assert all(s.ct.is_file() and s.mr.is_file() and s.labels.is_file() for s in manifest.subjects)
    assert manifest.labels[3] == "bladder"


def test_write_manifest_round_trip_keeps_relative_paths(dataset, tmp_path):
    manifest = load_manifest(dataset)
    copy = write_manifest(manifest, dataset.parent / "copy.json")
    text = json.loads(copy.read_text())
    assert not any(str(s["ct"]).startswith("/") for s in text["subjects"])
    again = load_manifest(copy)
    assert [s.ct for s in again.subjects] == [s.ct for s in manifest.subjects]
    assert again.splits == manifest.splits


def test_csv_manifest_loads(dataset):
    manifest = load_manifest(dataset)
    rows = ["id,ct,mr,labels,split"]
    for entry in manifest.subjects:
        split = next(name for name, ids in manifest.splits.items() if entry.id in ids)
        rows.append(f"{entry.id},{entry.ct},{entry.mr},{entry.labels},{split}")
    path = dataset.parent / "dataset.csv"
    path.write_text("\n".join(rows) + "\n")
    loaded = load_manifest(path)
    assert [s.id for s in loaded.subjects] == [s.id for s in manifest.subjects]
    assert loaded.splits["training"] == manifest.splits["training"]


def test_bad_manifest_lists_every_problem(dataset, tmp_path):
    data = json.loads(dataset.read_text())
    root = dataset.parent
    subjects = data["subjects"]
    subjects[0]["ct"] = "nowhere/ct.nii.gz"  # missing file
    wrong = sitk.GetImageFromArray(np.zeros((7, 9), np.uint8))
    sitk.WriteImage(wrong, str(root / "wrong_labels.nii.gz"))
    subjects[1]["labels"] = "wrong_labels.nii.gz"  # size differs from its CT
    volume = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    sitk.WriteImage(volume, str(root / "mr3d.nii.gz"))
    subjects[2]["mr"] = "mr3d.nii.gz"  # 3D MR with a 2D CT
    data["training"] = []  # empty split
    bad = root / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ManifestError) as caught:
        load_manifest(bad)
    message = str(caught.value)
    assert "4 problems" in message
    assert "nowhere/ct.nii.gz" in message and "not found" in message
    assert "wrong_labels.nii.gz" in message and "differs from CT size" in message
    assert "mr3d.nii.gz" in message and "2D but MR is 3D" in message
    assert "split training: is empty" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not a readable JSON"),
        ("[1, 2]", "must be an object"),
        ('{"subjects": [{"id": "a", "ct": "x.nii.gz"}], "training": ["a", "b"]}', "no mr"),
    ],
)
def test_bad_manifest_files(tmp_path, content, expected):
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(ManifestError, match=expected):
        load_manifest(path)


def test_bad_duplicate_and_unknown_ids(dataset):
    data = json.loads(dataset.read_text())
    data["subjects"].append(dict(data["subjects"][0]))
    data["validation"] = data["validation"] + ["ghost", data["training"][0]]
    bad = dataset.parent / "dupes.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ManifestError) as caught:
        load_manifest(bad)
    message = str(caught.value)
    assert "duplicate id" in message
    assert "unknown subject 'ghost'" in message
    assert "in both training and validation" in message
