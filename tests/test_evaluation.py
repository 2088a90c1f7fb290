"""Evaluation of result folders: a hand-made case with known answers, then the commands."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.batch import DONE_FILE, RUN_FILE, Pair, register_method
from intermodal.cli import main
from intermodal.data.synth import write_dataset
from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.evaluation import (
    COLUMNS,
    OUTPUT_FILES,
    evaluate_pair,
    evaluate_results,
    summary_markdown,
    write_evaluation,
)
from intermodal.metrics import dice

SPACING = 2.0  # mm, both axes
SHIFT = 3  # voxels along x: the moving anatomy sits 6 mm further along +x
NAMES = {0: "background", 1: "one", 2: "two", 3: "three"}

# ---------------------------------------------------------------------------------------------
# A hand-made case: squares moved by a known translation


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((SPACING, SPACING))
    image.SetOrigin((-20.0, 5.0))
    return image


def _labels(shift: int, with_three: bool) -> np.ndarray:
    labels = np.zeros((40, 40), np.uint8)
    labels[10:20, 10 + shift : 20 + shift] = 1  # 10 x 10: shifted by 3, Dice 0.7
    labels[25:31, 25 + shift : 31 + shift] = 2  # 6 x 6: shifted by 3, Dice 0.5
    if with_three:
        labels[2:5, 2:5] = 3  # only on the fixed side: not scored
    return labels


def _linear_field(reference: sitk.Image, stretch_x: float) -> sitk.Image:
    """``d(p) = (stretch_x * x, 0)`` mm: Jacobian determinant ``1 + stretch_x`` everywhere."""
    ys, xs = np.indices(reference.GetSize()[::-1], dtype=np.float64)
    x = reference.GetOrigin()[0] + SPACING * xs
    field = np.stack([stretch_x * x, np.zeros_like(x)], axis=-1)
    image = sitk.GetImageFromArray(field, isVector=True)
    image.CopyInformation(reference)
    return image


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    """Files for two pairs of one subject and their result folders.

    ``aligned``: transform.h5 is the true translation (fixed -> moving: +6 mm along x); its
    displacement stretches x by 1.5 (no folding, SDlogJ 0); run time 2.5 s.
    ``identity``: transform.h5 is the identity; its displacement folds everywhere (det -1).
    """
    root = tmp_path_factory.mktemp("case")
    fixed_labels = _labels(0, with_three=True)
    moving_labels = _labels(SHIFT, with_three=False)
    ct = np.where(fixed_labels == 1, 40.0, np.where(fixed_labels == 2, 600.0, -1000.0))
    ct[fixed_labels == 3] = 300.0
    mr = np.where(moving_labels == 1, 300.0, np.where(moving_labels == 2, 80.0, 10.0))
    files = {
        "ct": _image(ct.astype(np.float32)),
        "mr": _image(mr.astype(np.float32)),
        "labels": _image(fixed_labels),
        "mr_labels": _image(moving_labels),
    }
    paths = {}
    for name, image in files.items():
        paths[name] = root / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    # Moving landmarks: the fixed ones moved by the translation, the second also 4 mm along y.
    (root / "ct_points.csv").write_text("x,y\n0,20\n10,40\n")
    (root / "mr_points.csv").write_text("x,y\n6,20\n16,44\n")
    pair = Pair(
        "case",
        "case",
        paths["ct"],
        paths["mr"],
        paths["labels"],
        paths["mr_labels"],
        root / "ct_points.csv",
        root / "mr_points.csv",
    )
    results = root / "results"
    for name, transform, stretch in (
        ("aligned", sitk.TranslationTransform(2, (SHIFT * SPACING, 0.0)), 0.5),
        ("identity", sitk.Transform(2, sitk.sitkIdentity), -2.0),
    ):
        folder = results / name / pair.name
        folder.mkdir(parents=True)
        sitk.WriteTransform(transform, str(folder / "transform.h5"))
        sitk.WriteImage(_linear_field(files["ct"], stretch), str(folder / "displacement.nii.gz"))
        (folder / "report.json").write_text(json.dumps({"timings_s": {"total": 2.5}}))
    return {"pair": pair, "results": results, "root": root}


def by_label(rows):
    return {row["label"]: row for row in rows}


def test_metrics_of_the_true_translation(case):
    rows = by_label(evaluate_pair(case["pair"], case["results"] / "aligned" / "case--case", NAMES))
    assert list(rows) == ["one", "two", "three"]
    assert rows["one"]["dice_before"] == pytest.approx(0.7)
    assert rows["two"]["dice_before"] == pytest.approx(0.5)
    for label in ("one", "two"):
        assert rows[label]["dice"] == 1.0
        assert rows[label]["hd95_mm"] == 0.0
        assert rows[label]["hd95_before_mm"] >= SHIFT * SPACING
    assert math.isnan(rows["three"]["dice"]) and math.isnan(rows["three"]["hd95_mm"])
    row = rows["one"]
    # TRE: |T(f) - m| = |(0, 0)| and |(0, -4)|: mean 2 mm; before, |(6, 0)| and |(6, 4)|.
    assert row["landmarks"] == 2
    assert row["tre_mm"] == pytest.approx(2.0)
    assert row["tre_before_mm"] == pytest.approx((6.0 + math.hypot(6.0, 4.0)) / 2)
    assert row["nonpositive_jacobian_fraction"] == 0.0
    assert row["sdlogj"] == pytest.approx(0.0, abs=1e-9)
    assert row["nmi_after"] > row["nmi_before"]
    assert row["runtime_s"] == 2.5
    assert row["intra_subject"] is True and set(row) == set(COLUMNS)


def test_metrics_of_the_identity(case):
    rows = by_label(evaluate_pair(case["pair"], case["results"] / "identity" / "case--case", NAMES))
    assert rows["one"]["dice"] == pytest.approx(0.7) == rows["one"]["dice_before"]
    assert rows["one"]["hd95_mm"] == rows["one"]["hd95_before_mm"]
    assert rows["one"]["tre_mm"] == rows["one"]["tre_before_mm"]
    assert rows["one"]["nmi_after"] == rows["one"]["nmi_before"]
    assert rows["one"]["nonpositive_jacobian_fraction"] == 1.0  # det -1 everywhere


def test_nmi_leaves_out_ct_padding_as_the_register_report_does(tmp_path):
    """One NMI definition: ``evaluate`` and ``register``'s report agree, padding left out."""
    from intermodal.data.synth import generate_subject
    from intermodal.losses import nmi
    from intermodal.preprocess import normalize_intensity
    from intermodal.registration import Settings, register

    fixed, moving = generate_subject(11, dim=2), generate_subject(12, dim=2)
    array = sitk.GetArrayFromImage(fixed.ct)
    array[:, :20] = -2048.0  # a scanner's padding outside its field of view
    ct = sitk.GetImageFromArray(array)
    ct.CopyInformation(fixed.ct)
    paths = {"ct": tmp_path / "ct.nii.gz", "mr": tmp_path / "mr.nii.gz"}
    sitk.WriteImage(ct, str(paths["ct"]))
    sitk.WriteImage(moving.mr, str(paths["mr"]))
    settings = Settings(model=None, refine=5, init="none", device="cpu")
    result = register(ct, moving.mr, settings)
    folder = tmp_path / "result"
    folder.mkdir()
    sitk.WriteTransform(result.transform, str(folder / "transform.h5"))
    (row,) = evaluate_pair(Pair("f", "m", paths["ct"], paths["mr"]), folder, {})
    # In 2D the working grid is the fixed grid (padded at its far end, outside the mask), so
    # "before" is the same number both ways; "after" differs by one resampling only.
    assert row["nmi_before"] == pytest.approx(result.report["nmi"]["before"], abs=1e-6)
    assert row["nmi_after"] == pytest.approx(result.report["nmi"]["after"], abs=0.02)
    # counting the padding (0 in both scaled images) would change the figure
    ct_n = sitk.GetArrayFromImage(normalize_intensity(ct, "ct"))
    mr_n = normalize_intensity(moving.mr, "mr")
    identity = sitk.Transform(2, sitk.sitkIdentity)
    mr_on_ct = sitk.GetArrayFromImage(sitk.Resample(mr_n, ct, identity, sitk.sitkLinear, 0.0))
    assert abs(nmi(ct_n, mr_on_ct) - row["nmi_before"]) > 0.005


