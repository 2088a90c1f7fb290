"""Fuzz every reader with thousands of damaged files; count clean results, refusals and crashes.

Readers: ``intermodal.io.read_image`` on NIfTI (``.nii`` and ``.nii.gz``), MetaImage, NRRD,
single DICOM files, DICOM series directories and 2D pictures (PNG/TIFF/JPEG in every Pillow
mode), and ``intermodal.io.read_points`` on CSV text. Inputs come from
``tests/hardening/fuzz_inputs.py`` (the same damage the hypothesis tests draw from), made from
a random generator seeded by ``(reader, seed, case)`` so any case can be replayed.

Each case must end in a clean result (a float32 image with finite values and positive
spacing, or an ``(N, ndim)`` array of finite points) or an ``IntermodalError`` whose message
is one line naming the file. Anything else is a failure: another exception ("escaped"), a
malformed message, a bad result, or the worker process dying ("crash", e.g. a segfault) or
making no progress for ``--stall`` seconds ("hang"). Cases run in worker subprocesses of
``--batch`` cases each; after a crash or hang the batch resumes at the next case, so one
crash is counted, not fatal.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz_readers.py --cases 2000
    .venv/bin/python benchmarks/fuzz_readers.py --replay nifti_header 0 123   # one case, verbose

It prints a Markdown table of the counts (for ``benchmarks/RESULTS.md``) and exits with
status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "hardening"))

import fuzz_inputs as fz  # noqa: E402

MEMORY_LIMIT = 6 << 30  # bytes of address space per worker
READERS = (
    "nifti_header",
    "nifti_gz",
    "metaimage",
    "nrrd",
    "dicom_file",
    "dicom_series",
    "picture",
    "points",
)


# --------------------------------------------------------------------------- cases


def _edits(rng: random.Random, most: int = 8) -> list[tuple[int, int]]:
    return fz.random_edits(rng, most)


def build_case(reader: str, rng: random.Random, folder: Path, seeds: dict[str, bytes]) -> Path:
    """Write one damaged input for ``reader`` under ``folder`` and return the path to read."""
    if reader == "nifti_header":
        data = seeds[".nii"]
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 3)):
                field = rng.choice(list(fz.NIFTI_FIELDS))
                fmt = fz.NIFTI_FIELDS[field][1]
                value = rng.choice(fz.INTERESTING_FLOATS if fmt == "f" else fz.INTERESTING_INTS)
                data = fz.set_nifti_field(data, field, rng.randrange(8), value)
            path = folder / "case.nii"
            path.write_bytes(data)
            return path
        cut = rng.randrange(len(data)) if rng.random() < 0.2 else None
        return fz.make_damaged_file(folder, ".nii", data, edits=_edits(rng), cut=cut)
    if reader == "nifti_gz":
        seed = seeds[".nii.gz"]
        choice = rng.random()
        if choice < 0.4:  # truncated gzip stream
            path = folder / "case.nii.gz"
            path.write_bytes(seed[: rng.randrange(len(seed))])
            return path
        if choice < 0.7:  # flipped bytes in the compressed stream
            path = folder / "case.nii.gz"
            path.write_bytes(fz.flip_bytes(seed, _edits(rng, 4)))
            return path
        return fz.make_damaged_file(folder, ".nii.gz", seed, edits=_edits(rng))
    if reader in ("metaimage", "nrrd", "dicom_file"):
        ext = {"metaimage": ".mha", "nrrd": ".nrrd", "dicom_file": ".dcm"}[reader]
        data = seeds[ext]
        if ext != ".dcm" and rng.random() < 0.5:
            for _ in range(rng.randint(1, 3)):
                data = fz.replace_header_value(
                    data, rng.randrange(64), rng.choice(fz.HEADER_TOKENS)
                )
            path = folder / f"case{ext}"
            path.write_bytes(data)
            return path
        cut = rng.randrange(len(data)) if rng.random() < 0.25 else None
        return fz.make_damaged_file(folder, ext, data, edits=_edits(rng), cut=cut)
    if reader == "picture":
        ext = rng.choice(fz.PICTURE_FORMATS)
        size = (rng.randint(1, 24), rng.randint(1, 24))
        path = None
        while path is None:
            mode = rng.choice(fz.PICTURE_MODES)
            path = fz.make_picture(folder, ext, mode, size, rng.randrange(1 << 30))
        if rng.random() < 0.6:
            data = path.read_bytes()
            cut = rng.randrange(len(data)) if rng.random() < 0.3 else None
            path.unlink()
            path = fz.make_damaged_file(folder, ext, data, edits=_edits(rng, 4), cut=cut)
        return path
    if reader == "dicom_series":
        series = folder / "series"
        oracle = fz.make_random_series(series, rng)
        if oracle is not None:
            (folder / "oracle.json").write_text(json.dumps(oracle))
        return series
    if reader == "points":
        path = folder / "points.csv"
        if rng.random() < 0.15:
            path.write_bytes(rng.randbytes(rng.randrange(200)))
            return path
        header = rng.choice([["x", "y", "z"], ["x", "y"], ["X", "Y", "Z"], ["x", "y", "z", "w"]])
        rows = [header] + [
            [rng.choice(fz.POINT_TOKENS) if rng.random() < 0.2 else f"{rng.gauss(0, 50):.3f}"
             for _ in range(rng.choice([len(header), len(header), 1, 4]))]
            for _ in range(rng.randrange(6))
        ]  # fmt: skip
        path.write_text(
            fz.make_points_text(rows, separator=rng.choice([",", ",", ";", "\t"])),
            encoding="utf-8",
        )
        return path
    raise ValueError(f"unknown reader {reader!r}")


def judge(reader: str, path: Path) -> tuple[str, str]:
    """The outcome of reading ``path``; a DICOM series read clean is checked against its oracle."""
    outcome, detail = fz.read_outcome(reader, path)
    oracle = path.parent / "oracle.json"
    if outcome == "read" and reader == "dicom_series" and oracle.is_file():
        from intermodal.io import read_image

        wrong = fz.check_series(read_image(path), json.loads(oracle.read_text()))
        if wrong:
            return "result", wrong
    return outcome, detail


# --------------------------------------------------------------------------- worker


def run_worker(reader: str, seed: int, start: int, stop: int, log: Path) -> None:
    """Run cases ``start .. stop - 1``, appending one JSON line per case to ``log``.

    A line ``{"case": i}`` is written (and flushed) before case ``i`` runs and one with its
    outcome after, so the driver knows which case was running if the process dies.
    """
    import logging
    import resource

    logging.disable(logging.WARNING)  # readers warn about odd inputs; only outcomes count here
    # A header that makes a reader allocate tens of GB must fail here, not take the machine.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as tmp:
        seeds = {ext: fz.seed_bytes(ext, Path(tmp)) for ext in fz.VOLUME_FORMATS}
    with open(log, "a", encoding="utf-8") as out:
        for index in range(start, stop):
            out.write(json.dumps({"case": index}) + "\n")
            out.flush()
            rng = random.Random(f"{reader}:{seed}:{index}")
            with tempfile.TemporaryDirectory(prefix="fuzz-case-") as tmp:
                try:
                    path = build_case(reader, rng, Path(tmp), seeds)
                except Exception as err:  # noqa: BLE001 - a bug here must not pass as a crash
                    outcome, detail = "generator-error", f"{type(err).__name__}: {err}"
                else:
                    outcome, detail = judge(reader, path)
            out.write(json.dumps({"case": index, "outcome": outcome, "detail": detail}) + "\n")
            out.flush()


# --------------------------------------------------------------------------- driver


def run_reader(reader: str, cases: int, batch: int, seed: int, stall: float) -> dict:
    """Run ``cases`` cases of ``reader`` in worker subprocesses; return the tallies.

    A worker that dies is counted as one crash at the case it was running, one that writes
    nothing for ``stall`` seconds is killed and counted as a hang; either way the next worker
    starts at the following case.
    """
    tally = {"cases": 0, "read": 0, "refused": 0, "crash": 0, "hang": 0, "failures": []}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    next_case = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-log-") as tmp:
        while next_case < cases:
            log = Path(tmp) / f"{next_case}.jsonl"
            log.touch()
            stop = min(next_case + batch, cases)
            command = [sys.executable, __file__, "--worker", reader, str(seed)]
            command += [str(next_case), str(stop), str(log)]
            proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
            )
            size, last_change, stalled = 0, time.monotonic(), False
            while proc.poll() is None:
                time.sleep(0.2)
                if log.stat().st_size != size:
                    size, last_change = log.stat().st_size, time.monotonic()
                elif time.monotonic() - last_change > stall:
                    proc.kill()
                    stalled = True
            proc.wait()
            running = None
            for line in log.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                if "outcome" not in entry:
                    running = entry["case"]
                    continue
                running = None
                tally["cases"] += 1
                if entry["outcome"] in ("read", "refused"):
                    tally[entry["outcome"]] += 1
                else:
                    tally["failures"].append(entry)
            if running is None and proc.returncode == 0:
                next_case = stop
                continue
            if running is None:  # died before its first case: count it at the next case
                running = next_case
            kind = "hang" if stalled else "crash"
            tally["cases"] += 1
            tally[kind] += 1
            detail = f"worker exit status {proc.returncode}"
            tally["failures"].append({"case": running, "outcome": kind, "detail": detail})
            next_case = running + 1
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per reader")
    parser.add_argument("--batch", type=int, default=250, help="cases per worker process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stall", type=float, default=60.0, help="seconds without progress")
    parser.add_argument("--readers", nargs="+", default=list(READERS), choices=READERS)
    parser.add_argument("--replay", nargs=3, metavar=("READER", "SEED", "CASE"))
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        reader, seed, start, stop, log = args.worker
        run_worker(reader, int(seed), int(start), int(stop), Path(log))
        return 0
    if args.replay:
        reader, seed, index = args.replay
        keep = Path(tempfile.mkdtemp(prefix="fuzz-replay-"))
        seeds = {ext: fz.seed_bytes(ext, keep / "seeds") for ext in fz.VOLUME_FORMATS}
        path = build_case(reader, random.Random(f"{reader}:{int(seed)}:{int(index)}"), keep, seeds)
        print(path)
        print(judge(reader, path))
        return 0

    start = time.perf_counter()
    rows = [
        "| reader | cases | read clean | refused | crash | hang | other failures | s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    failures = 0
    for reader in args.readers:
        t0 = time.perf_counter()
        tally = run_reader(reader, args.cases, args.batch, args.seed, args.stall)
        other = len(tally["failures"]) - tally["crash"] - tally["hang"]
        failures += len(tally["failures"])
        rows.append(
            f"| {reader} | {tally['cases']} | {tally['read']} | {tally['refused']} | "
            f"{tally['crash']} | {tally['hang']} | {other} | {time.perf_counter() - t0:.0f} |"
        )
        print(rows[-1], flush=True)
        for failure in tally["failures"][:10]:
            print(f"    {json.dumps(failure)[:400]}", flush=True)
    print("\n".join(rows))
    print(f"total failures: {failures}; {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
