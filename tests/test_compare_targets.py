"""benchmarks/compare.py: the issue-4 verdicts follow the numbers they are given."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def compare():
    environment = dict(os.environ)  # compare.py sets one-thread variables on import
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("compare")
    finally:
        sys.path.remove(str(BENCHMARKS))
        os.environ.clear()
        os.environ.update(environment)


def row(dice: float, seconds: float, sdlogj: float = 0.08, folding: float = 0.0) -> dict:
    return {"dice": dice, "seconds": seconds, "sdlogj": sdlogj, "folding": folding, "n": 5}


def test_dice_verdict_needs_margin_smoothness_and_no_folding(compare):
    ants = row(0.70, 1.0, sdlogj=0.11)
    assert compare.dice_verdict(row(0.751, 1.0), ants) == (
        True, "Dice margin ok, SDlogJ ok, folding ok"
    )  # fmt: skip
    assert compare.dice_verdict(row(0.749, 1.0), ants)[1].startswith("Dice margin too small")
    assert "SDlogJ too high" in compare.dice_verdict(row(0.80, 1.0, sdlogj=0.101), ants)[1]
    assert "folding too high" in compare.dice_verdict(row(0.80, 1.0, folding=1e-4), ants)[1]
    assert compare.dice_verdict(row(0.80, 1.0, folding=1e-4), ants)[0] is False


def test_fastest_line_takes_the_fastest_row_at_or_above_ants_dice(compare):
    summary = {
        "ants": row(0.72, 0.30),
        "im_model": row(0.71, 0.01),  # fastest, but below ANTs: not eligible
        "im_smooth": row(0.72, 0.02),  # ties ANTs: eligible, and fastest of those
        "im_default": row(0.80, 0.40),
        "vxm_mi": row(0.90, 0.001),  # a peer, never ours
    }
    [line] = compare._fastest_line(2, summary)
    assert "**MET**" in line
    assert compare.LABELS["im_smooth"] in line
    assert "ratio 0.07" in line and "SDlogJ 0.080 vs 0.080" in line

    summary["im_smooth"] = row(0.72, 0.06)
    [line] = compare._fastest_line(2, summary)
    assert "**NOT MET**" in line and "ratio 0.20" in line


def test_fastest_line_says_when_no_row_reaches_ants(compare):
    summary = {"ants": row(0.74, 7.0), "im_model": row(0.68, 10.0)}
    [line] = compare._fastest_line(3, summary)
    assert line == "- time 3D: no intermodal row reaches ANTs' mean Dice 0.740"
    assert compare._fastest_line(3, {"im_model": row(0.68, 10.0)}) == []


def test_the_methods_that_need_the_bundled_model(compare):
    needing = {m for m in compare.LABELS if compare.uses_bundled(m, 3)}
    assert needing == {"im_model", "im_fast", "im_default", "im_smooth", "im_sampled"}
    # the fast preset (and its MI variants) runs the bundled model in 2D only (in 3D it is the
    # refinement alone)
    fast = {"im_preset_fast", "im_fast_mi", "im_fast_mi_2mm", "im_fast_mi_3mm",
            "im_fast_mi_3mm_s05", "im_fast_mi_3mm_levels"}  # fmt: skip
    assert {m for m in compare.LABELS if compare.uses_bundled(m, 2)} == needing | fast


def real_row(nmi: float, seconds: float, date: str = "run-b") -> dict:
    return {"nmi": nmi, "seconds": seconds, "date": date}


def test_real_fastest_line_compares_within_ants_own_run(compare):
    rows = {
        "ants": real_row(1.19, 18.0),
        "im_preset_fast": real_row(1.20, 1.5),  # at ANTs' NMI and a twelfth of its time
        "im_default": real_row(1.21, 36.0),
        "im_model": real_row(1.25, 0.5, date="run-a"),  # another run: never compared
        "vxm_mi": real_row(1.30, 0.1),  # a peer, never ours
    }
    [line] = compare._real_fastest_line(rows)
    assert "**MET**" in line and compare.LABELS["im_preset_fast"] in line
    assert "ratio 0.08" in line and "NMI 1.2000 vs 1.1900" in line
    rows["im_preset_fast"] = real_row(1.20, 3.6)
    [line] = compare._real_fastest_line(rows)
    assert "**NOT MET**" in line and "ratio 0.20" in line


def test_real_fastest_line_says_how_far_short_when_no_row_reaches_ants(compare):
    rows = {
        "ants": real_row(1.19, 18.0),
        "im_preset_fast": real_row(1.14, 1.8),
        "im_default": real_row(1.16, 36.0),
    }
    [line] = compare._real_fastest_line(rows)
    assert line.startswith("- time, real pair, at equal or better NMI: **NOT MET**")
    assert f"the fastest, {compare.LABELS['im_preset_fast']}: NMI 1.1400 in 1.8 s" in line
    assert "(ratio 0.10)" in line
    assert f"the highest NMI, {compare.LABELS['im_default']}: 1.1600 in 36.0 s" in line
    assert compare._real_fastest_line({"im_default": real_row(1.16, 36.0)}) == []


def test_real_rows_show_each_run_and_the_targets_say_which_ants_nmi(compare):
    assert compare.nmi_runs_cell({"nmi": 1.19}) == "-"  # measured before each run was scored
    assert compare.nmi_runs_cell({"nmi_runs": [1.1911] * 3}) == "same"
    varied = {"nmi_runs": [1.18964, 1.19081, 1.19160]}
    assert compare.nmi_runs_cell(varied) == "1.1896 / 1.1908 / 1.1916"
    rows = {
        "ants": {**real_row(1.1908, 18.0), **varied},
        "im_preset_fast": real_row(1.1911, 1.5),
    }
    [line] = compare._real_fastest_line(rows)
    assert "**MET**" in line
    assert line.endswith("ANTs' NMI is the median of its 3 runs' (1.1896 / 1.1908 / 1.1916)")
    del rows["ants"]["nmi_runs"]
    rows["im_preset_fast"]["nmi"] = 1.18
    [line] = compare._real_fastest_line(rows)
    assert "**NOT MET**" in line and line.endswith("ANTs' NMI is its last run's")


def test_results_md_is_what_the_stored_measurements_render(compare, tmp_path, monkeypatch):
    """The compare_* and ants_seeds sections of RESULTS.md, the targets included, are exactly
    what ``compare.py --render-only`` makes of the committed parts: no figure is typed in."""
    parts = sorted(path.stem for path in compare.MEASURED.glob("*.json"))
    assert parts == ["heldout2d", "heldout3d", "memory", "real", "scaling"]
    copy = tmp_path / "RESULTS.md"
    committed = compare.RESULTS.read_text(encoding="utf-8")
    copy.write_text(committed, encoding="utf-8")
    monkeypatch.setattr(compare, "RESULTS", copy)
    compare.write_sections()
    assert copy.read_text(encoding="utf-8") == committed
    # and a figure changed in a part shows in the render
    part = compare.load_part("heldout3d")
    for entry in part["rows"]["ants"]:
        entry["seconds"] *= 10.0
    monkeypatch.setattr(compare, "load_part", lambda name: part if name == "heldout3d" else None)
    compare.write_sections()
    assert copy.read_text(encoding="utf-8") != committed


def test_stored_sweeps_render_their_results_md_sections(compare):
    """Each committed ``regularisation.py`` run renders exactly its section of RESULTS.md."""
    import regularisation

    runs = sorted(regularisation.OUT.glob("*.json"))
    assert {path.stem for path in runs} >= {"tuning_3d_mi", "tuning_3d_mi_nmi", "heldout3d_fast20"}
    committed = compare.RESULTS.read_text(encoding="utf-8")
    for path in runs:
        payload = json.loads(path.read_text(encoding="utf-8"))
        assert payload["section"] == path.stem
        assert regularisation.render(payload) in committed, path.name
        # a figure changed in the run changes the render
        payload["rows"]["ants"][0]["sdlogj"] += 1.0
        assert regularisation.render(payload) not in committed, path.name


def test_real_defaults_line_names_both_runs_when_they_differ(compare):
    rows = {"ants": real_row(1.19, 20.0), "im_default": real_row(1.16, 60.0)}
    [line] = compare._real_defaults_line(rows)
    assert "**NOT MET**" in line and "ratio 3.00" in line and "different runs" not in line
    rows["im_default"] = real_row(1.20, 1.0, date="run-a")
    [line] = compare._real_defaults_line(rows)
    assert "**MET**" in line and "different runs (run-a and " in line
    assert compare._real_defaults_line({"ants": real_row(1.19, 20.0)}) == []


def test_sweep_candidates_parse_into_settings(compare):
    """``regularisation.py --candidates``: one number a level for the per-level settings, and
    the parsed candidate is a valid setting of register."""
    import regularisation

    from intermodal.registration import preset_settings

    parsed = regularisation.parse_candidate(
        "preset=fast,similarity=mi,spacing=3,level_steps=6-3-15,integration_steps=2,"
        "pyramid=4-2-1,model=none"
    )
    assert parsed == {
        "preset": "fast", "similarity": "mi", "spacing": 3, "level_steps": (6, 3, 15),
        "integration_steps": 2, "pyramid": (4, 2, 1), "model": None,
    }  # fmt: skip
    parsed.pop("preset")  # the fast preset is gone; the rest still makes valid settings
    settings = preset_settings("default", 3, **parsed)
    settings.validate()
    assert settings.refine_steps == 24
