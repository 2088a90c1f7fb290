"""The pre-alignment step: one common grid, better NMI, labels kept, resume, failures reported."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

import intermodal.data.prepare as prepare_module
from intermodal.cli import main
from intermodal.data.manifest import load_manifest
from intermodal.data.prepare import prepare_dataset
from intermodal.data.synth import generate_subject, write_dataset
from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.io import write_image


def read(path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def summary_rows(out) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Four 2D synthetic subjects: two training, one validation, one test."""
    return write_dataset(tmp_path_factory.mktemp("raw") / "data", 4, seed=5, dim=2)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "out"
    calls = []
    summary = prepare_dataset(
        raw, out, deformable="none", progress=lambda *args: calls.append(args)
    )
    return summary, out, calls


@pytest.fixture
def prepared_here(monkeypatch):
    """The ids of the subjects prepared in this process, in order (workers are not seen)."""
    calls = []
    original = prepare_module._prepare_subject

    def counting(entry, *args, **kwargs):
        calls.append(entry.id)
        return original(entry, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "_prepare_subject", counting)
    return calls


def small_dataset(root, n, dim=2):
    """A copy of the first ``n`` subjects of a fresh dataset, all in training."""
    path = write_dataset(root, n, seed=9, dim=dim)
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(training=[s["id"] for s in data["subjects"]], validation=[], test=[])
    path.write_text(json.dumps(data))
    return path


def test_prepared_subjects_share_one_grid(prepared, raw):
    summary, out, calls = prepared
    assert summary.manifest == out / "dataset.json"
    assert summary.done == [f"subject_{k:03d}" for k in range(4)]
    assert summary.skipped == [] and summary.failed == {}
    assert calls == [("prepare", k, 4) for k in range(5)]
    manifest = load_manifest(summary.manifest)
    source = load_manifest(raw)
    assert manifest.splits == source.splits and manifest.labels == source.labels
    info = manifest.info["prepared"]
    # the raw 2D CTs are 160 x 160 at 1.5 mm, already a multiple of 16
    assert info["shape"] == [160, 160] and info["spacing"] == [1.5, 1.5]
    assert info["deformable"] == "none" and "HU window" in info["normalisation"]["ct"]
    for entry in manifest.subjects:
        assert entry.ct.parent == out / entry.id
        for path in (entry.ct, entry.mr, entry.labels, entry.mr_labels):
            image = read(path)
            assert image.GetSize() == (160, 160)
            assert image.GetSpacing() == pytest.approx((1.5, 1.5))
            assert image.GetDirection() == (1.0, 0.0, 0.0, 1.0)
        for path in (entry.ct, entry.mr):
            image = read(path)
            values = sitk.GetArrayViewFromImage(image)
            assert image.GetPixelID() == sitk.sitkFloat32
            assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.5
        # centred on the subject's own CT
        ct = read(source.subject(entry.id).ct)
        centre = ct.TransformContinuousIndexToPhysicalPoint([79.5, 79.5])
        grid = read(entry.ct)
        assert grid.TransformContinuousIndexToPhysicalPoint([79.5, 79.5]) == pytest.approx(centre)
        assert (entry.ct.parent / "qc.png").stat().st_size > 1000
    assert (out / "summary.md").read_text(encoding="utf-8").count("| ok |") == 4


def test_nmi_improves_with_pre_alignment(prepared):
    rows = summary_rows(prepared[1])
    assert len(rows) == 4
    for row in rows.values():
        assert row["status"] == "ok" and row["nmi_deformable"] == ""
        assert float(row["nmi_affine"]) >= float(row["nmi_before"])


