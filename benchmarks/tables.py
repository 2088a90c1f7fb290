"""RESULTS.md's tables and plots, rendered from the stored measurements (never typed by hand).

Reads ``benchmarks/measured/<dataset>.json`` (written by ``benchmarks/suite.py``) and rewrites
the part of ``benchmarks/RESULTS.md`` between ``<!-- suite:<dataset>:begin -->`` and
``<!-- suite:<dataset>:end -->`` for each dataset: one row per method over the cases that every
method ran (means over the cases, times the median over the cases of each case's median run,
peak RSS the largest; a method with more cases gets a line with all of them), the runs that
measured the rows with their command, commit, threads, machine and versions, and the methods
that could not run with the reason. It also draws one plot per dataset of the main score
against wall time (``benchmarks/measured/plots/<dataset>.png``), and fills the one sentence on
the choice of the default from ``benchmarks/measured/default_candidates.json``. README.md's
short comparison (between ``<!-- compare:begin -->`` and ``<!-- compare:end -->``) is rendered
from the same rows: per dataset, intermodal's default against the best peer on the main score.

Usage::

    .venv/bin/python benchmarks/tables.py            # rewrite RESULTS.md and the plots
    .venv/bin/python benchmarks/tables.py --check    # exit 1 when either file is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MEASURED = HERE / "measured"
PLOTS = MEASURED / "plots"
RESULTS = HERE / "RESULTS.md"
README = HERE.parent / "README.md"
DEFAULT_CANDIDATES = MEASURED / "default_candidates.json"

sys.path.insert(0, str(HERE))

# (key in the summary, header, digits); a column shows only where some row has the key
COLUMNS = (
    ("dice", "Dice", 3),
    ("hd95_mm", "HD95 mm", 2),
    ("error_median_mm", "error median mm", 2),
    ("error_p95_mm", "error p95 mm", 2),
    ("capture_failures", "capture failures", 0),
    ("nmi", "NMI", 4),
    ("sdlogj", "SDlogJ", 3),
    ("folding_percent", "folding %", 4),
    ("seconds", "time s", 1),
    ("peak_rss_mib", "peak RSS MiB", 0),
)
MIN_TIMED_RUNS = 3
"""A case's time counts only as the median of at least this many runs (the machines are noisy)."""
PLOT_SCORE = (("dice", "mean Dice"), ("error_median_mm", "median error (mm)"), ("nmi", "NMI"))
LOWER_IS_BETTER = {"error_median_mm"}
SHORT_TITLES = {
    "synthetic_2d": "synthetic pelvis, 2D",
    "synthetic_3d": "synthetic pelvis, 3D",
    "real_motion": "real pair moved by a known motion",
    "rendered": "MR rendered from real CT anatomy",
    "robustness": "robustness cases",
    "slices_2d": "real slices moved by a known 2D motion",
    "real_pair": "the real pair (no truth)",
}


def method_order() -> list[str]:
    import methods

    return list(methods.METHODS)


def method_label(key: str) -> str:
    """A stored method key's row label (``name@device`` gets ``on device``)."""
    import methods

    name, _, device = key.partition("@")
    label = methods.METHODS[name].label if name in methods.METHODS else name
    return f"{label} on {device}" if device else label


