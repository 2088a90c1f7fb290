"""Real CT/MR pair: intermodal against ANTs SyNRA and a SimpleITK B-spline, side by side.

The MRI-DIR pork phantom (``../shared/data/mridir``): the CT is fixed, the T2 MR is moving,
both at 2 mm. Each method runs in its own subprocess, ``--repeats`` times, round robin so that
a change in the machine's load hits every method alike. Measured per run:

- wall time. intermodal: the whole ``intermodal register`` command (interpreter start, imports,
  reading, registration, writing every output). ANTs and SimpleITK: reading, intensity
  normalisation, registration and resampling inside their worker process, i.e. without the
  interpreter start and imports, which only favours them. The whole-process wall time of every
  method is reported as well.
- peak memory: the kernel's ``ru_maxrss`` of the child process, taken with ``os.wait4`` (what
  ``/usr/bin/time -v`` reports as "Maximum resident set size"); exact, not polled.
- NMI before and after, computed here by the same code for every method: the MR is normalised
  once (0.5/99.5 percentiles of the original MR), resampled through each method's transform
  onto the CT grid (linear, 0 outside), and compared with the CT normalised by its HU window
  (-1000..1000), by ``intermodal.losses.nmi(bins=32)`` inside the CT's field of view
  (CT > -1500 HU, ``intermodal.preprocess.data_mask``: the scanner pads outside its circular
  field of view with -2048), the definition of the NMI in ``register``'s report and in
  ``intermodal evaluate``.
- folding: the share of voxels of the CT grid whose Jacobian determinant of the deformable part
  is <= 0 (intermodal: its report.json; ANTs: the forward warp; SimpleITK: the B-spline part).

The summary is (re)written between markers in ``benchmarks/RESULTS.md``; images made from the
data go to ``benchmarks/out/`` only (git-ignored, never committed).

Usage::

    .venv/bin/python benchmarks/real_pair.py --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mridir"
CT_NAME = "ct_2mm.nii.gz"
MR_NAME = "mr_t2_2mm.nii.gz"
METHODS = ("intermodal", "ants", "sitk")
LABELS = {
    "identity": "identity (no registration)",
    "intermodal": "intermodal register (defaults)",
    "ants": "ANTs SyNRA, Mattes MI",
    "sitk": "SimpleITK affine + B-spline, Mattes MI",
}
BEGIN = "<!-- real_pair:begin -->"
END = "<!-- real_pair:end -->"
NMI_BINS = 32
# The target: NMI at least ANTs', in at most a tenth of ANTs' time.
TARGET_TIME_RATIO = 0.1


# --------------------------------------------------------------------------- workers


def _read_normalised(data: Path) -> tuple[Any, Any]:
    """The CT and MR scaled to [0, 1] the way intermodal does it (HU window, MR percentiles)."""
    import SimpleITK as sitk

    from intermodal.preprocess import normalize_intensity

    fixed = sitk.ReadImage(str(data / CT_NAME), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(data / MR_NAME), sitk.sitkFloat32)
    return normalize_intensity(fixed, "ct"), normalize_intensity(moving, "mr")


def _nonpositive_fraction(jacobian_det: Any) -> float:
    import numpy as np

    return float(np.mean(np.asarray(jacobian_det) <= 0))


def worker_ants(data: Path, workdir: Path) -> dict[str, Any]:
    """ANTs SyNRA (rigid + affine + SyN), Mattes MI in every stage, antspyx defaults otherwise.

    ANTs gets the same [0, 1]-normalised intensities as intermodal: 32 histogram bins over the
    raw CT range (-2048 .. 3071 HU) would put fat and muscle into one bin.
    """
    import ants
    import SimpleITK as sitk

    start = time.perf_counter()
    fixed_n, moving_n = _read_normalised(data)
    sitk.WriteImage(fixed_n, str(workdir / "ct_norm.nii.gz"))
    sitk.WriteImage(moving_n, str(workdir / "mr_norm.nii.gz"))
    fixed = ants.image_read(str(workdir / "ct_norm.nii.gz"))
    moving = ants.image_read(str(workdir / "mr_norm.nii.gz"))
    registration = ants.registration(
        fixed,
        moving,
        type_of_transform="SyNRA",
        aff_metric="mattes",
        syn_metric="mattes",
        outprefix=str(workdir / "ants_"),
    )
    transforms = registration["fwdtransforms"]
    warped = ants.apply_transforms(
        fixed, moving, transformlist=transforms, interpolator="linear", defaultvalue=0
    )
    seconds = time.perf_counter() - start

    ants.image_write(warped, str(workdir / "warped_mr_norm.nii.gz"))
    warp = [t for t in transforms if t.endswith("Warp.nii.gz") and "Inverse" not in t]
    jacobian_det = ants.create_jacobian_determinant_image(fixed, warp[0]).numpy()
    return {
        "seconds": seconds,
        "folding": _nonpositive_fraction(jacobian_det),
        "transforms": [Path(t).name for t in transforms],
    }


def worker_sitk(data: Path, workdir: Path) -> dict[str, Any]:
    """intermodal's own SimpleITK path: Mattes MI affine, then a Mattes MI B-spline."""
    import SimpleITK as sitk

    from intermodal import classical

    start = time.perf_counter()
    fixed_n, moving_n = _read_normalised(data)
    initial = classical.initial_alignment(fixed_n, moving_n, "affine")
    composite = classical.bspline_registration(fixed_n, moving_n, initial)
    warped = sitk.Resample(moving_n, fixed_n, composite, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    seconds = time.perf_counter() - start

    sitk.WriteImage(warped, str(workdir / "warped_mr_norm.nii.gz"))
    composite = sitk.CompositeTransform(composite)
    parts = [composite.GetNthTransform(i) for i in range(composite.GetNumberOfTransforms())]
    bspline = [p for p in parts if "BSpline" in p.GetName()]
    displacement = sitk.TransformToDisplacementField(
        bspline[0],
        sitk.sitkVectorFloat64,
        fixed_n.GetSize(),
        fixed_n.GetOrigin(),
        fixed_n.GetSpacing(),
        fixed_n.GetDirection(),
    )
    jacobian_det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(displacement))
    return {
        "seconds": seconds,
        "folding": _nonpositive_fraction(jacobian_det),
        "transforms": [p.GetName() for p in parts],
        "bspline_mesh_spacing_mm": 40.0,
    }