def test_label_values_are_preserved(prepared, raw):
    manifest, source = load_manifest(prepared[0].manifest), load_manifest(raw)
    for entry in manifest.subjects:
        original = source.subject(entry.id)
        for new, old in ((entry.labels, original.labels), (entry.mr_labels, original.mr_labels)):
            image = read(new)
            assert image.GetPixelID() == sitk.sitkUInt8
            values = set(np.unique(sitk.GetArrayViewFromImage(image)))
            old_values = set(np.unique(sitk.GetArrayFromImage(read(old))).astype(int))
            assert values <= old_values
            assert values >= old_values - {4}  # the small prostate may fall between MR voxels
        ct_labels = sitk.GetArrayFromImage(read(entry.labels))
        old_ct = sitk.GetArrayFromImage(read(original.labels))
        # the grid matches the CT's here, so nearest neighbour copies it exactly
        assert np.array_equal(ct_labels, old_ct)


def test_bspline_in_2d_improves_on_affine(tmp_path):
    source = small_dataset(tmp_path / "raw", 1)
    summary = prepare_dataset(source, tmp_path / "out", deformable="bspline")
    row = summary_rows(tmp_path / "out")["subject_000"]
    before, affine, deformable = (
        float(row[f"nmi_{stage}"]) for stage in ("before", "affine", "deformable")
    )
    assert deformable > before and deformable >= affine - 0.005
    assert load_manifest(summary.manifest).info["prepared"]["deformable"] == "bspline"


def test_small_3d_with_explicit_shape_and_spacing(tmp_path):
    subject = generate_subject(4, dim=3, shape=(24, 24, 20), spacing=6.0)
    root = tmp_path / "raw"
    write_image(subject.ct, root / "ct.nii.gz")
    write_image(subject.mr, root / "mr.nii.gz")
    write_image(subject.ct_labels, root / "labels.nii.gz")
    (root / "m.csv").write_text("id,ct,mr,labels\nonly,ct.nii.gz,mr.nii.gz,labels.nii.gz\n")
    summary = prepare_dataset(
        root / "m.csv", tmp_path / "out", spacing=8.0, shape=(16, 20, 24), deformable="none"
    )
    manifest = load_manifest(summary.manifest)
    for path in (manifest.subjects[0].ct, manifest.subjects[0].mr, manifest.subjects[0].labels):
        image = read(path)
        assert image.GetSize() == (24, 20, 16) and image.GetSpacing() == (8.0, 8.0, 8.0)
    assert manifest.subjects[0].mr_labels is None
    assert manifest.info["prepared"]["shape"] == [16, 20, 24]


def test_default_3d_grid_is_rounded_up_to_16(tmp_path):
    subject = generate_subject(4, dim=3, shape=(20, 20, 16), spacing=6.0)
    grid = prepare_module._Grid(size=(48, 48, 48), spacing=(2.5,) * 3)
    assert grid.centred_on(subject.ct).GetDirection() == tuple(np.eye(3).ravel())
    write_image(subject.ct, tmp_path / "ct.nii.gz")
    write_image(subject.mr, tmp_path / "mr.nii.gz")
    (tmp_path / "m.csv").write_text("id,ct,mr\nonly,ct.nii.gz,mr.nii.gz\n")
    manifest = load_manifest(tmp_path / "m.csv")
    common = prepare_module._common_grid(manifest, None, None)
    # 20 x 6 mm = 120 mm -> 48 voxels of 2.5 mm; 16 x 6 = 96 mm -> 38.4 -> 48
    assert common.size == (48, 48, 48) and common.spacing == (2.5, 2.5, 2.5)


def test_resume_skips_done_subjects(tmp_path, prepared_here):
    source = small_dataset(tmp_path / "raw", 2)
    out = tmp_path / "out"
    first = prepare_dataset(source, out, deformable="none")
    assert first.done == ["subject_000", "subject_001"]
    calls = prepared_here
    del calls[:]  # count from here
    again = prepare_dataset(source, out, deformable="none")
    assert calls == [] and again.skipped == ["subject_000", "subject_001"] and again.done == []
    assert summary_rows(out)["subject_000"]["nmi_affine"] != ""  # kept from the first run

    (out / "subject_001" / "mr.nii.gz").unlink()  # an interrupted subject
    third = prepare_dataset(source, out, deformable="none")
    assert calls == ["subject_001"] and third.skipped == ["subject_000"]
    assert len(load_manifest(third.manifest).subjects) == 2

    prepare_dataset(source, out, deformable="none", overwrite=True)
    assert calls == ["subject_001", "subject_000", "subject_001"]


