"""The benchmark suite: datasets x methods, side by side, at one thread count for all.

Each registration runs in a fresh process started with the thread count in its environment
(``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, and the
tools' own thread options). The process reads the case's two images from disk through
:func:`intermodal.io.read_image` (the user's path), registers, builds the fixed -> moving
displacement on the fixed grid and writes it; this process scores it (:mod:`datasets`).

- wall time: reading, registering and building the field (not the interpreter's start, the
  imports, writing or scoring); the median of ``--repeats`` runs (3 by default), the methods
  taking turns run by run so that a change in the machine's load hits them alike;
- peak RSS: the largest ``VmHWM`` (the process's own peak resident set, imports included) of
  the runs;
- scores: of the first run (ANTs samples its metric at random, so its scores vary a little
  from run to run); a run that fails, or returns NaN, makes the row a failure.

Results go to ``benchmarks/measured/<dataset>.json``: a method's row for a case replaces the
earlier one, other rows stay; each row names the run that measured it, and each run its date,
command, commit, versions, machine, threads and load. ``benchmarks/tables.py`` renders
RESULTS.md's tables and the plots from these files.

Usage::

    .venv/bin/python benchmarks/suite.py                          # everything (hours)
    .venv/bin/python benchmarks/suite.py --quick                  # make bench-quick
    .venv/bin/python benchmarks/suite.py --datasets rendered --cases 3 \\
        --methods intermodal,ants_synra,greedy --threads 2
    .venv/bin/python benchmarks/suite.py --device cuda --methods intermodal   # make bench-gpu
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MEASURED = HERE / "measured"
RUN_TIMEOUT_S = 3600
"""Default limit on one registration run (``--timeout``): a run past it is a failed row."""

QUICK: dict[str, tuple[int, tuple[str, ...]]] = {
    "rendered": (1, ("intermodal", "ants_synra", "convexadam", "greedy")),
    "synthetic_3d": (1, ("intermodal", "ants_synra", "convexadam", "greedy")),
    "slices_2d": (2, ("intermodal", "ants_synra", "greedy")),
    "real_pair": (1, ("intermodal", "ants_synra", "convexadam")),
}
"""``--quick``: dataset -> (cases, methods): the default against the strongest peers, a few
cases each, under 15 minutes on two cores with 3 repeats. Greedy is left out on the real pair,
its slowest case (3 runs of 48.5 s made the whole 16 min 44 s on 2026-12-07)."""

sys.path.insert(0, str(HERE))


# --------------------------------------------------------------------------- the worker


def peak_rss_mib() -> float:
    """This process's peak resident set (MiB): ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: Linux carries it across ``execve``, so a child of a large parent would
    report at least the parent's size. ``VmHWM`` starts afresh with the new address space.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One registration in this (fresh) process; writes the field to ``spec["field"]``."""
    import methods
    import numpy as np
    import SimpleITK as sitk

    methods.set_threads(spec["threads"])
    from intermodal.allocator import keep_freed_memory
    from intermodal.io import read_image

    # as the intermodal command does; here for every method alike, so all share the allocator
    keep_freed_memory()

    method = methods.METHODS[spec["method"]]
    with tempfile.TemporaryDirectory() as folder:
        context = methods.Context(spec["threads"], Path(folder), spec.get("device"))
        start = time.perf_counter()
        fixed = read_image(spec["fixed"])
        moving = read_image(spec["moving"])
        transform = method.register(fixed, moving, context)
        field = methods.dense_field(transform, fixed)
        seconds = time.perf_counter() - start
    if not np.isfinite(sitk.GetArrayViewFromImage(field)).all():
        # e.g. Greedy's NMI stage now and then diverges to NaN: a failure, not a score
        raise RuntimeError(f"{spec['method']} returned a displacement with NaN or inf values")
    sitk.WriteImage(sitk.Cast(field, sitk.sitkVectorFloat32), spec["field"])
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def run_isolated(
    spec: dict[str, Any], folder: Path, timeout_s: float = RUN_TIMEOUT_S
) -> dict[str, Any]:
    """Run :func:`worker` in a new process with the thread count in its environment."""
    threads = str(spec["threads"])
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        environment[name] = threads
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    log = folder / "log.txt"
    try:
        with log.open("w") as stream:
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                stdout=stream, stderr=subprocess.STDOUT, env=environment, cwd=ROOT,
                timeout=timeout_s,
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"stopped: no result within {timeout_s:g} s"}
    result = folder / "result.json"
    if done.returncode != 0 or not result.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0][:300]}"}
    return json.loads(result.read_text())