def test_summary_statistics_by_hand(case, tmp_path):
    # Two results of the same pair, as if from two pairs: Dice "one" 1.0 and 0.7, "two" 1.0
    # and 0.5, so per pair over labels 1.0 and 0.6.
    results = tmp_path / "both"
    for name, source in (("case--case", "aligned"), ("case--other", "identity")):
        (results / name).mkdir(parents=True)
        for file in (case["results"] / source / "case--case").iterdir():
            (results / name / file.name).write_bytes(file.read_bytes())
    pair = case["pair"]
    other = Pair("case", "other", *[getattr(pair, k) for k in list(pair.inputs())])
    evaluation = evaluate_results([pair, other], results, NAMES)
    text = summary_markdown(evaluation, "hand")
    # label | n | Dice before | Dice | SD | worst 30 % (ceil(0.6) = 1 case: the lowest)
    assert "| one | 2 | 0.700 | 0.850 | 0.150 | 0.700 |" in text
    assert "| two | 2 | 0.500 | 0.750 | 0.250 | 0.500 |" in text
    assert "| three | 0 | – | – | – | – |" in text
    assert "| **all labels** (per-pair mean) | 2 | 0.600 | 0.800 | 0.200 | 0.600 |" in text
    assert "| non-positive Jacobian (%) | 2 | 50.0000 | 50.0000 | 100.0000 |" in text
    # TRE 2 mm (aligned) and (6 + sqrt(52)) / 2 = 6.606 mm (identity)
    assert "| TRE (mm) | 2 | 4.30 | 2.30 | 6.61 |" in text
    assert "2 pairs evaluated (1 intra-subject, 1 inter-subject)" in text