def test_failed_subject_is_reported_and_the_others_prepared(tmp_path):
    source = small_dataset(tmp_path / "raw", 3)
    (source.parent / "subject_001" / "mr.nii.gz").write_bytes(b"\x1f\x8b corrupt")
    out = tmp_path / "out"
    with pytest.raises(IntermodalError) as caught:
        prepare_dataset(source, out, deformable="none")
    message = str(caught.value)
    assert "1 of 3 subjects failed: subject_001" in message and "summary.md" in message
    rows = summary_rows(out)
    assert rows["subject_001"]["status"] == "failed"
    assert "mr.nii.gz" in rows["subject_001"]["message"]
    assert "\n" not in rows["subject_001"]["message"]
    assert rows["subject_000"]["status"] == rows["subject_002"]["status"] == "ok"
    manifest = load_manifest(out / "dataset.json")
    assert [s.id for s in manifest.subjects] == ["subject_000", "subject_002"]
    assert manifest.splits["training"] == ["subject_000", "subject_002"]
    assert not (out / "subject_001" / "done.json").exists()
    assert "failed: " in (out / "summary.md").read_text(encoding="utf-8")

    # once fixed, a rerun prepares only the subject that failed
    shutil.copy(source.parent / "subject_000" / "mr.nii.gz", source.parent / "subject_001")
    summary = prepare_dataset(source, out, deformable="none")
    assert summary.done == ["subject_001"] and summary.failed == {}


def test_parallel_jobs_match_one_after_another(tmp_path, prepared_here):
    source = small_dataset(tmp_path / "raw", 3)
    serial = prepare_dataset(source, tmp_path / "serial", deformable="none")
    assert prepared_here == serial.done  # one after another: all in this process
    del prepared_here[:]
    calls = []
    parallel = prepare_dataset(
        source, tmp_path / "parallel", deformable="none", jobs=2,
        progress=lambda *args: calls.append(args),
    )  # fmt: skip
    assert parallel.done == serial.done == ["subject_000", "subject_001", "subject_002"]
    assert calls == [("prepare", k, 3) for k in range(4)]
    assert prepared_here == []  # each subject ran in a worker process
    serial_subjects = load_manifest(serial.manifest).subjects
    parallel_subjects = load_manifest(parallel.manifest).subjects
    assert [s.id for s in parallel_subjects] == [s.id for s in serial_subjects]
    # the affine runs on one thread either way, so the images are the same to the bit
    for a, b in zip(serial_subjects, parallel_subjects):
        for key in ("ct", "mr", "labels", "mr_labels"):
            assert np.array_equal(
                sitk.GetArrayFromImage(read(getattr(a, key))),
                sitk.GetArrayFromImage(read(getattr(b, key))),
            ), (a.id, key)

    (tmp_path / "parallel" / "subject_002" / "done.json").unlink()
    again = prepare_dataset(source, tmp_path / "parallel", deformable="none", jobs=2)
    assert again.done == ["subject_002"] and again.skipped == ["subject_000", "subject_001"]


def test_parallel_jobs_report_a_failed_subject(tmp_path):
    source = small_dataset(tmp_path / "raw", 3)
    (source.parent / "subject_002" / "ct.nii.gz").write_bytes(b"\x1f\x8b corrupt")
    out = tmp_path / "out"
    with pytest.raises(IntermodalError, match="1 of 3 subjects failed: subject_002"):
        prepare_dataset(source, out, deformable="none", jobs=3)
    rows = summary_rows(out)
    assert rows["subject_002"]["status"] == "failed"
    assert "ct.nii.gz" in rows["subject_002"]["message"]
    assert rows["subject_000"]["status"] == rows["subject_001"]["status"] == "ok"
    assert [s.id for s in load_manifest(out / "dataset.json").subjects] == [
        "subject_000", "subject_001",
    ]  # fmt: skip