# --------------------------------------------------------------------------- provenance


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of intermodal and every peer (``not installed`` where absent)."""
    from importlib import metadata

    found = {}
    for package in (
        "intermodal", "torch", "SimpleITK", "antspyx", "convexAdam", "picsl_greedy",
        "itk-elastix", "voxelmorph",
    ):  # fmt: skip
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    try:
        line = subprocess.run(["plastimatch", "--version"], capture_output=True, text=True)
        found["plastimatch"] = line.stdout.strip() or "unknown"
    except OSError:
        found["plastimatch"] = "not installed"
    return found


def machine() -> str:
    """CPU model and count, in words."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def provenance(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    edited = _git("status", "--porcelain", "--", "src")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join([".venv/bin/python", "benchmarks/suite.py", *argv]),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "src_edited": bool(edited),
        "versions": versions(),
        "machine": machine(),
        "threads": args.threads,
        "repeats": args.repeats,
        "device": args.device or "default",
        "load_average_start": round(os.getloadavg()[0], 2),
    }


# --------------------------------------------------------------------------- storage


def load(dataset: str, folder: Path = MEASURED) -> dict[str, Any]:
    """A dataset's stored record (empty when there is none)."""
    path = folder / f"{dataset}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"dataset": dataset, "runs": {}, "results": {}, "skipped": {}}


def save(record: dict[str, Any], folder: Path = MEASURED) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['dataset']}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path


