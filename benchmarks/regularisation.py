"""Accuracy against smoothness: intermodal's settings swept on the held-out synthetic pairs.

Issue 4 asks for mean organ Dice at least 0.05 above ANTs SyNRA-MI *with* SDlogJ <= 0.10 and
under 0.01 % non-positive Jacobians. This script registers the same held-out pairs as
``compare.py`` (dataset seed 5, MR of subject 2k+1 onto CT of subject 2k) with each candidate
setting and scores them exactly as ``compare.py`` does (labels warped by nearest neighbour onto
the fixed CT grid; SDlogJ and folding of the deformable part on the fixed grid, no mask), so a
row here is comparable with the ``compare_heldout*`` sections. One CPU thread.

Usage::

    nice -n 10 .venv/bin/python benchmarks/regularisation.py --dim 2 --pairs 20
    nice -n 10 .venv/bin/python benchmarks/regularisation.py --dim 3 --pairs 3 \\
        --candidates "smoothness=1;smoothness=8"

Each candidate is ``key=value[,key=value...]`` over :class:`intermodal.registration.Settings`
fields; candidates are separated by ``;``. The candidate ``ants`` runs the peer ANTs SyNRA-MI
(``peers.ants_register``, antspyx defaults) on the same pairs, in the same interleaved order,
so that a sweep carries its own same-run reference. Results go to
``benchmarks/measured/regularisation`` and the ``regularisation_{dim}d`` section of RESULTS.md;
with ``--dataset-seed 6`` (pairs kept for choosing settings, not held out) to the
``tuning_{dim}d`` section, or to ``--section NAME``.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import compare  # noqa: E402
import numpy as np  # noqa: E402
import peers  # noqa: E402
from results_file import write_section  # noqa: E402

# the runs, committed, so that their sections can be rendered again from a clone (runs before
# 2026-12-03 were kept in the ignored benchmarks/out/ and are not there)
OUT = compare.REPO / "benchmarks" / "measured" / "regularisation"
DEFAULT_CANDIDATES = "smoothness=1;smoothness=4;smoothness=16;smoothness=64"
ANTS = "ants"  # the candidate that runs the peer instead of intermodal


def parse_candidate(text: str) -> dict[str, Any]:
    """``"smoothness=4,velocity_stride=4"`` -> ``{"smoothness": 4, "velocity_stride": 4}``.

    Numbers become int or float, ``none`` None, ``pyramid=4-2`` the tuple ``(4, 2)`` (and
    ``level_steps=6-6-12`` the tuple ``(6, 6, 12)``).
    """
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key in ("pyramid", "level_steps"):  # one number a level, joined by "-": "4-2-1"
            settings[key] = tuple(int(level) for level in value.split("-"))
            continue
        if value.lower() in ("none", "null"):
            settings[key] = None
            continue
        try:
            settings[key] = int(value)
        except ValueError:
            try:
                settings[key] = float(value)
            except ValueError:
                settings[key] = value
    return settings


def sweep(
    dim: int, pairs: int, candidates: list[str], dataset_seed: int = compare.HELDOUT_SEED
) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in candidates}
    for k in range(pairs):
        fixed, moving = compare.heldout_pair(dim, k, dataset_seed)
        order = candidates[k % len(candidates) :] + candidates[: k % len(candidates)]
        for candidate in order:
            if candidate == ANTS:
                result = peers.ants_register(fixed.ct, moving.mr)
            else:
                settings = {"device": "cpu", **parse_candidate(candidate)}
                result = peers.intermodal_register(fixed.ct, moving.mr, settings)
            entry = {"pair": k, **compare.pair_scores(fixed, moving, result)}
            rows[candidate].append(entry)
            dice = compare.mean_dice(entry)
            print(
                f"{dim}D pair {k + 1}/{pairs} [{candidate}]: Dice {dice:.3f}, SDlogJ "
                f"{entry['sdlogj']:.3f}, {result.seconds:.1f} s",
                flush=True,
            )
    return {
        "dim": dim,
        "pairs": pairs,
        "dataset_seed": dataset_seed,
        "rows": rows,
        "date": compare.now(),
        "command": compare.command_line(),
    }


def section_name(dim: int, dataset_seed: int) -> str:
    """``regularisation_3d`` on the held-out pairs, ``tuning_3d`` on the tuning seed's."""
    return f"regularisation_{dim}d" if dataset_seed == compare.HELDOUT_SEED else f"tuning_{dim}d"


