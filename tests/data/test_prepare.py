"""Pre-alignment: one common grid, NMI gained, resumable, failures reported at the end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.cli import main
from intermodal.data.manifest import load_manifest
from intermodal.data.prepare import prepare_dataset
from intermodal.data.synth import write_dataset
from intermodal.errors import IntermodalError, OutputExistsError


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("raw") / "data", 3, seed=5, dim=2)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "p"
    return prepare_dataset(raw, out, deformable="none"), out


def test_every_subject_shares_one_grid_and_gains_nmi(prepared):
    summary, out = prepared
    assert sorted(summary.done) == ["subject_000", "subject_001", "subject_002"]
    manifest = load_manifest(summary.manifest)
    grids = set()
    for entry in manifest.subjects:
        for path in (entry.ct, entry.mr, entry.labels, entry.mr_labels):
            image = sitk.ReadImage(str(path))
            grids.add((image.GetSize(), image.GetSpacing()))
        record = json.loads((out / entry.id / "done.json").read_text())
        assert record["nmi_after"] > record["nmi_before"]
        values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(entry.labels)))))
        assert values <= set(range(6)) and {2, 3} <= values
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(entry.ct)))
        assert ct.min() >= 0 and ct.max() <= 1
    assert len(grids) == 1
    size, _ = grids.pop()
    assert all(n % 16 == 0 for n in size)
    assert json.loads(summary.manifest.read_text())["prepared"]["deformable"] == "none"
    assert (out / "summary.md").is_file()


def test_resume_skips_done_subjects(raw, prepared):
    _, out = prepared
    again = prepare_dataset(raw, out, deformable="none")
    assert again.done == [] and len(again.skipped) == 3


def test_bspline_pre_alignment_beats_affine(raw, tmp_path):
    data = json.loads(raw.read_text())
    data["subjects"] = data["subjects"][:1]
    data["training"], data["validation"], data["test"] = [data["subjects"][0]["id"]], [], []
    one = raw.parent / "one.json"
    one.write_text(json.dumps(data))
    summary = prepare_dataset(one, tmp_path / "p")
    record = json.loads((tmp_path / "p" / summary.done[0] / "done.json").read_text())
    assert record["nmi_after"] > record["nmi_affine"] > record["nmi_before"]


def test_bad_subject_is_reported_and_the_rest_prepared(raw, tmp_path):
    data = json.loads(raw.read_text())
    # Its header reads (so the manifest check passes), its voxels hold NaN (so reading fails)
    values = np.ones((32, 32), np.float32)
    values[5, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(values), str(raw.parent / "broken_mr.mha"))
    data["subjects"][2]["mr"] = "broken_mr.mha"
    bad = raw.parent / "with_broken.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(IntermodalError, match="subject_002"):
        prepare_dataset(bad, tmp_path / "p", deformable="none")
    manifest = load_manifest(tmp_path / "p" / "dataset.json", required_splits=())
    assert [s.id for s in manifest.subjects] == ["subject_000", "subject_001"]
    assert "failed" in (tmp_path / "p" / "summary.md").read_text()


def test_bad_folder_from_another_manifest(raw, prepared, tmp_path):
    _, out = prepared
    other = raw.parent / "other.json"
    other.write_text(raw.read_text())
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare_dataset(other, out, deformable="none")


def test_prepare_command(capsys, raw, tmp_path):
    code = main(
        ["prepare", str(raw), "--out", str(tmp_path / "p"), "--deformable", "none", "--quiet"]
    )
    assert code == 0 and "prepared 3 subject(s)" in capsys.readouterr().out