WORKERS = {"ants": worker_ants, "sitk": worker_sitk}


# --------------------------------------------------------------------------- measuring


def run_measured(command: list[str], log: Path) -> tuple[float, float]:
    """Run ``command``; return its wall time (s) and peak RSS (MiB, the kernel's ru_maxrss)."""
    with log.open("w") as stream:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(
            f"{shlex.join(command)} failed with exit code {process.returncode}:\n{tail}"
        )
    return seconds, usage.ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


def intermodal_command(data: Path, out: Path) -> list[str]:
    executable = Path(sys.executable).parent / "intermodal"
    return [
        str(executable),
        "register",
        "--fixed",
        str(data / CT_NAME),
        "--moving",
        str(data / MR_NAME),
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
    ]


def run_method(method: str, data: Path, out: Path) -> dict[str, Any]:
    """Run one method once in a subprocess; return its times, memory and warped MR path."""
    workdir = out / method
    workdir.mkdir(parents=True, exist_ok=True)
    log = out / f"{method}.log"
    if method == "intermodal":
        result_dir = workdir / "result"
        wall, rss = run_measured(intermodal_command(data, result_dir), log)
        report = json.loads((result_dir / "report.json").read_text())
        return {
            "seconds": wall,
            "process_seconds": wall,
            "peak_rss_mib": rss,
            "folding": report["jacobian"]["nonpositive_fraction"],
            "transform": str(result_dir / "transform.h5"),
            "report": report,
        }
    summary = workdir / "summary.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method,
        "--data",
        str(data),
        "--out",
        str(workdir),
    ]
    wall, rss = run_measured(command, log)
    result = json.loads(summary.read_text())
    result.update(
        process_seconds=wall,
        peak_rss_mib=rss,
        warped=str(workdir / "warped_mr_norm.nii.gz"),
    )
    return result


# --------------------------------------------------------------------------- evaluation


class Evaluator:
    """NMI of an MR warped onto the CT grid, computed the same way for every method.

    The CT scaled by its HU window and the MR by its percentiles, as ``register`` scales them;
    the mask is the CT's scanned data (``preprocess.data_mask``). ``compare.nmi_score`` scores
    the synthetic pairs with it too.
    """

    def __init__(self, fixed_ct: Any, moving_mr: Any) -> None:
        import SimpleITK as sitk

        from intermodal import preprocess

        fixed = sitk.Cast(fixed_ct, sitk.sitkFloat32)
        self.fixed_n = preprocess.normalize_intensity(fixed, "ct")
        self.moving_n = preprocess.normalize_intensity(sitk.Cast(moving_mr, sitk.sitkFloat32), "mr")
        self.fixed_array = sitk.GetArrayFromImage(self.fixed_n)
        self.mask = sitk.GetArrayFromImage(preprocess.data_mask(fixed, "ct")) > 0

    @classmethod
    def from_folder(cls, data: Path) -> Evaluator:
        """The evaluator of the MRI-DIR pair in ``data``."""
        import SimpleITK as sitk

        return cls(
            sitk.ReadImage(str(data / CT_NAME), sitk.sitkFloat32),
            sitk.ReadImage(str(data / MR_NAME), sitk.sitkFloat32),
        )

    def warp(self, transform: Any | None) -> Any:
        """The normalised MR resampled onto the CT grid through ``transform`` (CT -> MR mm)."""
        import SimpleITK as sitk

        if transform is None:
            transform = sitk.Transform(3, sitk.sitkIdentity)
        warped = sitk.Resample(
            self.moving_n, self.fixed_n, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32
        )
        return sitk.GetArrayFromImage(warped)

    def warped_of(self, result: dict[str, Any]) -> Any:
        import SimpleITK as sitk

        if "transform" in result:
            return self.warp(sitk.ReadTransform(result["transform"]))
        warped = sitk.ReadImage(result["warped"], sitk.sitkFloat32)
        if warped.GetSize() != self.fixed_n.GetSize():
            raise SystemExit(f"{result['warped']} is not on the CT grid")
        return sitk.GetArrayFromImage(warped)

    def nmi(self, warped_array: Any) -> float:
        from intermodal.losses import nmi

        return nmi(self.fixed_array, warped_array, bins=NMI_BINS, mask=self.mask)


