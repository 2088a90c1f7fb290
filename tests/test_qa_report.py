"""The TG-132 QA page: measures with known answers, verdicts, a self-contained page."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.errors import IntermodalError
from intermodal.qa_report import (
    inverse_consistency,
    jacobian_measures,
    landmark_measures,
    render_html,
    roi_measures,
    write_qa_report,
)


def _jacobian(values: list[float]) -> sitk.Image:
    return sitk.GetImageFromArray(np.array(values, dtype=np.float32).reshape(1, 1, -1))


def _constant_field(vector: tuple[float, float, float], size=(12, 10, 8)) -> sitk.Image:
    array = np.broadcast_to(np.array(vector, dtype=np.float64), (*size[::-1], 3)).copy()
    field = sitk.GetImageFromArray(array, isVector=True)
    field.SetSpacing((2.0, 2.0, 3.0))
    return field


@pytest.mark.parametrize(
    ("values", "minimum", "folding", "passed"),
    [
        ([0.5, 1.0, 2.0, 1.5], 0.5, 0.0, True),
        ([-0.5, 1.0, 2.0, 0.0], -0.5, 0.5, False),  # det <= 0 is folding
    ],
)
def test_jacobian_measures(values, minimum, folding, passed) -> None:
    measures = jacobian_measures(_jacobian(values))
    assert measures["min"] == pytest.approx(minimum)
    assert measures["max"] == pytest.approx(2.0)
    assert measures["folding_fraction"] == pytest.approx(folding)
    assert measures["passed"] is passed
    assert sum(measures["histogram"]["counts"]) == len(values)


@pytest.mark.parametrize(
    ("inverse", "expected_mm"),
    [((-1.5, 0.0, 0.0), 0.0), ((0.0, 0.0, 0.0), 1.5), ((-1.0, 0.0, 0.0), 0.5)],
)
def test_inverse_consistency_known_answers(inverse, expected_mm) -> None:
    # 1.5 mm along x is 0.75 voxel: no point lands exactly on the grid's edge
    measures = inverse_consistency(_constant_field((1.5, 0.0, 0.0)), _constant_field(inverse))
    assert measures["mean_mm"] == pytest.approx(expected_mm, abs=1e-9)
    assert measures["max_mm"] == pytest.approx(expected_mm, abs=1e-9)
    # the voxels shifted out of the inverse's grid (the last one along x) are left out
    assert measures["voxels"] == 11 * 10 * 8


def test_landmark_tre_against_the_largest_voxel() -> None:
    shift = sitk.TranslationTransform(3, (1.0, 0.0, 0.0))
    fixed = np.array([[0.0, 0.0, 0.0], [10.0, 5.0, 2.0]])
    moving = fixed + np.array([[1.0, 0.0, 0.0], [4.0, 0.0, 0.0]])  # errors 0 and 3 mm
    measures = landmark_measures(shift, fixed, moving, largest_voxel_mm=2.5)
    assert measures["mean_mm"] == pytest.approx(1.5) and measures["max_mm"] == pytest.approx(3.0)
    assert measures["passed"] is False
    assert landmark_measures(shift, fixed, moving, largest_voxel_mm=3.0)["passed"] is True


@pytest.mark.parametrize(
    ("dice", "mda", "voxel", "dice_passed", "mda_passed", "tolerance"),
    [
        (0.85, 1.9, 1.0, True, True, 2.0),  # voxel under 2 mm: the tolerance is 2 mm
        (0.79, 2.5, 1.0, False, False, 2.0),
        (0.9, 2.9, 5.0, True, True, 3.0),  # voxel over 3 mm: the tolerance is 3 mm
        (0.9, 2.4, 2.5, True, True, 2.5),
    ],
)
def test_roi_verdicts(dice, mda, voxel, dice_passed, mda_passed, tolerance) -> None:
    row = SimpleNamespace(name="Bladder", dice=dice, mean_distance_mm=mda, hd95_mm=4.0)
    (measure,) = roi_measures([row], voxel)
    assert measure["dice_passed"] is dice_passed and measure["mda_passed"] is mda_passed
    assert measure["mda_tolerance_mm"] == pytest.approx(tolerance)


def _measures() -> dict:
    row = SimpleNamespace(name="Rectum <1>", dice=0.7, mean_distance_mm=1.0, hd95_mm=3.0)
    return {
        "summary": {"fixed image": "CT"},
        "jacobian": jacobian_measures(_jacobian([0.5, 1.0, 1.2])),
        "inverse_consistency": {"mean_mm": 0.1, "p95_mm": 0.3, "max_mm": 0.9, "voxels": 10},
        "rois": roi_measures([row], 2.0),
        "landmarks": landmark_measures(
            sitk.TranslationTransform(3), np.zeros((2, 3)), np.zeros((2, 3)), 2.0
        ),
    }


def test_page_is_self_contained_and_marks_each_figure() -> None:
    page = render_html(_measures(), qc_png=b"\x89PNG fake")
    assert "<script" not in page.lower() and "http" not in page
    assert page.count("data:image/png;base64,") == 2  # QC figure and Jacobian histogram
    assert "Rectum &lt;1&gt;" in page  # names are escaped
    assert page.count('class="pass"') == 4  # Jacobian min, folding, MDA, TRE
    assert page.count('class="check"') == 1  # Dice 0.7
    for words in ("Inverse consistency", "Target registration error", "TG-132"):
        assert words in page


def test_write_then_add_agreement_keeps_the_rest(tmp_path: Path) -> None:
    write_qa_report(
        tmp_path,
        jacobian=_jacobian([0.5, 1.0]),
        field=_constant_field((1.0, 0.0, 0.0)),
        inverse_field=_constant_field((-1.0, 0.0, 0.0)),
        largest_voxel_mm=3.0,
    )
    first = json.loads((tmp_path / "qa.json").read_text())
    assert set(first) == {"jacobian", "inverse_consistency", "largest_voxel_mm"}
    row = SimpleNamespace(name="Bladder", dice=0.95, mean_distance_mm=2.9, hd95_mm=4.0)
    write_qa_report(tmp_path, agreement=[row])
    second = json.loads((tmp_path / "qa.json").read_text())
    assert second["jacobian"] == first["jacobian"]
    assert second["rois"][0]["mda_passed"] is True  # 3 mm voxels: 3 mm tolerance
    assert "Bladder" in (tmp_path / "report.html").read_text()


def test_bad_no_jacobian_and_no_earlier_report(tmp_path: Path) -> None:
    with pytest.raises(IntermodalError, match="no Jacobian for the QA report"):
        write_qa_report(tmp_path, agreement=[])
    assert not (tmp_path / "report.html").exists()


def test_bad_damaged_earlier_numbers(tmp_path: Path) -> None:
    (tmp_path / "qa.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(IntermodalError, match=r"qa.json: not readable JSON"):
        write_qa_report(tmp_path, jacobian=_jacobian([1.0]))
    assert not (tmp_path / "report.html").exists()


def test_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium (Debian package) is not installed")
    page = tmp_path / "report.html"
    page.write_text(render_html(_measures()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1100,1400", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), run.stderr[-2000:]
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(shot)))
    assert pixels.shape[0] == 1400
    assert pixels.std() > 10  # something is drawn: not a blank page


def test_inverse_consistency_counts_the_voxels_that_land_on_the_inverse_grid() -> None:
    """Which ``p + d(p)`` fall within the inverse's grid, against ITK's own point-to-index
    mapping, with a random field on a rotated, anisotropic grid and an inverse grid that is
    rotated, shifted and coarser."""
    from intermodal.qa_report import _lands_inside

    rng = np.random.default_rng(3)
    forward = sitk.GetImageFromArray(rng.normal(0.0, 4.0, (6, 7, 8, 3)), isVector=True)
    forward.SetSpacing((1.5, 2.0, 2.5))
    forward.SetOrigin((3.0, -4.0, 1.0))
    forward.SetDirection(sitk.VersorTransform((0.2, 1.0, 0.3), 0.4).GetMatrix())
    grid = sitk.Image([5, 6, 4], sitk.sitkVectorFloat64, 3)
    grid.SetSpacing((2.5, 2.0, 3.0))
    grid.SetOrigin((1.0, -3.0, -2.0))
    grid.SetDirection(sitk.VersorTransform((1.0, 0.1, 0.0), -0.3).GetMatrix())
    vectors = sitk.GetArrayFromImage(forward)
    expected = np.zeros(vectors.shape[:-1], bool)
    for z, y, x in np.ndindex(*expected.shape):
        point = np.add(forward.TransformIndexToPhysicalPoint((x, y, z)), vectors[z, y, x])
        index = np.array(grid.TransformPhysicalPointToContinuousIndex(point.tolist()))
        expected[z, y, x] = np.all((index >= -1e-6) & (index <= np.array(grid.GetSize()) - 1))
    inside = _lands_inside(forward, grid)
    assert 0 < expected.sum() < expected.size  # some land inside, some outside
    np.testing.assert_array_equal(inside, expected)