def summarise(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One method's rows (case -> row) summarised: means over cases, medians of times."""
    scored = [row["scores"] for row in rows.values() if "scores" in row]
    # a time is reported only as the median of MIN_TIMED_RUNS or more runs of a case
    timed = [row for row in rows.values() if len(row.get("seconds_runs", ())) >= MIN_TIMED_RUNS]
    measured = [row for row in rows.values() if "peak_rss_mib" in row]
    out: dict[str, Any] = {
        "cases": len(rows),
        "scored": len(scored),
        "failed": sum("error" in row for row in rows.values()),
    }

    def mean(key: str) -> float | None:
        values = [s[key] for s in scored if s.get(key) is not None]
        return float(np.nanmean(values)) if values else None

    for key in ("dice", "hd95_mm", "nmi", "sdlogj", "folding_percent"):
        value = mean(key)
        if value is not None:
            out[key] = value
    errors = [s for s in scored if "error_median_mm" in s]
    if errors:
        out["error_median_mm"] = float(np.median([s["error_median_mm"] for s in errors]))
        out["error_p95_mm"] = float(np.median([s["error_p95_mm"] for s in errors]))
        out["capture_failures"] = sum(bool(s.get("capture_failure")) for s in errors)
    if timed:
        out["seconds"] = float(statistics.median(row["seconds"] for row in timed))
    if measured:
        out["peak_rss_mib"] = float(max(row["peak_rss_mib"] for row in measured))
    return out


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def shared_cases(results: Mapping[str, Mapping[str, Any]]) -> tuple[dict, set[str]]:
    """Every method's rows restricted to the cases that every method ran (all rows when the
    methods share no case), and those cases: rows compare like with like."""
    common = set.intersection(*(set(rows) for rows in results.values())) if results else set()
    if not common:
        return {key: dict(rows) for key, rows in results.items()}, common
    return {
        key: {c: r for c, r in rows.items() if c in common} for key, rows in results.items()
    }, common


def render_dataset(record: Mapping[str, Any]) -> list[str]:
    """The markdown lines of one dataset's table, its runs and its methods not run."""
    order = method_order()
    results = record.get("results", {})
    keys = sorted(
        results,
        key=lambda k: (order.index(k.split("@")[0]) if k.split("@")[0] in order else len(order), k),
    )
    shared, common = shared_cases(results)
    summaries = {key: summarise(shared[key]) for key in keys}
    columns = [c for c in COLUMNS if any(c[0] in s for s in summaries.values())]
    runs_used: list[str] = []
    for key in keys:
        for row in results[key].values():
            if row.get("run") not in runs_used:
                runs_used.append(row.get("run"))
    runs_used.sort()
    marks = {run: string.ascii_lowercase[i] for i, run in enumerate(runs_used)}
    lines = [
        "| method | cases | " + " | ".join(c[1] for c in columns) + " | runs |",
        "| --- | ---: | " + " | ".join("---:" for _ in columns) + " | --- |",
    ]
    for key in keys:
        s = summaries[key]
        failed = f" ({s['failed']} failed)" if s["failed"] else ""
        used = sorted({marks[row.get("run")] for row in shared[key].values()})
        lines.append(
            f"| {method_label(key)} | {s['scored']}{failed} | "
            + " | ".join(_cell(s.get(c[0]), c[2]) for c in columns)
            + f" | {', '.join(used)} |"
        )
    lines.append("")
    if not common:
        lines.append("- the rows cover different cases: compare them with care")
    for key in keys:
        if common and len(results[key]) > len(common):
            s = summarise(results[key])
            figures = ", ".join(f"{c[1]} {_cell(s[c[0]], c[2])}" for c in columns if c[0] in s)
            used = ", ".join(sorted({marks[row.get("run")] for row in results[key].values()}))
            lines.append(
                f"- {method_label(key)} on all its {s['scored']} cases: {figures} (runs {used})"
            )
    for key in keys:
        for case, row in sorted(results[key].items()):
            if "error" in row:
                lines.append(f"- failed: {method_label(key)} on {case}: {row['error']}")
    for run in runs_used:
        lines.append(f"- {marks[run]}: " + describe_run(record.get("runs", {}).get(run, {}), run))
    skipped = {k: v for k, v in record.get("skipped", {}).items() if k not in results}
    for key in sorted(
        skipped, key=lambda k: order.index(k.split("@")[0]) if k.split("@")[0] in order else 0
    ):
        lines.append(f"- not run: {method_label(key)}: {skipped[key]}")
    return lines


def describe_run(run: Mapping[str, Any], run_id: str) -> str:
    """One line: when, the command, the commit, threads, repeats, load, machine and versions."""
    if not run:
        return f"{run_id} (no record)"
    parts = [f"{run.get('date', run_id)}, `{run.get('command', '?')}`"]
    commit = run.get("commit")
    if commit:
        parts.append(f"commit {commit}" + (" with edited src/" if run.get("src_edited") else ""))
    parts.append(f"{run.get('threads', '?')} thread(s), {run.get('repeats', '?')} run(s) per case")
    if "load_average_start" in run:
        end = run.get("load_average_end", "?")
        parts.append(f"load {run['load_average_start']}..{end} (machine shared)")
    if run.get("machine"):
        parts.append(str(run["machine"]))
    versions = run.get("versions") or {}
    shown = [f"{k} {v}" for k, v in versions.items() if v != "not installed"]
    if shown:
        parts.append(", ".join(shown))
    if run.get("converted_from"):
        parts.append(f"converted from {run['converted_from']}")
    return "; ".join(parts)


def plot_dataset(record: Mapping[str, Any], path: Path) -> bool:
    """Main score against wall time, one point per method; False (and no file) when no method
    has both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shared, _ = shared_cases(record.get("results", {}))
    summaries = {k: summarise(v) for k, v in shared.items()}
    for key, label in PLOT_SCORE:  # noqa: B007 (label is used after the loop)
        points = {m: s for m, s in summaries.items() if key in s and "seconds" in s}
        if points:
            break
    else:
        path.unlink(missing_ok=True)  # a plot of rows no longer timed would be stale
        return False
    import matplotlib.ticker  # noqa: F401 (matplotlib.ticker below)

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method, s in points.items():
        axis.scatter(s["seconds"], s[key], s=30)
        axis.annotate(method_label(method), (s["seconds"], s[key]), fontsize=7,
                      xytext=(4, 3), textcoords="offset points")  # fmt: skip
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.margins(x=0.25, y=0.1)
    axis.set_xlabel("wall time per case (s, median; log scale)")
    axis.set_ylabel(label + (" (lower is better)" if key == "error_median_mm" else ""))
    axis.set_title(f"{record['dataset']}: {label} against time (cases every method ran)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def default_choice() -> str:
    """The sentence on the default, with its measurement from default_candidates.json."""
    if not DEFAULT_CANDIDATES.is_file():
        return "(benchmarks/measured/default_candidates.json is missing)"
    record = json.loads(DEFAULT_CANDIDATES.read_text(encoding="utf-8"))

    def means(name: str) -> tuple[float, float, float]:
        rows = record[name]
        dice = np.mean([r["dice"] for r in rows if r["set"] == "rendered"])
        error = np.mean([r["median_mm"] for r in rows if r["set"] == "real_motion"])
        seconds = np.mean([r.get("cpu_s", r.get("wall_s_1_thread")) for r in rows])
        return float(dice), float(error), float(seconds)

    chosen, before, first = "C6_C5_max_samples_32000", "C5_C3_pyr421", "C3_same_5_plus_5_cases"
    dice, error, seconds = means(chosen)
    old_dice, old_error, old_seconds = means(before)
    first_dice, first_error, first_seconds = means(first)
    return (
        "The default (candidate C6: MIND-SSC at a quarter of the voxels, at most 32 000 a step, "
        "on a 4/2/1 pyramid, 8, 4 and 2 mm, the velocity on an 8 mm grid) was chosen on the "
        "realistic *tuning* split, never the held-out one, on 5 rendered and 5 known-motion "
        f"cases: rendered Dice {dice:.3f}, known-motion error {error:.2f} mm, "
        f"{seconds:.1f} s per case on one thread, against C5 (no cap) {old_dice:.3f}, "
        f"{old_error:.2f} mm, {old_seconds:.1f} s and C3 (no 2 mm level) {first_dice:.3f}, "
        f"{first_error:.2f} mm, {first_seconds:.1f} s "
        "(benchmarks/measured/default_candidates.json, which also holds the earlier candidates "
        "and a second seed of C5 and C6)." + _known_motion_recheck(record)
    )


def _known_motion_recheck(record: Mapping[str, Any]) -> str:
    """The three candidates again on the known-motion tuning cases after the initial alignment
    learnt the half-turns (those cases' correspondence had been wrong), if measured."""
    names = [f"{c}_known_motion_after_half_turn_search" for c in ("C6", "C5", "C3")]
    if not all(name in record for name in names):
        return ""
    error, seconds = (
        [float(np.mean([r[key] for r in record[name]])) for name in names]
        for key in ("median_mm", "wall_s_1_thread")
    )
    return (
        " Rerun on those known-motion cases once the initial alignment found the real pair's "
        f"half-turn: C6 {error[0]:.2f} mm ({seconds[0]:.1f} s), C5 {error[1]:.2f} mm "
        f"({seconds[1]:.1f} s), C3 {error[2]:.2f} mm ({seconds[2]:.1f} s): the same order."
    )


MODEL_NONE, WITH_MODEL, EVERY_STEP = "model none", "with the model", "with the model, every step"
"""The variants of ``benchmarks/training.py register`` (its ``EVERY_STEP``), as it names them."""


def default_choice_2d(path: Path = MEASURED / "training" / "tuning_register_2d.json") -> str:
    """The sentence on the 2D default (no network), with its measurement on the 2D tuning
    cases: the bundled ``general2d`` against none, on synthetic and on real slices."""
    if not path.is_file():
        return f"({path.name} is missing)"
    record = json.loads(path.read_text(encoding="utf-8"))
    synth, slices = record["sets"]["synth"]["means"], record["sets"]["slices_2d"]["means"]

    def ratio(means: Mapping[str, Any], name: str) -> float:
        return means[name]["seconds"] / means[MODEL_NONE]["seconds"]

    return (
        "In 2D the default uses no network either, chosen on the 2D tuning cases "
        f"(`{record['command']}`): the bundled `general2d`, then half the refinement's steps, "
        f"raised unseen synthetic pelvis slices' Dice from {synth[MODEL_NONE]['dice']:.3f} to "
        f"{synth[WITH_MODEL]['dice']:.3f} ({ratio(synth, WITH_MODEL):.2f}x the time) but the "
        f"real slices' mean error from {slices[MODEL_NONE]['error_mm']:.2f} to "
        f"{slices[WITH_MODEL]['error_mm']:.2f} mm ({slices[EVERY_STEP]['error_mm']:.2f} with every "
        "step), and a model is loaded by default only where it helps on the realistic sets."
    )


def replace_section(text: str, begin: str, end: str, body: list[str]) -> str:
    """``text`` with the lines between the markers ``begin`` and ``end`` replaced by ``body``."""
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    replacement = "\n".join([begin, *body, end])
    return pattern.sub(lambda _match: replacement, text)


def render(text: str, records: Mapping[str, Mapping[str, Any]], plots: Mapping[str, bool]) -> str:
    """``text`` with every dataset section and the default sentence filled in."""
    import datasets

    for dataset in datasets.DATASETS:
        record = records.get(dataset)
        if record is None or not record.get("results"):
            command = f".venv/bin/python benchmarks/suite.py --datasets {dataset}"
            body = [f"Not measured yet: `{command}` (part of `make bench`)."]
        else:
            body = render_dataset(record)
        if plots.get(dataset):
            body += ["", f"![{dataset}: score against time](measured/plots/{dataset}.png)"]
        text = replace_section(
            text, f"<!-- suite:{dataset}:begin -->", f"<!-- suite:{dataset}:end -->", body
        )
    text = replace_section(
        text, "<!-- suite:methods:begin -->", "<!-- suite:methods:end -->", method_lines()
    )
    text = replace_section(
        text, "<!-- training:begin -->", "<!-- training:end -->", training_lines()
    )
    return replace_section(
        text,
        "<!-- suite:default:begin -->",
        "<!-- suite:default:end -->",
        [default_choice(), "", default_choice_2d()],
    )


def compare_lines(records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """README's table: per dataset, the default's main score against the best peer's, on the
    cases that every method of that dataset's table ran (as in RESULTS.md)."""
    import datasets

    lines = [
        "| data (held out) | cases | score | intermodal | best peer | its score |",
        "| --- | ---: | --- | ---: | --- | ---: |",
    ]
    for dataset in datasets.DATASETS:
        results = records.get(dataset, {}).get("results", {})
        if "intermodal" not in results:
            continue
        shared, _ = shared_cases(results)
        summaries = {key: summarise(rows) for key, rows in shared.items()}
        ours = summaries["intermodal"]
        found = [(key, label) for key, label in PLOT_SCORE if key in ours]
        if not found:
            continue
        score, label = found[0]
        peers = {
            key: s[score]
            for key, s in summaries.items()
            if not key.split("@")[0].startswith("intermodal") and s.get(score) is not None
        }
        digits = next(d for key, _, d in COLUMNS if key == score)
        if peers:
            pick = min if score in LOWER_IS_BETTER else max
            best = pick(peers, key=peers.__getitem__)
            peer_cells = f"{method_label(best)} | {_cell(peers[best], digits)}"
        else:
            peer_cells = "- | -"
        lines.append(
            f"| {SHORT_TITLES.get(dataset, dataset)} | {ours['scored']} | {label} | "
            f"{_cell(ours[score], digits)} | {peer_cells} |"
        )
    return lines


def training_lines(folder: Path = MEASURED / "training") -> list[str]:
    """The learned models' section: the network alone against the initial alignment, the
    whole ``register`` with the model against ``--model none``, the intra-against-MI runs, and
    the training throughput against VoxelMorph (``benchmarks/training.py``)."""

    def score(means: Mapping[str, Any]) -> tuple[str, float]:
        key = "dice" if "dice" in means else "error_mm"
        return ("Dice" if key == "dice" else "error mm"), means[key]

    alone = [
        "| model | set | cases | initial alignment | network alone | network kept by the guard |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    whole = [
        "| model | set | cases | `--model none` | with the model | time ratio | "
        "with the model, every step | time ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    sources = []
    for path in sorted(folder.glob("network_*.json")) + sorted(folder.glob("register_*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        model = Path(record.get("model", "?")).stem
        sources.append(f"- `{record['command']}` ({record['date']}): `{path.name}`")
        for name, result in record.get("sets", {}).items():
            means = result.get("means")
            if not means:
                continue
            if record["benchmark"] == "network":
                label, before = score(means["initial alignment"])
                _, after = score(means["network (no guard)"])
                kept = means["network (register's guard)"].get("network_kept", "-")
                alone.append(
                    f"| {model} | {name} | {result['cases']} | {label} {before:.3f} | "
                    f"{after:.3f} | {kept} |"
                )
            else:
                label, before = score(means[MODEL_NONE])
                cells = []
                for variant in (WITH_MODEL, EVERY_STEP):
                    ratio = result["against_model_none"][variant]["time_ratio"]
                    cells.append(f"{score(means[variant])[1]:.3f} | {ratio:.2f}")
                whole.append(
                    f"| {model} | {name} | {result['cases']} | {label} {before:.3f} | "
                    + " | ".join(cells)
                    + " |"
                )
    claim = [
        "| dim | runs | validations | intra ahead (shapes) | best (intra / mi) | intra ahead "
        "(unseen pelvis) | best (intra / mi) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for path in sorted(folder.glob("runs_*_intra_vs_mi.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        sources.append(f"- `{record['command']}` ({record['date']}): `{path.name}`")
        intra, mi = record["runs"]  # the intra run first, as the command names them
        cells = []
        for key in ("dice", "held_out_dice"):
            pairs = [(v[intra][key], v[mi][key]) for v in record["validation"]]
            ahead = sum(a > b for a, b in pairs)
            best = f"{max(a for a, _ in pairs):.3f} / {max(b for _, b in pairs):.3f}"
            cells.append(f"{ahead} | {best}")
        claim.append(
            f"| {record['dim']} | `{'/'.join(Path(intra).parts[-2:])}`, "
            f"`{'/'.join(Path(mi).parts[-2:])}` | "
            f"{len(record['validation'])} | " + " | ".join(cells) + " |"
        )
    for path in sorted(folder.glob("throughput_*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        rates = record["steps_per_s"]
        sources.append(
            f"- `{record['command']}` ({record['date']}): `{path.name}`: training steps a second "
            f"at {'x'.join(map(str, record['shape']))}, batch {record['batch']}: "
            f"{rates['intermodal']:.3g} against VoxelMorph VxmPairwise's "
            f"{rates['voxelmorph']:.3g} ({record['ratio_median']:.2f}x, the median of "
            f"{len(record['steps_per_s_blocks']['intermodal'])} alternating blocks)"
        )
    return ["The network alone, after `register`'s initial alignment (no guard):", "", *alone,
            "", "The whole `register` with the model against `--model none` (time ratio: with "
            "/ without, alternating runs):", "", *whole, "", "The paper's claim: the same recipe "
            "trained with the intra loss and with MI, validation Dice at the same steps:", "",
            *claim, "", *sources]  # fmt: skip


def method_lines() -> list[str]:
    """One line per method: its label, key and what runs (benchmarks/methods.py cites the
    documents behind each setting)."""
    import methods

    return [
        f"- **{method.label}** (`{key}`): {method.settings}"
        for key, method in methods.METHODS.items()
    ]


def load_records(folder: Path = MEASURED) -> dict[str, dict[str, Any]]:
    import datasets

    return {
        name: json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        for name in datasets.DATASETS
        if (folder / f"{name}.json").is_file()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md is stale")
    parser.add_argument("--no-plots", action="store_true", help="leave the plots as they are")
    args = parser.parse_args(argv)
    records = load_records()
    text = RESULTS.read_text(encoding="utf-8")
    plots = {name: (PLOTS / f"{name}.png").is_file() for name in records}
    if not (args.check or args.no_plots):
        plots = {
            name: plot_dataset(record, PLOTS / f"{name}.png") for name, record in records.items()
        }
    rendered = render(text, records, plots)
    readme = README.read_text(encoding="utf-8")
    readme_rendered = replace_section(
        readme, "<!-- compare:begin -->", "<!-- compare:end -->", compare_lines(records)
    )
    if args.check:
        stale = [
            path.name
            for path, old, new in ((RESULTS, text, rendered), (README, readme, readme_rendered))
            if old != new
        ]
        if stale:
            print(f"{' and '.join(stale)} out of date: run benchmarks/tables.py", file=sys.stderr)
            return 1
        return 0
    RESULTS.write_text(rendered, encoding="utf-8")
    README.write_text(readme_rendered, encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(HERE.parent)} ({len(rendered.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