def render(payload: dict[str, Any]) -> str:
    """The RESULTS.md section ``payload["section"]``, its begin and end markers included."""
    dim = payload["dim"]
    seed = payload.get("dataset_seed", compare.HELDOUT_SEED)
    # runs before the NMI was scored have none; a table shows it when every row has it
    with_nmi = all("nmi" in e for entries in payload["rows"].values() for e in entries)
    name = payload["section"]
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if seed == compare.HELDOUT_SEED:
        title = f"## Accuracy against smoothness, {dim}D held-out synthetic pelvis (issue 4)"
        where = "held-out pairs (dataset seed 5, the pairs of `compare.py`)"
    else:
        title = f"## Choosing settings, {dim}D synthetic pelvis, tuning pairs (issue 4)"
        where = (
            f"pairs of dataset seed {seed} (MR of subject 2k+1 onto CT of subject 2k; neither "
            "trained on nor held out, kept for choosing settings)"
        )
    lines = [
        begin,
        title,
        "",
        f"- date: {payload['date']}; commands: `{payload['command']}`",
        f"- {payload['pairs']} {where}, scored as `compare.py` scores the held-out pairs: "
        "mean organ Dice of the warped MR labels, SDlogJ and non-positive "
        "Jacobians of the deformable part on the fixed CT grid (no mask); one CPU thread on a "
        f"2-core machine ({payload.get('load_note') or compare.UNRECORDED_LOAD}); candidates "
        "interleaved pair by pair; Settings not named are the defaults of the commit that ran"
        + (
            "; NMI: the MR warped onto the CT grid, scored as the real pair is "
            "(`compare.nmi_score`: 32 bins, inside the CT's data), mean over the pairs"
            if with_nmi
            else ""
        ),
        "",
        "| settings | mean Dice | Dice SD | SDlogJ (mean) | SDlogJ (max) | non-positive J % "
        "| s per pair (median) |" + (" NMI (mean) |" if with_nmi else ""),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if with_nmi else ""),
    ]
    for candidate, entries in payload["rows"].items():
        dice = [compare.mean_dice(e) for e in entries]
        sdlogj = [e["sdlogj"] for e in entries]
        folding = [e["folding"] for e in entries]
        label = "ANTs SyNRA, Mattes MI (peer)" if candidate == ANTS else f"`{candidate}`"
        nmi = f" {np.mean([e['nmi'] for e in entries]):.4f} |" if with_nmi else ""
        lines.append(
            f"| {label} | {np.mean(dice):.3f} | {np.std(dice):.3f} | "
            f"{np.mean(sdlogj):.3f} | {np.max(sdlogj):.3f} | {100 * np.mean(folding):.4f} | "
            f"{statistics.median(e['seconds'] for e in entries):.2f} |{nmi}"
        )
    lines += ["", end]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--candidates", default=DEFAULT_CANDIDATES)
    parser.add_argument(
        "--dataset-seed", type=int, default=compare.HELDOUT_SEED,
        help=f"synthetic dataset seed of the pairs ({compare.HELDOUT_SEED}: held out, "
        f"{compare.TUNING_SEED}: for tuning)",
    )  # fmt: skip
    parser.add_argument(
        "--section", help="RESULTS.md section (and JSON) name, instead of regularisation_{dim}d "
        "or tuning_{dim}d",
    )  # fmt: skip
    parser.add_argument(
        "--load-note", help="what else ran on the machine meanwhile (stored with the run)"
    )
    parser.add_argument("--no-render", action="store_true", help="store the JSON only")
    parser.add_argument(
        "--render-from", nargs="+", type=Path, metavar="JSON",
        help="render the section from stored runs (same dim and pairs) instead of running",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.render_from:
        runs = [json.loads(path.read_text(encoding="utf-8")) for path in args.render_from]
        keys = {(r["dim"], r["pairs"], r.get("dataset_seed", compare.HELDOUT_SEED)) for r in runs}
        if len(keys) != 1:
            parser.error("--render-from runs must share their dimension, pairs and dataset seed")
        payload = {
            **runs[-1],
            "rows": {k: v for r in runs for k, v in r["rows"].items()},
            "command": "`; `".join(r["command"] for r in runs),
            "date": ", ".join(r["date"] for r in runs),
        }
    else:
        peers.single_threaded()
        candidates = [c.strip() for c in args.candidates.split(";") if c.strip()]
        payload = sweep(args.dim, args.pairs, candidates, args.dataset_seed)
    seed = payload.get("dataset_seed", compare.HELDOUT_SEED)
    payload["section"] = (
        args.section or payload.get("section") or section_name(payload["dim"], seed)
    )
    if args.load_note:
        payload["load_note"] = args.load_note
    if not args.render_from:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{payload['section']}.json"
        path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    section = render(payload)
    print(section)
    if not args.no_render:
        lines = section.splitlines()
        write_section(compare.RESULTS, lines[0], lines[-1], section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