def test_pair_without_labels_landmarks_or_displacement(case, tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    source = case["results"] / "aligned" / "case--case" / "transform.h5"
    (folder / "transform.h5").write_bytes(source.read_bytes())
    pair = Pair("case", "case", case["pair"].fixed, case["pair"].moving)
    [row] = evaluate_pair(pair, folder, NAMES)
    assert row["label"] == "" and row["landmarks"] == 0
    for column in ("dice", "hd95_mm", "tre_mm", "sdlogj", "nonpositive_jacobian_fraction"):
        assert math.isnan(row[column])
    assert math.isnan(row["runtime_s"])
    assert math.isfinite(row["nmi_after"])


def test_labels_named_by_value_without_names(case):
    rows = evaluate_pair(case["pair"], case["results"] / "aligned" / "case--case", {})
    assert [row["label"] for row in rows] == ["1", "2", "3"]


def test_written_outputs(case, tmp_path):
    evaluation = evaluate_results([case["pair"]], case["results"] / "aligned", NAMES)
    out = tmp_path / "evaluation"
    written = write_evaluation(evaluation, out, title="hand")
    assert sorted(p.name for p in written) == sorted(OUTPUT_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)  # no temporary left
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text(encoding="utf-8"))))
    assert [r["label"] for r in rows] == ["one", "two", "three"]
    assert tuple(rows[0]) == COLUMNS
    assert float(rows[0]["dice"]) == 1.0 and rows[2]["dice"] == "nan"
    for name in OUTPUT_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out / "summary.md").read_text(encoding="utf-8")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        write_evaluation(evaluation, out)
    assert (out / "summary.md").read_text(encoding="utf-8") == before
    write_evaluation(evaluation, out, overwrite=True, title="again")
    assert "# Evaluation: again" in (out / "summary.md").read_text(encoding="utf-8")