def update(dataset: str, folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to a dataset's stored record under a file lock: read, change, write.

    Several suite runs may store rows of one dataset at once (others' and this one's); each
    reads the file afresh under the lock, so that none writes back rows it read before another
    run stored its own.
    """
    folder.mkdir(parents=True, exist_ok=True)
    # the lock lives outside the repository; one per dataset name serves every folder
    with open(Path(tempfile.gettempdir()) / f"intermodal-bench-{dataset}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = load(dataset, folder)
        record.setdefault("skipped", {})
        change(record)
        temporary = folder / f".{dataset}.json.tmp"
        temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, folder / f"{dataset}.json")


def merge_row(record: dict[str, Any], method: str, case: str, row: dict[str, Any]) -> None:
    """Put one method's row for one case into a record, replacing an earlier one."""
    record["results"].setdefault(method, {})[case] = row
    record.get("skipped", {}).pop(method, None)


def prune_runs(record: dict[str, Any]) -> None:
    """Drop the run records that no stored row names any more (all its rows replaced)."""
    named = {row.get("run") for rows in record["results"].values() for row in rows.values()}
    record["runs"] = {run: info for run, info in record["runs"].items() if run in named}


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeats of one method on one case: median seconds, largest peak RSS."""
    seconds = [run["seconds"] for run in runs]
    return {
        "seconds": statistics.median(seconds),
        "seconds_runs": [round(s, 3) for s in seconds],
        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
    }


# --------------------------------------------------------------------------- the run


def row_label(method: str, device: str | None) -> str:
    """The stored method key: ``intermodal@cuda`` for a run on another device."""
    return method if device in (None, "cpu") else f"{method}@{device}"


def run_dataset(
    dataset: str,
    cases: Sequence[int],
    method_names: Sequence[str],
    args: argparse.Namespace,
    run_id: str,
    run_info: dict[str, Any],
    folder: Path = MEASURED,
) -> None:
    """Run every method on every case of one dataset; store each case's rows as it is done."""
    import datasets
    import methods
    import SimpleITK as sitk

    reason = datasets.unavailable(dataset)
    if reason is not None:
        print(f"{dataset}: skipped: {reason}", flush=True)
        return

    def start(record: dict[str, Any]) -> None:
        record["description"] = datasets.DATASETS[dataset]
        record["runs"][run_id] = run_info

    update(dataset, folder, start)
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        references: dict[tuple[str, str], Any] = {}
        for index in cases:
            case = datasets.make_case(dataset, index)
            active = []
            for name in method_names:
                why = methods.unavailable(name, case.ndim, dataset)
                if why is None:
                    active.append(name)
                else:
                    skipped[row_label(name, args.device)] = why
            paths = write_inputs(case.fixed, case.moving, work, case.name)
            reference_paths = None
            if case.reference_key is not None:
                pair = datasets.reference_pair(case.reference_key)
                name = "reference_" + case.reference_key.replace("/", "_")
                reference_paths = write_inputs(*pair, work, name)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in active}
            errors: dict[str, str] = {}
            for repeat in range(args.repeats):
                # the methods take turns, so that a change of load hits them alike
                for name in active:
                    if name in errors:
                        continue
                    out = work / f"{case.name}_{name}_{repeat}"
                    out.mkdir()
                    spec = {
                        "method": name, "fixed": paths[0], "moving": paths[1],
                        "field": str(out / "field.nii.gz"), "threads": args.threads,
                        "device": args.device, "result": str(out / "result.json"),
                    }  # fmt: skip
                    outcome = run_isolated(spec, out, args.timeout)
                    if "error" in outcome:
                        errors[name] = outcome["error"]
                    else:
                        runs[name].append(outcome)
            rows: dict[str, dict[str, Any]] = {}
            for name in active:
                label = row_label(name, args.device)
                row: dict[str, Any] = {"run": run_id}
                if name in errors:
                    row["error"] = errors[name]
                else:
                    row.update(summarise_runs(runs[name]))
                    field = sitk.ReadImage(
                        str(work / f"{case.name}_{name}_0" / "field.nii.gz"), sitk.sitkVectorFloat64
                    )
                    reference = None
                    if reference_paths is not None:
                        key = (name, case.reference_key)
                        if key not in references:
                            references[key] = reference_field(name, reference_paths, args, work)
                        reference = references[key]
                        if reference is None:
                            row["error"] = "failed on the unmoved pair (its reference)"
                    if "error" not in row:
                        try:
                            row["scores"] = datasets.score(case, field, reference)
                        except Exception as error:  # a bad field is a result, not a crash
                            traceback.print_exc()
                            row["error"] = f"scoring: {type(error).__name__}: {error}"
                rows[label] = row
                report(dataset, case.name, label, row)

            def store(record: dict[str, Any], case_name: str = case.name, done=rows) -> None:
                for label, row in done.items():
                    merge_row(record, label, case_name, row)
                record["skipped"].update(skipped)

            update(dataset, folder, store)


def reference_field(name: str, paths: list[str], args: argparse.Namespace, work: Path):
    """The method's field on the unmoved pair of a relative case (one run), or None."""
    import SimpleITK as sitk

    out = Path(tempfile.mkdtemp(dir=work))
    spec = {
        "method": name, "fixed": paths[0], "moving": paths[1],
        "field": str(out / "field.nii.gz"), "threads": args.threads, "device": args.device,
        "result": str(out / "result.json"),
    }  # fmt: skip
    outcome = run_isolated(spec, out, args.timeout)
    if "error" in outcome:
        print(f"reference of {name}: {outcome['error']}", flush=True)
        return None
    return sitk.ReadImage(spec["field"], sitk.sitkVectorFloat64)


