"""Manifests load from JSON and CSV, and every problem is reported in one error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.data.manifest import ManifestError, load_manifest, write_manifest
from intermodal.data.synth import write_dataset
from intermodal.errors import IntermodalError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth") / "data", 4, seed=2, dim=2)


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_synth_manifest_loads(dataset):
    manifest = load_manifest(dataset)
    assert [s.id for s in manifest.subjects] == [f"subject_{k:03d}" for k in range(4)]
    assert manifest.splits == {
        "training": ["subject_000", "subject_001"],
        "validation": ["subject_002"],
        "test": ["subject_003"],
    }
    for s in manifest.subjects:
        assert s.ct.is_absolute() and s.ct.is_file() and s.mr.is_file()
        assert s.labels.is_file() and s.mr_labels.is_file() and s.landmarks is None
        assert isinstance(s.extra["seed"], int)
    assert manifest.labels[0] == "background" and manifest.labels[3] == "bladder"
    assert manifest.info["numSubjects"] == 4
    # a folder holding dataset.json is accepted too
    assert load_manifest(dataset.parent).path == manifest.path


def test_split_and_subject_helpers(dataset):
    manifest = load_manifest(dataset)
    assert [s.id for s in manifest.split("training")] == ["subject_000", "subject_001"]
    assert [s.id for s in manifest.split("test")] == ["subject_003"]
    assert manifest.subject("subject_002").ct.name == "ct.nii.gz"
    with pytest.raises(IntermodalError, match="no subject with id 'ghost'"):
        manifest.subject("ghost")
    with pytest.raises(IntermodalError, match="no split 'train'"):
        manifest.split("train")


def test_write_manifest_round_trip_keeps_relative_paths(dataset, tmp_path):
    manifest = load_manifest(dataset)
    copy = write_manifest(manifest, tmp_path / "elsewhere" / "copy.json")
    text = json.loads(copy.read_text(encoding="utf-8"))
    first = text["subjects"][0]
    assert first["ct"].startswith("../") and not first["ct"].startswith("/")
    assert first["seed"] == manifest.subjects[0].extra["seed"]
    again = load_manifest(copy)
    assert again.subjects == manifest.subjects
    assert again.splits == manifest.splits and again.labels == manifest.labels
    assert not list(copy.parent.glob(".*tmp*"))  # no temporary file left behind


def test_csv_manifest_loads(dataset):
    manifest = load_manifest(dataset)
    rows = ["id,ct,mr,labels,split"]
    for entry in manifest.subjects:
        split = next(name for name, ids in manifest.splits.items() if entry.id in ids)
        ct = entry.ct.relative_to(dataset.parent)  # relative to the CSV's folder
        rows.append(f"{entry.id},{ct},{entry.mr},{entry.labels},{split}")
    path = dataset.parent / "dataset.csv"
    path.write_text("\n".join(rows) + "\n")
    loaded = load_manifest(path)
    assert [s.ct for s in loaded.subjects] == [s.ct for s in manifest.subjects]
    assert loaded.splits == manifest.splits
    assert all(s.mr_labels is None for s in loaded.subjects)


def test_csv_without_split_column_puts_everything_in_training(dataset):
    manifest = load_manifest(dataset)
    rows = ["ID, CT, MR"] + [f"{s.id},{s.ct},{s.mr}" for s in manifest.subjects]
    path = dataset.parent / "nosplit.csv"
    path.write_text("\n".join(rows) + "\n")
    assert load_manifest(path).splits["training"] == [s.id for s in manifest.subjects]


def test_bad_manifest_lists_every_problem(dataset):
    data = json.loads(dataset.read_text(encoding="utf-8"))
    root = dataset.parent
    subjects = data["subjects"]
    subjects[0]["ct"] = "nowhere/ct.nii.gz"  # missing file
    wrong = sitk.GetImageFromArray(np.zeros((7, 9), np.uint8))
    sitk.WriteImage(wrong, str(root / "wrong_labels.nii.gz"))
    subjects[1]["labels"] = "wrong_labels.nii.gz"  # size differs from its CT
    volume = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    sitk.WriteImage(volume, str(root / "mr3d.nii.gz"))
    subjects[2]["mr"] = "mr3d.nii.gz"  # 3D MR with a 2D CT
    del subjects[2]["mr_labels"]  # which would no longer fit the MR either
    (root / "garbage.nii.gz").write_bytes(b"not an image at all")
    subjects[3]["mr_labels"] = "garbage.nii.gz"  # unreadable
    data["training"] = []  # empty required split
    with pytest.raises(ManifestError) as caught:
        load_manifest(write_json(root / "bad.json", data))
    error = caught.value
    lines = str(error).splitlines()
    assert lines[0] == f"{root / 'bad.json'}: 5 problems:"
    assert len(lines) == 6 and len(error.problems) == 5
    message = str(error)
    assert "subject subject_000: ct" in message and "nowhere/ct.nii.gz: file not found" in message
    assert "subject subject_001: labels" in message and "wrong_labels.nii.gz" in message
    assert "size (9, 7) differs from (160, 160)" in message
    assert "subject subject_002:" in message and "mr3d.nii.gz is 3D" in message
    assert "subject subject_003: mr_labels" in message and "garbage.nii.gz" in message
    assert 'split "training": empty' in message


def test_bad_dimension_across_the_dataset(dataset, tmp_path):
    data = json.loads(dataset.read_text(encoding="utf-8"))
    root = dataset.parent
    volume = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    sitk.WriteImage(volume, str(root / "vol_ct.nii.gz"))
    sitk.WriteImage(volume, str(root / "vol_mr.nii.gz"))
    data["subjects"][3].update(ct="vol_ct.nii.gz", mr="vol_mr.nii.gz")
    del data["subjects"][3]["labels"], data["subjects"][3]["mr_labels"]
    with pytest.raises(ManifestError, match="subject subject_003: ct is 3D but most subjects"):
        load_manifest(write_json(root / "mixed.json", data))
    # without check_files only the structure and the files' existence are checked
    assert len(load_manifest(root / "mixed.json", check_files=False).subjects) == 4


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"name": "x"}', 'missing key "subjects"'),
        ('{"subjects": {}}', '"subjects" must be a list'),
        ('{"subjects": [{"id": "a", "ct": "x.nii.gz"}], "training": ["a"]}', 'missing "mr"'),
        ('{"subjects": [{"ct": "x", "mr": "y"}]}', 'subjects\\[0\\]: missing or empty "id"'),
        ('{"subjects": [], "labels": {"one": "x"}}', "key 'one' is not an integer"),
    ],
)
def test_bad_manifest_files(tmp_path, content, expected):
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(ManifestError, match=expected):
        load_manifest(path)


def test_bad_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_manifest(tmp_path / "absent.json")


def test_bad_duplicate_and_unknown_ids(dataset):
    data = json.loads(dataset.read_text(encoding="utf-8"))
    data["subjects"].append(dict(data["subjects"][0]))
    data["validation"] = data["validation"] + ["ghost", data["training"][0]]
    with pytest.raises(ManifestError) as caught:
        load_manifest(write_json(dataset.parent / "dupes.json", data))
    message = str(caught.value)
    assert "3 problems" in message
    assert "subject subject_000: id used by 2 subjects" in message
    assert 'split "validation": subject ghost: no subject has this id' in message
    assert "subject subject_000: in both training and validation splits" in message


def test_bad_csv(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,mr\na,b\n")
    with pytest.raises(ManifestError, match="lacks column\\(s\\) ct"):
        load_manifest(path)
    path.write_text("id,ct,mr,split\na,x.nii.gz,y.nii.gz,train\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, required_splits=())
    assert "split 'train' is not one of" in str(caught.value)
    assert "subject a: ct" in str(caught.value) and "x.nii.gz: file not found" in str(caught.value)