def test_missing_and_unfinished_results(case, tmp_path):
    pair = case["pair"]
    other = Pair("case", "gone", pair.fixed, pair.moving)
    results = case["results"] / "aligned"
    with pytest.raises(IntermodalError, match=r"1 of 2 pairs have no result \(case--gone"):
        evaluate_results([pair, other], results, NAMES)
    evaluation = evaluate_results([pair, other], results, NAMES, skip_missing=True)
    assert [p.name for p in evaluation.pairs] == ["case--case"]
    assert "- case--gone: no folder" in summary_markdown(evaluation)
    # In a register-batch folder, a pair counts only with its done marker.
    batch = tmp_path / "batch"
    (batch / pair.name).mkdir(parents=True)
    (batch / RUN_FILE).write_text("{}")
    for file in (results / pair.name).iterdir():
        (batch / pair.name / file.name).write_bytes(file.read_bytes())
    with pytest.raises(IntermodalError, match="not finished"):
        evaluate_results([pair], batch, NAMES)
    marker = {"pair": pair.name, "inputs": pair.inputs()}
    (batch / pair.name / DONE_FILE).write_text(json.dumps(marker))
    assert len(evaluate_results([pair], batch, NAMES).pairs) == 1


def test_bad_result_files(case, tmp_path):
    pair = case["pair"]
    folder = tmp_path / pair.name
    folder.mkdir()
    (folder / "transform.h5").write_text("not a transform")
    with pytest.raises(IntermodalError, match=r"transform.h5: not a readable ITK transform"):
        evaluate_pair(pair, folder, NAMES)
    sitk.WriteTransform(sitk.Transform(3, sitk.sitkIdentity), str(folder / "transform.h5"))
    with pytest.raises(IntermodalError, match="transform is 3D, the fixed image is 2D"):
        evaluate_pair(pair, folder, NAMES)
    sitk.WriteTransform(sitk.Transform(2, sitk.sitkIdentity), str(folder / "transform.h5"))
    small = sitk.Image((5, 5), sitk.sitkVectorFloat64, 2)
    sitk.WriteImage(small, str(folder / "displacement.nii.gz"))
    with pytest.raises(IntermodalError, match="is not the fixed image's"):
        evaluate_pair(pair, folder, NAMES)
    (folder / "displacement.nii.gz").unlink()
    (folder / "report.json").write_text("{}")
    with pytest.raises(IntermodalError, match="report.json: unreadable, or holds no timings"):
        evaluate_pair(pair, folder, NAMES)
    (folder / "report.json").unlink()
    uneven = tmp_path / "three_points.csv"
    uneven.write_text("x,y\n0,0\n1,1\n2,2\n")
    moved = Pair(
        *[getattr(pair, k) for k in ("fixed_id", "moving_id", *pair.inputs())][:-1], uneven
    )
    with pytest.raises(IntermodalError, match="holds 2 points .* holds 3"):
        evaluate_pair(moved, folder, NAMES)
    with pytest.raises(IntermodalError, match="results folder not found"):
        evaluate_results([pair], tmp_path / "nowhere", NAMES)


# ---------------------------------------------------------------------------------------------
# The command on synthetic subjects


