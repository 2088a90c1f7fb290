"""The benchmark suite (benchmarks/suite.py, methods.py, datasets.py, tables.py).

Scores with answers worked out by hand on small synthetic grids, the suite's bookkeeping, one
registration through the isolated worker process (SimpleITK, which needs no bench extra), and
RESULTS.md against what the stored measurements render. Nothing here needs the bench extra or
the real pair.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The four modules, imported from benchmarks/ (not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield argparse.Namespace(
            **{
                name: importlib.import_module(name)
                for name in ("datasets", "methods", "suite", "tables")
            }
        )
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in ("datasets", "methods", "suite", "tables"):
            sys.modules.pop(name, None)


def _identity(ndim: int) -> sitk.Transform:
    return sitk.Transform(ndim, sitk.sitkIdentity)


def _grid(ndim: int = 3, size=(12, 10, 8), spacing=(2.0, 1.5, 3.0), direction=None) -> sitk.Image:
    grid = sitk.Image(list(size[:ndim]), sitk.sitkUInt8)
    grid.SetSpacing(spacing[:ndim])
    grid.SetOrigin((5.0, -3.0, 1.0)[:ndim])
    if direction is not None:
        grid.SetDirection(direction)
    return grid


def _everywhere(grid: sitk.Image) -> np.ndarray:
    return np.ones(sitk.GetArrayViewFromImage(grid).shape, bool)


# --------------------------------------------------------------------------- scores


# a 90 degree rotation about z with a flip of z: spacing and direction both enter J
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


@pytest.mark.parametrize("direction", [None, ROTATED])
def test_jacobian_of_an_affine_map_is_its_determinant(bench, direction):
    grid = _grid(direction=direction)
    affine = sitk.AffineTransform(3)
    matrix = np.array([[1.2, 0.1, 0.0], [0.0, 0.9, 0.2], [0.05, 0.0, 1.1]])
    affine.SetMatrix(matrix.ravel().tolist())
    affine.SetTranslation((2.0, -1.0, 0.5))
    det = bench.datasets.jacobian_det(bench.methods.dense_field(affine, grid))
    assert det.shape == (8, 10, 12)
    np.testing.assert_allclose(det, np.linalg.det(matrix), rtol=1e-9)


def test_jacobian_scores_of_a_scaling_and_a_flip(bench):
    grid = _grid()
    scaling = bench.methods.dense_field(sitk.ScaleTransform(3, (1.1, 1.0, 1.0)), grid)
    scores = bench.datasets.jacobian_scores(scaling, _everywhere(grid))
    assert scores["sdlogj"] == pytest.approx(0, abs=1e-9)
    assert scores["folding_percent"] == 0
    flip = bench.methods.dense_field(sitk.ScaleTransform(3, (-1.0, 1.0, 1.0)), grid)
    assert bench.datasets.jacobian_scores(flip, _everywhere(grid))["folding_percent"] == 100


def test_mapping_error_of_the_expected_mapping_is_zero(bench):
    grid = _grid()
    shift = sitk.TranslationTransform(3, (3.0, 4.0, 0.0))
    field = bench.methods.dense_field(shift, grid)
    errors = bench.datasets.mapping_error(field, shift, _everywhere(grid))
    assert errors["error_median_mm"] == pytest.approx(0, abs=1e-9)
    assert errors["capture_failure"] is False


@pytest.mark.parametrize(
    ("shift", "mm_per_unit", "median", "failure"),
    [((3.0, 4.0, 0.0), 1.0, 5.0, False), ((3.0, 4.0, 0.0), 2.0, 10.0, True),
     ((0.0, 0.0, 6.0), 1.0, 6.0, True)],
)  # fmt: skip
def test_mapping_error_of_a_translation_is_its_length(bench, shift, mm_per_unit, median, failure):
    grid = _grid()
    field = bench.methods.dense_field(sitk.TranslationTransform(3, shift), grid)
    errors = bench.datasets.mapping_error(field, _identity(3), _everywhere(grid), mm_per_unit)
    assert errors["error_median_mm"] == pytest.approx(median)
    assert errors["error_p95_mm"] == pytest.approx(median)
    assert errors["capture_failure"] is failure


def test_mapping_error_counts_only_the_mask(bench):
    grid = _grid(2, size=(10, 10))
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    displacement = np.zeros((10, 10, 2))
    displacement[:, 5:, 0] = 7.0  # errors only outside the mask
    field = sitk.GetImageFromArray(displacement, isVector=True)
    field.CopyInformation(grid)
    assert bench.datasets.mapping_error(field, _identity(2), mask)["error_p95_mm"] == 0


def _square_labels() -> sitk.Image:
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 1
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin((0.0, 0.0))
    return image


def test_label_scores_known_overlap(bench):
    labels = _square_labels()
    same = bench.methods.dense_field(_identity(2), labels)
    scores = bench.datasets.label_scores(labels, labels, same, {"a": 1})
    assert scores["dice"] == 1 and scores["hd95_mm"] == 0
    # moved by 5 pixels along x: half of each 100-pixel square overlaps
    moved = bench.methods.dense_field(sitk.TranslationTransform(2, (5.0, 0.0)), labels)
    scores = bench.datasets.label_scores(labels, labels, moved, {"a": 1})
    assert scores["dice"] == pytest.approx(0.5)
    assert scores["dice_per_label"] == {"a": pytest.approx(0.5)}
    assert scores["hd95_mm"] == pytest.approx(5.0)


def test_label_scores_only_inside_the_region(bench):
    labels = _square_labels()
    moved = bench.methods.dense_field(sitk.TranslationTransform(2, (5.0, 0.0)), labels)
    region = np.zeros((20, 20), bool)
    # the warped square covers x 0..9, the fixed one 5..14: inside x 5..9 they agree
    region[:, 5:10] = True
    scores = bench.datasets.label_scores(labels, labels, moved, {"a": 1}, region)
    assert scores["dice"] == pytest.approx(1.0)


def test_nmi_is_highest_when_aligned(bench):
    rng = np.random.default_rng(0)
    ct = sitk.GetImageFromArray(rng.uniform(-400, 1000, (16, 16, 16)).astype(np.float32))
    mr = sitk.GetImageFromArray(sitk.GetArrayFromImage(ct)[..., ::-1].copy())  # a flip of x
    aligned = bench.methods.dense_field(_identity(3), ct)
    assert bench.datasets.nmi_score(ct, ct, aligned) == pytest.approx(2.0)
    assert bench.datasets.nmi_score(ct, mr, aligned) < 1.5


def test_nmi_of_pictures_takes_the_first_channel_and_the_given_body(bench):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    half = gray.copy()
    half[:, 32:] = rng.integers(0, 256, (64, 32))  # the same on the left half only
    picture = sitk.GetImageFromArray(np.stack([gray] * 3, -1), isVector=True)
    other = sitk.GetImageFromArray(np.stack([half] * 3, -1), isVector=True)
    aligned = bench.methods.dense_field(_identity(2), picture)
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    assert bench.datasets.nmi_score(picture, other, aligned, left) == pytest.approx(2.0)
    assert bench.datasets.nmi_score(picture, other, aligned) < 1.8  # the whole picture


def test_slices_are_scored_by_nmi_as_well_as_by_error(bench, real_pair):
    case = bench.datasets.make_case("slices_2d", 3)  # the RGB pictures without spacing
    reference = bench.methods.dense_field(_identity(2), case.fixed)
    scores = bench.datasets.score(case, reference, reference)
    assert scores["error_median_mm"] > 0 and 1.0 < scores["nmi"] < 2.0


def test_score_synthetic_case_perfect_mapping(bench):
    # a synthetic "case" whose moving labels are the fixed ones: identity scores Dice 1
    from intermodal.data.synth import generate_subject

    subject = generate_subject(0, dim=2)
    case = bench.datasets.BenchCase(
        "synthetic_2d", "x", subject.ct, subject.ct, None,
        (subject, argparse.Namespace(mr_labels=subject.ct_labels)),
    )  # fmt: skip
    scores = bench.datasets.score(case, bench.methods.dense_field(_identity(2), subject.ct))
    assert scores["dice"] == 1 and scores["folding_percent"] == 0


def test_bad_dataset_and_case(bench):
    with pytest.raises(ValueError, match="dataset must be one of"):
        bench.datasets.unavailable("pelvis")
    with pytest.raises(ValueError, match="one case"):
        bench.datasets.make_case("real_pair", 1)


# --------------------------------------------------------------------------- methods


def test_voxel_field_to_physical_follows_spacing_and_direction(bench):
    grid = _grid(direction=ROTATED)
    displacement = np.zeros((8, 10, 12, 3))
    displacement[..., 2] = 1.0  # one voxel along array axis 2, index x
    field = bench.methods.voxel_field_to_physical(displacement, grid)
    # index x is the first direction column, (0, 1, 0), times its spacing, 2 mm
    np.testing.assert_allclose(sitk.GetArrayFromImage(field)[0, 0, 0], (0.0, 2.0, 0.0))


def test_percentile_scaled_spans_zero_to_one(bench):
    image = sitk.GetImageFromArray(np.linspace(-1000, 3000, 1000).reshape(10, 100))
    array = sitk.GetArrayFromImage(bench.methods.percentile_scaled(image))
    assert array.min() == 0 and array.max() == 1 and array.dtype == np.float32


def test_unavailable_says_why(bench, monkeypatch):
    assert "3D images only" in bench.methods.unavailable("convexadam", 2)
    monkeypatch.setattr(bench.methods.shutil, "which", lambda name: None)
    assert "not installed" in bench.methods.unavailable("plastimatch", 3)
    assert bench.methods.unavailable("simpleitk", 2) is None
    with pytest.raises(ValueError, match="method must be one of"):
        bench.methods.unavailable("antz", 3)
    # the turned-MR row belongs to the sets made from the MRI-DIR pair
    assert "meant for real_pair and real_motion" in bench.methods.unavailable(
        "ants_synra_turned", 3, "rendered"
    )


@pytest.mark.parametrize("direction", [None, ROTATED])
def test_voxel_reversal_maps_a_turned_image_onto_the_stored_one(bench, direction):
    from intermodal.data.realistic import turned_mr

    grid = _grid(direction=direction)
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.random(sitk.GetArrayViewFromImage(grid).shape))
    image.CopyInformation(grid)
    turned = turned_mr(image)
    reversal = bench.methods.voxel_reversal(image)
    # every voxel centre of the turned image, mapped, lands on the voxel that holds its value
    for index in [(0, 0, 0), (11, 9, 7), (3, 4, 5), (7, 0, 2)]:
        point = turned.TransformIndexToPhysicalPoint(index)
        source = image.TransformPhysicalPointToContinuousIndex(reversal.TransformPoint(point))
        np.testing.assert_allclose(source, (11 - index[0], index[1], 7 - index[2]), atol=1e-9)
        assert turned.GetPixel(index) == image.GetPixel([round(v) for v in source])


def test_ants_syn_arguments_are_the_scripts_with_mi(bench):
    arguments = bench.methods.ants_syn_script_arguments("f.nii", "m.nii", "out_", 3)
    metrics = [arguments[i + 1] for i, a in enumerate(arguments) if a == "--metric"]
    assert metrics == ["MI[f.nii,m.nii,1,32,Regular,0.25]"] * 2 + ["MI[f.nii,m.nii,1,32]"]
    convergence = [arguments[i + 1] for i, a in enumerate(arguments) if a == "--convergence"]
    assert convergence[-1] == "[100x70x50x20,1e-6,10]"  # iterations at full resolution


# --------------------------------------------------------------------------- the suite


def test_summarise_runs_takes_the_median_time_and_the_largest_memory(bench):
    runs = [{"seconds": s, "peak_rss_mib": m} for s, m in ((3.0, 100), (1.0, 300), (2.0, 200))]
    assert bench.suite.summarise_runs(runs) == {
        "seconds": 2.0, "seconds_runs": [3.0, 1.0, 2.0], "peak_rss_mib": 300,
    }  # fmt: skip


def test_rows_merge_by_method_and_case(bench, tmp_path):
    record = bench.suite.load("rendered", tmp_path)
    record["skipped"]["greedy"] = "not installed"
    bench.suite.merge_row(record, "greedy", "c0", {"run": "r1", "seconds": 1.0})
    bench.suite.merge_row(record, "greedy", "c1", {"run": "r1", "seconds": 2.0})
    bench.suite.merge_row(record, "greedy", "c0", {"run": "r2", "seconds": 3.0})
    bench.suite.save(record, tmp_path)
    stored = bench.suite.load("rendered", tmp_path)
    assert stored["results"]["greedy"] == {
        "c0": {"run": "r2", "seconds": 3.0}, "c1": {"run": "r1", "seconds": 2.0},
    }  # fmt: skip
    assert "greedy" not in stored["skipped"]
    stored["runs"] = {"r1": {}, "r2": {}, "r0": {}}
    bench.suite.prune_runs(stored)
    assert sorted(stored["runs"]) == ["r1", "r2"]


def test_updates_read_the_file_afresh(bench, tmp_path):
    # two runs storing rows of one dataset: neither writes back the other's rows as it read them
    def store(method):
        return lambda record: bench.suite.merge_row(record, method, "c0", {"run": method})

    bench.suite.update("rendered", tmp_path, store("greedy"))
    bench.suite.update("rendered", tmp_path, store("elastix"))
    assert set(bench.suite.load("rendered", tmp_path)["results"]) == {"greedy", "elastix"}


def test_a_registration_runs_in_its_own_process(bench, tmp_path):
    # a synthetic CT/MR slice pair: intermodal's own registration, deterministic
    from intermodal.data.synth import generate_subject

    subject = generate_subject(3, dim=2)
    fixed, moving = subject.ct, subject.mr
    paths = bench.suite.write_inputs(fixed, moving, tmp_path, "pair")
    spec = {
        "method": "intermodal", "fixed": paths[0], "moving": paths[1], "threads": 1,
        "field": str(tmp_path / "field.nii.gz"), "result": str(tmp_path / "result.json"),
    }  # fmt: skip
    outcome = bench.suite.run_isolated(spec, tmp_path)
    assert "error" not in outcome, outcome
    assert outcome["seconds"] > 0 and outcome["peak_rss_mib"] > 10
    field = sitk.ReadImage(spec["field"])
    assert field.GetSize() == fixed.GetSize() and field.GetNumberOfComponentsPerPixel() == 2


def test_a_field_with_nan_is_a_failure(bench, tmp_path, monkeypatch):
    image = sitk.GetImageFromArray(np.zeros((8, 8), np.float32))
    path = str(tmp_path / "image.nii.gz")
    sitk.WriteImage(image, path)

    def diverged(fixed, moving, context):
        field = np.full((8, 8, 2), np.nan)
        return sitk.DisplacementFieldTransform(sitk.GetImageFromArray(field, isVector=True))

    method = bench.methods.Method("diverges", diverged, (2,), (), "returns NaN")
    monkeypatch.setitem(bench.methods.METHODS, "diverges", method)
    monkeypatch.setattr(bench.methods, "set_threads", lambda threads: None)
    spec = {"method": "diverges", "fixed": path, "moving": path, "threads": 1,
            "field": str(tmp_path / "field.nii.gz")}  # fmt: skip
    with pytest.raises(RuntimeError, match="NaN or inf"):
        bench.suite.worker(spec)


def test_a_run_past_its_time_limit_is_stopped(bench, tmp_path):
    spec = {
        "method": "simpleitk", "fixed": "f.nii", "moving": "m.nii", "threads": 1,
        "field": str(tmp_path / "f.nii.gz"), "result": str(tmp_path / "result.json"),
    }  # fmt: skip
    outcome = bench.suite.run_isolated(spec, tmp_path, timeout_s=0.01)
    assert outcome == {"error": "stopped: no result within 0.01 s"}


def test_a_failing_run_is_a_row_with_its_error(bench, tmp_path):
    spec = {
        "method": "simpleitk", "fixed": str(tmp_path / "missing.nii.gz"), "threads": 1,
        "moving": str(tmp_path / "missing.nii.gz"), "field": str(tmp_path / "f.nii.gz"),
        "result": str(tmp_path / "result.json"),
    }  # fmt: skip
    assert bench.suite.run_isolated(spec, tmp_path)["error"].startswith("exit 1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--datasets", "pelvis"], "unknown datasets"), (["--methods", "antz"], "unknown methods"),
     (["--repeats", "0"], ">= 1"), (["--cases", "0"], "--cases"),
     (["--timeout", "0"], "--timeout > 0")],
)  # fmt: skip
def test_bad_arguments(bench, argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.suite.parse(argv)
    assert message in capsys.readouterr().err


def test_quick_plan(bench):
    args = bench.suite.parse(["--quick"])
    assert set(args.plan) == set(bench.suite.QUICK)
    cases, names = args.plan["real_pair"]
    assert list(cases) == [0] and "intermodal" in names


# --------------------------------------------------------------------------- the tables


def _record(rows_a: dict, rows_b: dict) -> dict:
    return {
        "dataset": "rendered",
        "runs": {"r1": {"date": "d", "command": "c", "threads": 1, "repeats": 3}},
        "results": {"intermodal": rows_a, "greedy": rows_b},
        "skipped": {"plastimatch": "the program plastimatch is not installed"},
    }


def _row(dice: float, seconds: float, runs: int = 3) -> dict:
    return {
        "run": "r1", "seconds": seconds, "seconds_runs": [seconds] * runs, "peak_rss_mib": 500.0,
        "scores": {"dice": dice, "sdlogj": 0.1, "folding_percent": 0.0,
                   "error_median_mm": 2 * dice, "error_p95_mm": 4 * dice,
                   "capture_failure": dice > 3},
    }  # fmt: skip


def test_summary_means_and_medians(bench):
    rows = {"a": _row(0.5, 1.0), "b": _row(0.7, 3.0), "c": _row(0.9, 2.0)}
    summary = bench.tables.summarise(rows)
    assert summary["dice"] == pytest.approx(0.7)
    assert summary["error_median_mm"] == pytest.approx(1.4)
    assert summary["seconds"] == 2.0 and summary["capture_failures"] == 0


def test_a_time_counts_only_as_the_median_of_three_runs(bench):
    """A case timed fewer than 3 times gives no time; its peak RSS still counts."""
    rows = {"a": _row(0.5, 1.0), "b": _row(0.7, 9.0, runs=1), "c": _row(0.9, 3.0)}
    rows["b"]["peak_rss_mib"] = 900.0
    summary = bench.tables.summarise(rows)
    assert summary["seconds"] == 2.0  # the median of a's 1.0 and c's 3.0: b's 9.0 left out
    assert summary["peak_rss_mib"] == 900.0
    once = bench.tables.summarise({"b": rows["b"]})
    assert "seconds" not in once and once["peak_rss_mib"] == 900.0


def test_table_compares_the_cases_every_method_ran(bench):
    record = _record(
        {"a": _row(0.8, 1.0), "b": _row(0.6, 1.0), "c": _row(1.0, 1.0)},
        {"a": _row(0.4, 9.0), "b": _row(0.2, 9.0)},
    )
    lines = bench.tables.render_dataset(record)
    intermodal = next(line for line in lines if line.startswith("| intermodal"))
    assert "| 2 | 0.700 |" in intermodal  # cases a and b only
    assert any("on all its 3 cases: Dice 0.800" in line for line in lines)
    assert any(line.startswith("- not run: plastimatch B-spline") for line in lines)
    assert any(line.startswith("- a: d, `c`") for line in lines)


def test_readme_comparison_takes_the_best_peer_on_the_shared_cases(bench):
    rendered = _record(
        {"a": _row(0.8, 1.0), "b": _row(0.6, 1.0), "c": _row(1.0, 1.0)},
        {"a": _row(0.4, 9.0), "b": _row(0.2, 9.0)},
    )
    rendered["results"]["convexadam"] = {"a": _row(0.9, 5.0), "b": _row(0.7, 5.0)}

    def motion_row(error: float) -> dict:  # a known-motion set has no labels: no Dice
        row = _row(error / 2, 1.0)
        del row["scores"]["dice"]
        return {"a": row}

    motion = {"dataset": "real_motion", "runs": rendered["runs"], "results": {
        "intermodal": motion_row(4.0),
        "greedy": motion_row(3.0),  # the lower error is the better
        "elastix": motion_row(3.6),
    }}  # fmt: skip
    lines = bench.tables.compare_lines({"rendered": rendered, "real_motion": motion})
    row = next(line for line in lines if line.startswith("| MR rendered"))
    # cases a and b: intermodal 0.700, ConvexAdam 0.800, Greedy 0.300
    assert "| 2 | mean Dice | 0.700 | ConvexAdam after ANTs affine | 0.800 |" in row
    row = next(line for line in lines if line.startswith("| real pair moved"))
    assert "| 1 | median error (mm) | 4.00 | Greedy affine + deformable (NMI) | 3.00 |" in row
    assert len(lines) == 4  # the header, its rule and the two datasets measured


def test_training_section_renders_the_network_and_register_records(bench, tmp_path):
    network = {
        "benchmark": "network",
        "command": "net",
        "date": "d1",
        "model": "m/g3.safetensors",
        "sets": {
            "synth": {
                "cases": 2,
                "means": {
                    "initial alignment": {"dice": 0.5},
                    "network (no guard)": {"dice": 0.625},
                    "network (register's guard)": {"dice": 0.6, "network_kept": "1/2"},
                },
            }
        },
    }
    register = {
        "benchmark": "register",
        "command": "reg",
        "date": "d2",
        "model": "g3.safetensors",
        "sets": {
            "real_motion": {
                "cases": 3,
                "means": {
                    "model none": {"error_mm": 5.0},
                    "with the model": {"error_mm": 4.75},
                    "with the model, every step": {"error_mm": 4.5},
                },
                "against_model_none": {
                    "with the model": {"time_ratio": 0.5},
                    "with the model, every step": {"time_ratio": 1.25},
                },
            }
        },
    }
    (tmp_path / "network_3d.json").write_text(json.dumps(network))
    (tmp_path / "register_3d.json").write_text(json.dumps(register))
    runs = {"command": "runs", "date": "d3", "dim": 3, "runs": {"b/g3/run": {}, "b/x/g3_mi": {}},
            "validation": [
                {"step": 1, "b/g3/run": {"dice": 0.3, "held_out_dice": 0.2},
                 "b/x/g3_mi": {"dice": 0.4, "held_out_dice": 0.1}},
                {"step": 2, "b/g3/run": {"dice": 0.5, "held_out_dice": 0.3},
                 "b/x/g3_mi": {"dice": 0.45, "held_out_dice": 0.25}}]}  # fmt: skip
    (tmp_path / "runs_3d_intra_vs_mi.json").write_text(json.dumps(runs))
    throughput = {
        "command": "tp",
        "date": "d4",
        "shape": [64, 64],
        "batch": 4,
        "steps_per_s": {"intermodal": 2.0, "voxelmorph": 2.5},
        "ratio_median": 0.75,
        "steps_per_s_blocks": {"intermodal": [2.0, 1.5, 2.5], "voxelmorph": []},
    }
    (tmp_path / "throughput_2d.json").write_text(json.dumps(throughput))
    lines = bench.tables.training_lines(tmp_path)
    assert (
        "- `tp` (d4): `throughput_2d.json`: training steps a second at 64x64, batch 4: 2 against "
        "VoxelMorph VxmPairwise's 2.5 (0.75x, the median of 3 alternating blocks)"
    ) in lines
    assert "| 3 | `g3/run`, `x/g3_mi` | 2 | 1 | 0.500 / 0.450 | 2 | 0.300 / 0.250 |" in lines
    assert "| g3 | synth | 2 | Dice 0.500 | 0.625 | 1/2 |" in lines
    assert "| g3 | real_motion | 3 | error mm 5.000 | 4.750 | 0.50 | 4.500 | 1.25 |" in lines
    assert "- `net` (d1): `network_3d.json`" in lines
    assert "- `reg` (d2): `register_3d.json`" in lines
    # fmt: skip


def test_replace_section_keeps_the_rest(bench):
    text = "top\n<!-- s:begin -->\nold\n<!-- s:end -->\nbottom\n"
    out = bench.tables.replace_section(text, "<!-- s:begin -->", "<!-- s:end -->", ["new"])
    assert out == "top\n<!-- s:begin -->\nnew\n<!-- s:end -->\nbottom\n"


def test_results_md_and_readme_are_what_the_stored_measurements_render(bench):
    assert bench.tables.main(["--check"]) == 0
    assert len(bench.tables.RESULTS.read_text(encoding="utf-8").splitlines()) <= 300


def test_the_2d_default_sentence_gives_its_tuning_measurement(bench, tmp_path):
    """The sentence is rendered from the tuning file: each figure, and the time ratio against
    no network; a missing file is named."""
    means = {
        "synth": {"model none": {"dice": 0.5, "seconds": 2.0},
                  "with the model": {"dice": 0.6, "seconds": 3.0},
                  "with the model, every step": {"dice": 0.59, "seconds": 1.0}},
        "slices_2d": {"model none": {"error_mm": 3.0, "seconds": 1.0},
                      "with the model": {"error_mm": 5.0, "seconds": 1.5},
                      "with the model, every step": {"error_mm": 4.0, "seconds": 0.5}},
    }  # fmt: skip
    record = {"command": "tune", "sets": {k: {"means": v} for k, v in means.items()}}
    path = tmp_path / "tuning_register_2d.json"
    path.write_text(json.dumps(record))
    sentence = bench.tables.default_choice_2d(path)
    assert "(`tune`)" in sentence
    assert "Dice from 0.500 to 0.600 (1.50x the time)" in sentence
    assert "mean error from 3.00 to 5.00 mm (4.00 with every step)" in sentence
    assert "is missing" in bench.tables.default_choice_2d(tmp_path / "absent.json")


def test_the_known_motion_recheck_is_rendered_only_when_measured(bench):
    rows = {
        f"{name}_known_motion_after_half_turn_search": [
            {"median_mm": error, "wall_s_1_thread": seconds},
            {"median_mm": error + 0.2, "wall_s_1_thread": seconds + 2.0},
        ]
        for name, error, seconds in (("C6", 1.0, 6.0), ("C5", 0.9, 12.0), ("C3", 1.5, 4.0))
    }
    sentence = bench.tables._known_motion_recheck(rows)
    assert "C6 1.10 mm (7.0 s), C5 1.00 mm (13.0 s), C3 1.60 mm (5.0 s)" in sentence
    rows.pop("C3_known_motion_after_half_turn_search")
    assert bench.tables._known_motion_recheck(rows) == ""
