"""Pair lists, and batch registration that resumes, reports failures and shares pairs by rank."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from intermodal.batch import (
    DONE_FILE,
    RUN_FILE,
    IntermodalMethod,
    Pair,
    load_pairs,
    make_method,
    method_names,
    rank_from_environment,
    read_done,
    register_method,
    run_batch,
    shard,
)
from intermodal.cli import main
from intermodal.data.manifest import ManifestError, load_manifest
from intermodal.data.synth import write_dataset
from intermodal.errors import IntermodalError, OutputExistsError

SUBJECTS = ["subject_000", "subject_001", "subject_002"]
REGISTER_OUTPUTS = {
    "warped.nii.gz",
    "displacement.nii.gz",
    "inverse_displacement.nii.gz",
    "jacobian.nii.gz",
    "transform.h5",
    "affine.mat",
    "report.json",
    "qc.png",
    "warped_labels.nii.gz",
}
FAST = ["--model", "none", "--refine", "5", "--device", "cpu", "--quiet"]


def open_manifest(path: Path):
    """The manifest, which has no training split here."""
    return load_manifest(path, required_splits=())


def manifest_variant(dataset: Path, name: str, **changes) -> Path:
    """A copy of the dataset's manifest beside it (so relative paths hold), with ``changes``."""
    data = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    data.update(changes)
    path = dataset / name
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three synthetic 2D subjects, all in the test split, with CT landmarks for subject_000."""
    folder = tmp_path_factory.mktemp("batch") / "dataset"
    write_dataset(folder, len(SUBJECTS), dim=2)
    data = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    data.update(training=[], validation=[], test=SUBJECTS)
    (folder / "ct_points.csv").write_text("x,y\n0,0\n10,5\n")
    (folder / "mr_points.csv").write_text("x,y\n1,0\n10,6\n")
    data["subjects"][0]["landmarks"] = "ct_points.csv"
    data["subjects"][0]["mr_landmarks"] = "mr_points.csv"
    (folder / "dataset.json").write_text(json.dumps(data))
    return folder


# ---------------------------------------------------------------------------------------------
# Pair lists


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("intra", [(s, s) for s in SUBJECTS]),
        ("inter", [(f, m) for f in SUBJECTS for m in SUBJECTS if f != m]),
        ("all", [(f, m) for f in SUBJECTS for m in SUBJECTS]),
        (None, [(s, s) for s in SUBJECTS]),
    ],
)
def test_pairs_from_the_split(dataset, mode, expected):
    pairs = load_pairs(open_manifest(dataset), mode)
    assert [(p.fixed_id, p.moving_id) for p in pairs] == expected
    assert [p.name for p in pairs] == [f"{f}--{m}" for f, m in expected]


def test_pair_files_follow_the_subjects(dataset):
    manifest = open_manifest(dataset)
    first, second = manifest.subject("subject_000"), manifest.subject("subject_001")
    pair = next(p for p in load_pairs(manifest, "all") if p.name == "subject_001--subject_000")
    assert not pair.intra_subject
    assert (pair.fixed, pair.fixed_labels) == (second.ct, second.labels)  # CT grid
    assert (pair.moving, pair.moving_labels) == (first.mr, first.mr_labels)  # MR grid
    assert pair.fixed_landmarks is None  # subject_001 has no CT landmarks
    assert pair.moving_landmarks == dataset / "mr_points.csv"
    intra = load_pairs(manifest, "intra")[0]
    assert intra.intra_subject
    assert intra.fixed_landmarks == dataset / "ct_points.csv"


def test_pairs_listed_in_the_manifest(dataset):
    listed = [
        {"fixed": "subject_002", "moving": "subject_000"},
        {"fixed": "subject_001", "moving": "subject_001"},
    ]
    path = manifest_variant(dataset, "listed.json", pairs=listed, test=["subject_000"])
    manifest = open_manifest(path)
    assert [p.name for p in load_pairs(manifest)] == [
        "subject_002--subject_000",
        "subject_001--subject_001",
    ]
    # a choice given explicitly still wins over the list
    assert [p.name for p in load_pairs(manifest, "intra")] == ["subject_000--subject_000"]


def test_pairs_from_a_csv_file(dataset, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("fixed,moving\nsubject_000,subject_002\n\nsubject_002,subject_002\n")
    pairs = load_pairs(open_manifest(dataset), path)
    assert [p.name for p in pairs] == ["subject_000--subject_002", "subject_002--subject_002"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fixed,moving\nsubject_000,nobody\n", "no subject with id 'nobody'"),
        ("fixed,moving\nsubject_000,subject_000\nsubject_000,subject_000\n", "listed twice"),
        ("fixed,moving\nsubject_000,\n", "line 2: needs both"),
        ("fixed,moving\n", "the pair list is empty"),
        ("", "needs the header 'fixed,moving'"),
        ("ct,mr\nsubject_000,subject_000\n", "needs the header 'fixed,moving'"),
    ],
)
def test_bad_pair_list(dataset, tmp_path, text, message):
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(IntermodalError, match=message) as caught:
        load_pairs(open_manifest(dataset), path)
    assert str(path) in str(caught.value)


def test_bad_pair_sources(dataset, tmp_path):
    manifest = open_manifest(dataset)
    with pytest.raises(IntermodalError, match="pair list not found"):
        load_pairs(manifest, tmp_path / "missing.csv")
    with pytest.raises(IntermodalError, match="pair list not found"):
        load_pairs(manifest, "intra-subject")  # a typo is not a file either
    with pytest.raises(IntermodalError, match="split 'validation' is empty"):
        load_pairs(manifest, "intra", split="validation")
    bad_list = manifest_variant(dataset, "bad_list.json", pairs=[{"fixed": "subject_000"}])
    with pytest.raises(ManifestError, match=r"pairs\[0\]: expected"):
        load_pairs(open_manifest(bad_list))


def test_bad_subject_ids_and_landmarks(dataset):
    data = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    data["subjects"][1]["id"] = "a--b"
    data["subjects"][2]["mr_landmarks"] = "nowhere.csv"
    data["test"] = ["subject_000", "a--b", "subject_002"]
    path = dataset / "bad_ids.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError) as caught:
        load_pairs(open_manifest(path), "intra")
    message = str(caught.value)
    assert "subject a--b: id cannot name an output folder" in message
    assert "subject subject_002: mr_landmarks" in message and "file not found" in message


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 8])
def test_shards_cover_every_pair_once(world_size):
    pairs = [fake_pair(f"s{k}") for k in range(7)]
    shares = [shard(pairs, rank, world_size) for rank in range(world_size)]
    names = [p.name for share in shares for p in share]
    assert sorted(names) == sorted(p.name for p in pairs)
    for rank, share in enumerate(shares):
        assert all(pairs.index(p) % world_size == rank for p in share)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 1)),
        ({"RANK": "1", "WORLD_SIZE": "2"}, (1, 2)),
        ({"RANK": "", "WORLD_SIZE": ""}, (0, 1)),
    ],  # fmt: skip
)
def test_rank_from_environment(monkeypatch, env, expected):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert rank_from_environment() == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK must be an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 of world size 2"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "world size >= 1"),
    ],
)
def test_bad_rank_environment(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(IntermodalError, match=message):
        rank_from_environment()


# ---------------------------------------------------------------------------------------------
# Batch runs with a fast stand-in method


def fake_pair(fixed: str, moving: str | None = None) -> Pair:
    moving = moving or fixed
    return Pair(fixed, moving, Path(f"/data/{fixed}/ct.nii.gz"), Path(f"/data/{moving}/mr.nii.gz"))


class FakeMethod:
    """Writes a translation as transform.h5; fails or is 'killed' on the pairs it is told."""

    name = "fake"

    def __init__(self, *, fail=(), interrupt=(), transform=True, setting=1):
        self.fail, self.interrupt, self.transform, self.setting = (
            fail,
            interrupt,
            transform,
            setting,
        )
        self.calls: list[str] = []

    def settings(self):
        return {"setting": self.setting, "tuple": (1, 2)}

    def __call__(self, pair, destination, *, extra_report):
        self.calls.append(pair.name)
        if pair.name in self.interrupt:
            destination.mkdir()
            (destination / "half.txt").write_text("killed while writing")
            raise KeyboardInterrupt
        if pair.name in self.fail:
            raise IntermodalError(f"{pair.moving}: cannot read the image\nsecond line")
        destination.mkdir()
        if self.transform:
            translation = sitk.TranslationTransform(2, (1.0, 0.0))
            sitk.WriteTransform(translation, str(destination / "transform.h5"))
        (destination / "report.json").write_text(json.dumps(extra_report))


PAIRS = [fake_pair(f"s{k}") for k in range(4)]


def test_batch_writes_a_done_marker_last_and_skips_done_pairs(tmp_path):
    out = tmp_path / "out"
    method = FakeMethod()
    outcomes = []
    summary = run_batch(PAIRS, out, method, progress=lambda *a: outcomes.append(a))
    assert summary.done == [p.name for p in PAIRS] and not summary.failed
    assert method.calls == [p.name for p in PAIRS]
    assert outcomes[0] == (None, 0, 4)
    assert [(o[0].status, o[1]) for o in outcomes[1:3]] == [("running", 0), ("done", 1)]
    assert [o[1] for o in outcomes if o[0] and o[0].status == "done"] == [1, 2, 3, 4]
    for pair in PAIRS:
        record = read_done(out / pair.name, pair)
        assert record["rank"] == 0 and record["inputs"] == pair.inputs()
        assert (
            json.loads((out / pair.name / "report.json").read_text(encoding="utf-8"))["batch"][
                "rank"
            ]
            == 0
        )
    assert json.loads((out / RUN_FILE).read_text(encoding="utf-8")) == {
        "method": "fake",
        "settings": {"setting": 1, "tuple": [1, 2]},
    }
    again = FakeMethod()
    summary = run_batch(PAIRS, out, again)
    assert again.calls == [] and summary.skipped == [p.name for p in PAIRS]


def test_batch_resumes_after_an_interruption(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(PAIRS, out, FakeMethod(interrupt={PAIRS[2].name}))
    assert (out / PAIRS[2].name / "half.txt").is_file()  # half written, not marked done
    assert read_done(out / PAIRS[2].name, PAIRS[2]) is None
    markers = {p.name: (out / p.name / DONE_FILE).read_text(encoding="utf-8") for p in PAIRS[:2]}
    resumed = FakeMethod()
    summary = run_batch(PAIRS, out, resumed)
    assert resumed.calls == [PAIRS[2].name, PAIRS[3].name]
    assert summary.skipped == [PAIRS[0].name, PAIRS[1].name]
    assert not (out / PAIRS[2].name / "half.txt").exists()
    for name, text in markers.items():  # the done pairs were not touched
        assert (out / name / DONE_FILE).read_text(encoding="utf-8") == text


def test_batch_removes_leftovers_of_a_killed_writer_only_for_its_pair(tmp_path):
    out = tmp_path / "out"
    run_batch(PAIRS, out, FakeMethod())
    (out / PAIRS[1].name / DONE_FILE).unlink()  # e.g. killed before the marker
    staging = [out / f".{PAIRS[1].name}.ab_cd123", out / f".{PAIRS[1].name}.ab_cd123.old"]
    for folder in staging:
        folder.mkdir()
    unrelated = out / f".{PAIRS[1].name}x.ab_cd123"
    unrelated.mkdir()
    method = FakeMethod()
    run_batch(PAIRS, out, method)
    assert method.calls == [PAIRS[1].name]
    assert not any(folder.exists() for folder in staging)
    assert unrelated.is_dir()


def test_batch_lists_the_output_folder_a_fixed_number_of_times_however_many_pairs(
    tmp_path, monkeypatch
):
    listings = {}
    real_iterdir = Path.iterdir

    def counting_iterdir(self):
        listings[self] = listings.get(self, 0) + 1
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", counting_iterdir)
    counts = []
    for n in (3, 12):
        out = tmp_path / f"out{n}"
        pairs = [fake_pair(f"s{k}") for k in range(n)]
        run_batch(pairs, out, FakeMethod())
        (out / pairs[-1].name / DONE_FILE).unlink()  # resume with one pair left to redo
        (out / f".{pairs[-1].name}.ab_cd123").mkdir()
        method = FakeMethod()
        run_batch(pairs, out, method)
        assert method.calls == [pairs[-1].name]
        assert not (out / f".{pairs[-1].name}.ab_cd123").exists()
        counts.append(listings.get(out.absolute(), 0))
    assert counts[0] == counts[1]


def test_batch_redoes_a_pair_whose_inputs_changed(tmp_path):
    out = tmp_path / "out"
    run_batch(PAIRS, out, FakeMethod())
    moved = [PAIRS[0], Pair("s1", "s1", Path("/elsewhere/ct.nii.gz"), PAIRS[1].moving), *PAIRS[2:]]
    method = FakeMethod()
    run_batch(moved, out, method)
    assert method.calls == ["s1--s1"]


def test_batch_reports_a_failing_pair_and_continues(tmp_path, caplog):
    out = tmp_path / "out"
    summary = run_batch(PAIRS, out, FakeMethod(fail={PAIRS[1].name}))
    assert list(summary.failed) == [PAIRS[1].name]
    reason = summary.failed[PAIRS[1].name]
    assert "\n" not in reason and "cannot read the image second line" in reason
    assert summary.done == [PAIRS[0].name, PAIRS[2].name, PAIRS[3].name]
    assert any(PAIRS[1].name in r.getMessage() for r in caplog.records)
    retry = FakeMethod()
    summary = run_batch(PAIRS, out, retry)
    assert retry.calls == [PAIRS[1].name] and summary.done == [PAIRS[1].name]


def test_batch_without_keep_going_raises(tmp_path):
    with pytest.raises(IntermodalError, match="cannot read"):
        run_batch(PAIRS, tmp_path / "out", FakeMethod(fail={PAIRS[0].name}), keep_going=False)


def test_a_method_must_write_a_transform(tmp_path):
    summary = run_batch(PAIRS[:1], tmp_path / "out", FakeMethod(transform=False))
    assert "wrote no transform.h5" in summary.failed[PAIRS[0].name]
    assert read_done(tmp_path / "out" / PAIRS[0].name, PAIRS[0]) is None


def test_bad_batch_folders(tmp_path):
    out = tmp_path / "out"
    run_batch(PAIRS, out, FakeMethod())
    with pytest.raises(OutputExistsError, match=r"other settings \(settings: was"):
        run_batch(PAIRS, out, FakeMethod(setting=2))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="holds no register-batch run"):
        run_batch(PAIRS, other, FakeMethod())
    (tmp_path / "file").write_text("")
    with pytest.raises(IntermodalError, match="is a file"):
        run_batch(PAIRS, tmp_path / "file", FakeMethod())
    with pytest.raises(IntermodalError, match="names a pair twice"):
        run_batch([PAIRS[0], PAIRS[0]], tmp_path / "twice", FakeMethod())
    redo = FakeMethod(setting=2)
    summary = run_batch(PAIRS, out, redo, overwrite=True)
    assert redo.calls == [p.name for p in PAIRS] and len(summary.done) == 4
    assert json.loads((out / RUN_FILE).read_text(encoding="utf-8"))["settings"]["setting"] == 2


def test_ranks_share_the_pairs(tmp_path):
    out = tmp_path / "out"
    methods = [FakeMethod(), FakeMethod(), FakeMethod()]
    for rank, method in enumerate(methods):
        run_batch(PAIRS, out, method, rank=rank, world_size=3)
    assert [m.calls for m in methods] == [["s0--s0", "s3--s3"], ["s1--s1"], ["s2--s2"]]
    assert [read_done(out / p.name, p)["rank"] for p in PAIRS] == [0, 1, 2, 0]


def test_method_registry(monkeypatch):
    import intermodal.batch

    # a private copy of the registry, so "fake-test" does not outlive this test
    monkeypatch.setattr(intermodal.batch, "_METHODS", dict(intermodal.batch._METHODS))
    assert "intermodal" in method_names()
    assert isinstance(make_method("intermodal"), IntermodalMethod)
    with pytest.raises(IntermodalError, match="unknown method 'nope'; methods are"):
        make_method("nope")
    register_method("fake-test", lambda **options: FakeMethod(setting=options.get("setting", 1)))
    assert make_method("fake-test", setting=5).settings()["setting"] == 5
    with pytest.raises(IntermodalError, match="already registered"):
        register_method("fake-test", FakeMethod)


# ---------------------------------------------------------------------------------------------
# The command, with real registrations


def run_cli(*argv: str, env: dict | None = None) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "intermodal", *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def test_two_ranks_do_every_pair_exactly_once(dataset, tmp_path):
    pair_list = tmp_path / "pairs.csv"
    rows = [("subject_000", "subject_000"), ("subject_001", "subject_001"),
            ("subject_000", "subject_002"), ("subject_002", "subject_001")]  # fmt: skip
    with open(pair_list, "w", newline="") as handle:
        csv.writer(handle).writerows([("fixed", "moving"), *rows])
    out = tmp_path / "out"
    ranks = [
        run_cli(
            "register-batch",
            dataset,
            "--out",
            out,
            "--pairs",
            pair_list,
            *FAST,
            env={"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)},
        )  # fmt: skip
        for rank in range(2)
    ]
    for rank, process in enumerate(ranks):
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert f"rank {rank} of 2: 2 pairs registered, 0 already done, 0 failed" in stdout
    names = [f"{f}--{m}" for f, m in rows]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [*names, RUN_FILE]
    )
    done_by = {}
    for index, name in enumerate(names):
        report = json.loads((out / name / "report.json").read_text(encoding="utf-8"))
        marker = json.loads((out / name / DONE_FILE).read_text(encoding="utf-8"))
        assert report["batch"]["rank"] == marker["rank"] == index % 2
        assert report["batch"]["world_size"] == 2
        assert REGISTER_OUTPUTS <= {p.name for p in (out / name).iterdir()}
        done_by[name] = marker["rank"]
    assert len(done_by) == len(rows)
    # the points of the fixed subject's landmarks went through the transform, as with register
    assert (out / "subject_000--subject_000" / "points.csv").is_file()
    assert not (out / "subject_001--subject_001" / "points.csv").exists()


def test_killed_run_resumes_without_redoing_done_pairs(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    process = run_cli("register-batch", dataset, "--out", out, *FAST)
    first = out / "subject_000--subject_000" / DONE_FILE
    deadline = time.monotonic() + 240
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert first.exists(), "the first pair never finished"
    done = sorted(p.parent.name for p in out.glob(f"*/{DONE_FILE}"))
    markers = {name: (out / name / DONE_FILE).read_text(encoding="utf-8") for name in done}
    # a pair takes seconds and the poll 5 ms, so the kill always lands before the last pair
    assert len(done) < len(SUBJECTS), "the whole run finished before the kill"
    code = main(["register-batch", str(dataset), "--out", str(out), *FAST])
    stdout = capsys.readouterr().out
    assert code == 0
    redone = len(SUBJECTS) - len(done)
    assert f"{redone} pairs registered, {len(done)} already done, 0 failed" in stdout
    for name, text in markers.items():
        assert (out / name / DONE_FILE).read_text(encoding="utf-8") == text
    assert sorted(p.parent.name for p in out.glob(f"*/{DONE_FILE}")) == [
        f"{s}--{s}" for s in SUBJECTS
    ]
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.is_dir()]


def test_command_reports_a_failing_pair_and_exits_nonzero(dataset, tmp_path, capsys):
    # subject_001's MR has a sound header but lost its data: only reading it fails.
    mr = sitk.ReadImage(str(dataset / "subject_001" / "mr.nii.gz"))
    truncated = tmp_path / "mr.nii"
    sitk.WriteImage(mr, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    data = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    data["subjects"][1]["mr"] = str(truncated)
    data["subjects"][1].pop("mr_labels")
    data["test"] = ["subject_000", "subject_001"]
    manifest = dataset / "truncated.json"
    manifest.write_text(json.dumps(data))
    out = tmp_path / "out"
    code = main(["register-batch", str(manifest), "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 pairs registered, 0 already done, 1 failed, of 2" in captured.out
    assert "failed pairs: subject_001--subject_001" in captured.err
    assert "Traceback" not in captured.err
    assert (out / "subject_000--subject_000" / DONE_FILE).is_file()
    assert not (out / "subject_001--subject_001").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--refine", "-1"], "--refine must be 0 or more"),
        (["--pairs", "sideways"], "sideways: pair list not found"),
        (["--split", "holdout"], "no split 'holdout'"),
    ],
)
def test_bad_command_input(dataset, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code = main(["register-batch", str(dataset), "--out", str(out), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_manifest(tmp_path, capsys):
    code = main(["register-batch", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "none.json: 1 problem" in capsys.readouterr().err


def test_torchrun_shares_the_pairs_between_two_ranks(dataset, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    out = tmp_path / "out"
    process = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "intermodal",
         "register-batch", str(dataset), "--out", str(out), *FAST],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-2000:]
    for rank in range(2):
        assert f"rank {rank} of 2: " in process.stdout
    ranks = [
        json.loads((out / f"{s}--{s}" / DONE_FILE).read_text(encoding="utf-8"))["rank"]
        for s in SUBJECTS
    ]
    assert ranks == [0, 1, 0]


def test_recorded_settings_name_the_model_weights(tmp_path):
    """batch.json carries the weights' SHA-256, so a changed model file is not resumed over."""
    from intermodal.checkpoint import read_card, save_model
    from intermodal.networks import RegistrationModel
    from intermodal.registration import Settings

    assert IntermodalMethod(Settings(model=None, refine=5)).settings()["model_sha256"] == {
        "2d": None,
        "3d": None,
    }
    path = save_model(RegistrationModel(ndim=2), tmp_path / "m.safetensors", {})
    digest = read_card(path)["weights_sha256"]
    recorded = IntermodalMethod(Settings(model=str(path))).settings()["model_sha256"]
    assert recorded == {"2d": digest, "3d": digest}