def checkerboard(a: Any, b: Any, square: int = 8) -> Any:
    import numpy as np

    index = np.indices(a.shape)
    return np.where((index // square).sum(0) % 2 == 0, a, b)


def write_qc(path: Path, fixed_array: Any, warped: dict[str, Any]) -> None:
    """Middle axial and coronal slices of a CT/MR checkerboard, one row per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth, height, _ = fixed_array.shape
    figure, axes = plt.subplots(len(warped), 2, figsize=(8, 4 * len(warped)), squeeze=False)
    for row, (name, warped_array) in enumerate(warped.items()):
        board = checkerboard(fixed_array, warped_array)
        views = (("axial", board[depth // 2]), ("coronal", board[:, height // 2, :]))
        for column, (view, image) in enumerate(views):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=0, vmax=1, origin="lower" if column else "upper")
            axis.set_title(f"{LABELS[name]}\n{view}, CT / MR checkerboard", fontsize=9)
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------- report


def versions(
    names: tuple[str, ...] = ("intermodal", "antspyx", "SimpleITK", "torch", "numpy"),
) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    lines = [
        BEGIN,
        "## Real pair: MRI-DIR pork phantom, CT fixed, T2 MR moving, 2 mm",
        "",
        f"- date: {summary['date']}",
        f"- machine: {summary['nproc']} cores ({summary['cpu']}), no GPU used; other jobs may "
        "have shared the CPU, so compare only the ratios, which come from one run",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()),
        f"- command: `{summary['command']}`"
        + (" (what `make bench` runs)" if summary["command"].endswith(".py") else ""),
        f"- repeats: {summary['repeats']} per method, round robin; times are medians",
        "",
        "| method | median time s | process wall s | peak RSS MiB | NMI before | NMI after "
        "| folding % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        cells = [
            LABELS[name],
            f"{row['seconds']:.1f}" if "seconds" in row else "-",
            f"{row['process_seconds']:.1f}" if "process_seconds" in row else "-",
            f"{row['peak_rss_mib']:.0f}" if "peak_rss_mib" in row else "-",
            f"{summary['nmi_before']:.4f}",
            f"{row['nmi_after']:.4f}",
            f"{100 * row['folding']:.3f}" if "folding" in row else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Time: intermodal is the whole `intermodal register` command; ANTs and SimpleITK are "
        "read + normalise + register + resample inside their worker (no interpreter start or "
        "imports). Process wall s is the whole subprocess for every method (the workers also "
        "compute the Jacobian afterwards). Peak RSS: `ru_maxrss` of the subprocess via "
        "`os.wait4`. NMI: normalised MR (0.5/99.5 percentiles) resampled linearly onto the CT "
        "grid, against the CT in its -1000..1000 HU window, 32 bins, inside CT > -1500 HU. "
        "Folding: share of CT-grid voxels with Jacobian determinant <= 0 of the deformable part.",
        "",
    ]
    if summary["per_repeat"]:
        lines.append(
            "Per repeat (time s / NMI after): "
            + "; ".join(
                f"{LABELS[name].split(' ')[0]} " + ", ".join(f"{t:.1f}/{n:.4f}" for t, n in runs)
                for name, runs in summary["per_repeat"].items()
            )
        )
        lines.append("")
    ratios = summary["ratios"]
    for peer, ratio in ratios.items():
        lines.append(
            f"- time ratio intermodal / {peer}: {ratio['time']:.3f} "
            f"(process to process: {ratio['process']:.3f})"
        )
    target = summary.get("target")
    if target is not None:
        lines.append(
            f"- target (NMI >= ANTs' and time <= {TARGET_TIME_RATIO:g} x ANTs'): "
            f"{'MET' if target['met'] else 'NOT MET'}: NMI {target['nmi']:.4f} vs "
            f"{target['ants_nmi']:.4f} ({'ok' if target['nmi_ok'] else 'lower'}), time ratio "
            f"{target['ratio']:.3f} ({'ok' if target['time_ok'] else 'too slow'})"
        )
    if "ants" in rows:
        lines.append(
            '- ANTs call: `ants.registration(fixed, moving, type_of_transform="SyNRA", '
            'aff_metric="mattes", syn_metric="mattes")` on the [0, 1]-normalised images: rigid '
            "and affine by Mattes MI (32 bins, 20% regular sampling), SyN[0.2,3,0] by "
            "Mattes MI (32 bins), SyN iterations 40x20x0 (antspyx defaults), ITK threads "
            "left at their default (all cores)"
        )
    if "sitk" in rows:
        lines.append(
            '- SimpleITK: `intermodal.classical.initial_alignment(..., "affine")` then '
            "`bspline_registration` (40 mm mesh, L-BFGS-B 100 iterations per level, shrink 2, 1)"
        )
    if summary.get("settings"):
        settings = json.dumps(summary["settings"], sort_keys=True)
        lines.append(f"- intermodal settings (report.json): `{settings}`")
        lines.append(f"- intermodal stage times s (report.json): `{summary['stage_times']}`")
    lines += ["", END]
    return "\n".join(lines)


def write_results(path: Path, section: str) -> None:
    """Replace the text between the markers in ``path``, or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (default 3)")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset of " + ",".join(METHODS),
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the MRI-DIR folder")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"--methods must be a subset of {','.join(METHODS)}, not {unknown}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = args.data.resolve()
    missing = [n for n in (CT_NAME, MR_NAME) if not (data / n).is_file()]
    if missing:
        print(
            f"real_pair: the MRI-DIR pair is not at {data} (missing {', '.join(missing)}); "
            "it lives beside the repository in ../shared/data/mridir, or pass --data",
            file=sys.stderr,
        )
        return 2
    if args.worker:
        args.out.mkdir(parents=True, exist_ok=True)
        result = WORKERS[args.worker](data, args.out)
        (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator.from_folder(data)
    identity = evaluator.warp(None)
    nmi_before = evaluator.nmi(identity)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    for repeat in range(args.repeats):
        for method in args.methods:
            print(f"[{repeat + 1}/{args.repeats}] {method} ...", flush=True)
            result = run_method(method, data, out)
            warped = evaluator.warped_of(result)
            result["nmi_after"] = evaluator.nmi(warped)
            result["warped_array"] = warped
            print(
                f"    {result['seconds']:.1f} s, {result['peak_rss_mib']:.0f} MiB, "
                f"NMI {nmi_before:.4f} -> {result['nmi_after']:.4f}",
                flush=True,
            )
            runs[method].append(result)

    rows: dict[str, dict[str, Any]] = {"identity": {"nmi_after": nmi_before}}
    for method, results in runs.items():
        rows[method] = {
            key: statistics.median(r[key] for r in results)
            for key in ("seconds", "process_seconds", "peak_rss_mib", "nmi_after", "folding")
        }
    ratios = {
        peer: {
            "time": rows["intermodal"]["seconds"] / rows[peer]["seconds"],
            "process": rows["intermodal"]["process_seconds"] / rows[peer]["process_seconds"],
        }
        for peer in ("ants", "sitk")
        if "intermodal" in rows and peer in rows
    }
    target = None
    if "ants" in ratios:
        nmi_ok = rows["intermodal"]["nmi_after"] >= rows["ants"]["nmi_after"]
        time_ok = ratios["ants"]["time"] <= TARGET_TIME_RATIO
        target = {
            "met": nmi_ok and time_ok,
            "nmi_ok": nmi_ok,
            "time_ok": time_ok,
            "nmi": rows["intermodal"]["nmi_after"],
            "ants_nmi": rows["ants"]["nmi_after"],
            "ratio": ratios["ants"]["time"],
        }
    report = runs["intermodal"][-1]["report"] if "intermodal" in runs else {}
    command = shlex.join([".venv/bin/python", "benchmarks/real_pair.py", *sys.argv[1:]])
    summary = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "versions": versions(),
        "command": command,
        "repeats": args.repeats,
        "nmi_before": nmi_before,
        "rows": rows,
        "per_repeat": {
            m: [(r["seconds"], r["nmi_after"]) for r in results] for m, results in runs.items()
        },
        "ratios": ratios,
        "target": target,
        "settings": report.get("settings"),
        "stage_times": report.get("timings_s"),
        "intermodal_own_nmi": report.get("nmi"),
    }
    (out / "real_pair.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    write_qc(
        out / "real_pair_qc.png",
        evaluator.fixed_array,
        {"identity": identity, **{m: results[-1]["warped_array"] for m, results in runs.items()}},
    )
    section = render(summary)
    write_results(args.results, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