def write_inputs(fixed, moving, folder: Path, name: str) -> list[str]:
    """The pair on disk as a user would have it: PNG for RGB pictures, else NIfTI."""
    import SimpleITK as sitk

    paths = []
    for role, image in (("fixed", fixed), ("moving", moving)):
        picture = image.GetNumberOfComponentsPerPixel() == 3
        path = folder / f"{name}_{role}.{'png' if picture else 'nii.gz'}"
        sitk.WriteImage(image, str(path))
        paths.append(str(path))
    return paths


def report(dataset: str, case: str, method: str, row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{dataset} {case} {method}: {row['error']}", flush=True)
        return
    scores = row.get("scores", {})
    shown = ", ".join(
        f"{key} {scores[key]:.3f}"
        for key in ("dice", "error_median_mm", "nmi", "sdlogj")
        if key in scores
    )
    print(
        f"{dataset} {case} {method}: {row['seconds']:.1f} s (median of "
        f"{len(row['seconds_runs'])}), {row['peak_rss_mib']:.0f} MiB, {shown}",
        flush=True,
    )


# --------------------------------------------------------------------------- the command


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    import datasets
    import methods

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", help=f"comma-separated, from {','.join(datasets.DATASETS)}")
    parser.add_argument("--methods", help=f"comma-separated, from {','.join(methods.METHODS)}")
    parser.add_argument("--cases", type=int, help="cases per dataset (default: the full count)")
    parser.add_argument("--first", type=int, default=0, help="index of the first case")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method and case")
    parser.add_argument("--threads", type=int, default=1, help="threads for every method")
    parser.add_argument("--device", help="intermodal's device (cuda: rows stored as name@cuda)")
    parser.add_argument("--quick", action="store_true", help="the make bench-quick subset")
    parser.add_argument(
        "--timeout", type=float, default=RUN_TIMEOUT_S, help="seconds one run may take"
    )
    parser.add_argument("--out", type=Path, default=MEASURED, help="folder of the JSON records")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return args
    if args.repeats < 1 or args.threads < 1 or args.first < 0 or args.timeout <= 0:
        parser.error("--repeats and --threads must be >= 1, --first >= 0, --timeout > 0")
    if args.cases is not None and args.cases < 1:
        parser.error(f"--cases must be >= 1, not {args.cases}")
    chosen = (args.datasets or ",".join(QUICK if args.quick else datasets.DATASETS)).split(",")
    unknown = sorted(set(chosen) - set(datasets.DATASETS))
    if unknown:
        parser.error(f"unknown datasets {unknown}; choose from {','.join(datasets.DATASETS)}")
    named = args.methods.split(",") if args.methods else None
    unknown = sorted(set(named or ()) - set(methods.METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {','.join(methods.METHODS)}")
    plan = {}
    for dataset in chosen:
        quick_cases, quick_methods = QUICK.get(dataset, (1, ("intermodal",)))
        count = args.cases or (quick_cases if args.quick else datasets.FULL_CASES[dataset])
        if dataset == "real_pair":
            count = 1
        use = named or (list(quick_methods) if args.quick else list(methods.METHODS))
        plan[dataset] = (range(args.first, args.first + count), use)
    args.plan = plan
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker is not None:
        spec = json.loads(args.worker.read_text())
        outcome = worker(spec)
        Path(spec["result"]).write_text(json.dumps(outcome))
        return 0
    run_info = provenance(args, argv)
    run_id = run_info["date"]
    for dataset, (cases, names) in args.plan.items():
        started = time.perf_counter()
        run_dataset(dataset, cases, names, args, run_id, run_info, args.out)
        print(f"{dataset}: {time.perf_counter() - started:.0f} s", flush=True)
    run_info["load_average_end"] = round(os.getloadavg()[0], 2)

    def finish(record: dict[str, Any]) -> None:
        if run_id in record["runs"]:
            record["runs"][run_id] = run_info
        prune_runs(record)

    for dataset in args.plan:
        if (args.out / f"{dataset}.json").is_file():
            update(dataset, args.out, finish)
    print("tables: .venv/bin/python benchmarks/tables.py", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