FAST = ["--model", "none", "--refine", "5", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> dict[str, Path]:
    """Three synthetic 2D subjects in the test split, registered by register-batch."""
    root = tmp_path_factory.mktemp("evaluate")
    manifest = write_dataset(root / "dataset", 3, dim=2)
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data.update(training=[], validation=[], test=[s["id"] for s in data["subjects"]])
    manifest.write_text(json.dumps(data))
    out = root / "batch"
    assert main(["register-batch", str(manifest), "--out", str(out), *FAST]) == 0
    return {"manifest": manifest, "results": out, "root": root}


def test_evaluate_command_on_register_batch_results(registered, tmp_path, capsys):
    out = tmp_path / "evaluation"
    code = main(
        ["evaluate", str(registered["manifest"]), "--results", str(registered["results"]),
         "--out", str(out), "--quiet"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith("evaluated 3 pairs, Dice ")
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 3 * 5  # three pairs, five labels
    # The Dice computed from transform.h5 agrees with register's own warped_labels.nii.gz.
    for row in rows:
        folder = registered["results"] / row["pair"]
        warped = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "warped_labels.nii.gz")))
        fixed_path = registered["manifest"].parent / row["fixed"] / "labels.nii.gz"
        fixed = sitk.GetArrayFromImage(sitk.ReadImage(str(fixed_path)))
        value = int(row["label_value"])
        assert float(row["dice"]) == pytest.approx(dice(fixed == value, warped == value))
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        assert float(row["runtime_s"]) == report["timings_s"]["total"]
    # on average, registration improves on the images' own placement
    assert np.mean([float(r["dice"]) for r in rows]) > np.mean(
        [float(r["dice_before"]) for r in rows]
    )
    code = main(
        ["evaluate", str(registered["manifest"]), "--results", str(registered["results"]),
         "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 2 and "pass --overwrite" in capsys.readouterr().err


def test_evaluate_command_runs_a_method(registered, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\nsubject_001,subject_002\n")
    out = tmp_path / "evaluation"
    argv = ["evaluate", str(registered["manifest"]), "--method", "intermodal", "--pairs",
            str(pairs), "--out", str(out), *FAST]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "evaluated 1 pairs" in capsys.readouterr().out
    assert (out / "registrations" / "subject_001--subject_002" / DONE_FILE).is_file()
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "1 pairs evaluated (0 intra-subject, 1 inter-subject)" in summary
    assert "method intermodal" in summary
    # again with --overwrite: the registrations are redone, the evaluation replaced
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--results", "{root}/nowhere"], "nowhere: results folder not found"),
        (["--method", "elastix"], "unknown method 'elastix'; methods are intermodal"),
        (["--results", "{root}/batch", "--pairs", "inter"], "6 of 6 pairs have no result"),
        (["--results", "{root}/batch", "--split", "training"], "split 'training' is empty"),
    ],
)
def test_bad_evaluate_input(registered, tmp_path, capsys, argv, message):
    argv = [a.format(root=registered["root"]) for a in argv]
    out = tmp_path / "evaluation"
    code = main(["evaluate", str(registered["manifest"]), "--out", str(out), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_evaluate_needs_one_source(registered, tmp_path, capsys):
    for extra in ([], ["--results", "a", "--method", "intermodal"]):
        with pytest.raises(SystemExit) as exit_:
            main(["evaluate", str(registered["manifest"]), "--out", str(tmp_path), *extra])
        assert exit_.value.code == 2
    assert "--results" in capsys.readouterr().err


class IdentityOrFailure:
    """A stand-in method: the identity transform, or a failure for the subjects it is told."""

    name = "identity-or-failure"

    def __init__(self, fail=("subject_001",), **options):
        self.fail = fail

    def settings(self):
        return {"fail": list(self.fail)}

    def __call__(self, pair, destination, *, extra_report):
        if pair.fixed_id in self.fail:
            raise IntermodalError(f"{pair.fixed}: no luck")
        destination.mkdir()
        sitk.WriteTransform(sitk.Transform(2, sitk.sitkIdentity), str(destination / "transform.h5"))


def test_failed_registrations_are_listed_and_the_rest_evaluated(registered, tmp_path, capsys):
    register_method(IdentityOrFailure.name, IdentityOrFailure, replace=True)
    out = tmp_path / "evaluation"
    argv = ["evaluate", str(registered["manifest"]), "--method", IdentityOrFailure.name,
            "--out", str(out), "--quiet"]  # fmt: skip
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 1
    assert "registration failed for: subject_001--subject_001" in captured.err
    assert "2 pairs, " in captured.out and "1 failed to register" in captured.out
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "- subject_001--subject_001: registration failed: " in summary and "no luck" in summary
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text(encoding="utf-8"))))
    assert {r["pair"] for r in rows} == {"subject_000--subject_000", "subject_002--subject_002"}
    # identity: nothing moves
    assert all(r["dice"] == r["dice_before"] for r in rows)


def test_nothing_to_evaluate_when_every_registration_fails(registered, tmp_path, capsys):
    subjects = ("subject_000", "subject_001", "subject_002")
    register_method("always-fails", lambda **o: IdentityOrFailure(subjects), replace=True)
    out = tmp_path / "evaluation"
    code = main(["evaluate", str(registered["manifest"]), "--method", "always-fails",
                 "--out", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "none of the 3 pairs has a result to evaluate (3 failed to register;" in err
    assert not (out / "summary.md").exists()