def test_bad_out_dir(tmp_path, raw, prepared):
    out = prepared[1]
    with pytest.raises(OutputExistsError, match="prepared from"):
        prepare_dataset(small_dataset(tmp_path / "other", 1), out, deformable="none")
    with pytest.raises(OutputExistsError, match="deformable=none, now asked for"):
        prepare_dataset(raw, out, deformable="bspline")
    with pytest.raises(OutputExistsError, match="spacing"):
        prepare_dataset(raw, out, deformable="none", spacing=3.0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="holds no earlier preparation"):
        prepare_dataset(raw, foreign, deformable="none")
    (tmp_path / "file").write_text("")
    with pytest.raises(IntermodalError, match="is a file"):
        prepare_dataset(raw, tmp_path / "file", deformable="none")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"deformable": "affine"}, "deformable must be one of"),
        ({"spacing": -1.0}, "spacing must be a positive number"),
        ({"spacing": float("nan")}, "spacing must be a positive number"),
        ({"shape": (64, 64, 64)}, "shape must be 2 positive voxel counts"),
        ({"shape": (64, 0)}, "shape must be 2 positive voxel counts"),
        ({"shape": (64.5, 64)}, "shape must be 2 positive voxel counts"),
        ({"jobs": 0}, "jobs must be a whole number of processes"),
        ({"jobs": 2.0}, "jobs must be a whole number of processes"),
        ({"jobs": True}, "jobs must be a whole number of processes"),
    ],
)
def test_bad_arguments(raw, tmp_path, kwargs, expected):
    with pytest.raises(IntermodalError, match=expected):
        prepare_dataset(raw, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_prepare_command_takes_jobs(capsys, tmp_path):
    source = small_dataset(tmp_path / "raw", 2)
    out = tmp_path / "out"
    code = main(["prepare", str(source), "--out", str(out), "--deformable", "none", "--jobs", "2",
                 "--quiet"])  # fmt: skip
    assert code == 0 and "prepared 2 subject(s)" in capsys.readouterr().out
    assert len(load_manifest(out / "dataset.json").subjects) == 2

    code = main(["prepare", str(source), "--out", str(tmp_path / "other"), "--jobs", "0"])
    stderr = capsys.readouterr().err
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "jobs must be a whole number of processes, 1 or more, not 0" in stderr
    assert not (tmp_path / "other").exists()


def test_an_mr_stored_turned_is_found_and_warned_about(tmp_path, small_pair, caplog):
    # register's multi-start, which tries the half-turns, pre-aligns; a plain MI affine
    # started from the headers aligned the real pair's turned MR by its outline instead
    from intermodal.data.realistic import turned_mr

    folder = tmp_path / "raw"
    folder.mkdir()
    sitk.WriteImage(small_pair.ct, str(folder / "ct.nii.gz"))
    sitk.WriteImage(turned_mr(small_pair.mr), str(folder / "mr.nii.gz"))
    manifest = folder / "dataset.json"
    subject = {"id": "T", "ct": "ct.nii.gz", "mr": "mr.nii.gz"}
    manifest.write_text(
        json.dumps({"name": "t", "subjects": [subject], "training": ["T"]}), encoding="utf-8"
    )
    with caplog.at_level("WARNING", logger="intermodal.data.prepare"):
        prepare_dataset(manifest, tmp_path / "out", deformable="none", spacing=5.0)
    record = json.loads((tmp_path / "out" / "T" / "done.json").read_text(encoding="utf-8"))
    assert record["half_turn_deg"] is not None and 180.0 in record["half_turn_deg"]
    assert "turned 180 degrees" in caplog.text and "mr.nii.gz" in caplog.text
    assert record["nmi_affine"] > record["nmi_before"]
