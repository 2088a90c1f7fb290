"""Writing register's outputs: intermodal's writers beside ITK's, on the real pair's grids.

``intermodal register`` writes the warped image, the Jacobian determinant and the forward and
inverse displacement fields on the fixed image's grid (``report.save_result``). The fields live
on the coarser working grid; ITK's way is ``sitk.Resample`` onto the fixed grid and
``sitk.WriteImage``; ours is ``io.nifti.write_displacement_nifti`` (slab by slab,
``intermodal.grids.sample_rows``, deflated with zlib's run-length strategy). The scalar images
go through ``sitk.WriteImage`` or ``io.nifti.write_float32_nifti``. Each pair of writers runs in
turns, on one thread, on the CT of ``../shared/data/mridir`` at its own 2 mm and resampled to
1 mm, after a ``--preset fast --similarity mi --spacing 3`` registration of the T2 MR onto it;
each file's values are compared with ITK's (the largest absolute difference is reported).

Usage::

    nice -n 10 .venv/bin/python benchmarks/output_writing.py --load-note "nothing else ran"

(Re)writes the section between ``<!-- output_writing:begin -->`` and
``<!-- output_writing:end -->`` of ``benchmarks/RESULTS.md`` and keeps the measurements in
``benchmarks/measured/output_writing.json``.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from results_file import publish  # benchmarks/ is on sys.path when run as a script

from intermodal.grids import sample_rows
from intermodal.io import read_image
from intermodal.io.nifti import write_displacement_nifti, write_float32_nifti
from intermodal.registration import preset_settings, register

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mridir"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
RECORD = REPO / "benchmarks" / "measured" / "output_writing.json"
BEGIN, END = "<!-- output_writing:begin -->", "<!-- output_writing:end -->"


def at_spacing(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` over its own extent at an isotropic ``spacing`` (linear, -1000 outside)."""
    size = [round(n * s / spacing) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [spacing] * 3,
        image.GetDirection(), -1000.0, image.GetPixelID(),
    )  # fmt: skip


def itk_field(field: sitk.Image, reference: sitk.Image, path: Path) -> None:
    identity = sitk.Transform(reference.GetDimension(), sitk.sitkIdentity)
    on_grid = sitk.Resample(
        field, reference, identity, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32
    )
    sitk.WriteImage(on_grid, str(path), useCompression=True)


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(spacing: float, repeats: int, folder: Path) -> list[dict]:
    ct = read_image(DATA / "ct_2mm.nii.gz")
    mr = read_image(DATA / "mr_t2_2mm.nii.gz")
    fixed = ct if spacing == 2.0 else at_spacing(ct, spacing)
    settings = preset_settings("fast", 3, similarity="mi", spacing=3.0, device="cpu")
    result = register(fixed, mr, settings)
    grid = "x".join(map(str, fixed.GetSize()))
    rows = []

    def pair(what: str, ours, theirs, check) -> None:
        ours_s, theirs_s = [], []
        for _ in range(repeats):  # in turns, so that a change of load hits both
            ours_s.append(timed(ours, 1))
            theirs_s.append(timed(theirs, 1))
        row = {"grid": grid, "what": what, "ours_s": statistics.median(ours_s),
               "itk_s": statistics.median(theirs_s), **check()}  # fmt: skip
        row["ratio"] = row["ours_s"] / row["itk_s"]
        print(row, flush=True)
        rows.append(row)

    def files(name: str) -> tuple[Path, Path]:
        return folder / f"ours_{name}.nii.gz", folder / f"itk_{name}.nii.gz"

    def compare_files(name: str) -> dict:
        ours, theirs = (sitk.ReadImage(str(p)) for p in files(name))
        difference = np.abs(sitk.GetArrayFromImage(ours) - sitk.GetArrayFromImage(theirs))
        return {"max_difference": float(difference.max()),
                "ours_mb": files(name)[0].stat().st_size / 1e6,
                "itk_mb": files(name)[1].stat().st_size / 1e6}  # fmt: skip

    rows_total = fixed.GetSize()[-1]
    identity = sitk.Transform(3, sitk.sitkIdentity)

    def ours_grid() -> np.ndarray:
        return sample_rows(result.field, fixed, 0, rows_total)

    def itk_grid() -> sitk.Image:
        kind = sitk.sitkVectorFloat64
        return sitk.Resample(result.field, fixed, identity, sitk.sitkLinear, 0.0, kind)

    def grid_difference() -> dict:
        ours = np.moveaxis(ours_grid(), 0, -1)
        return {"max_difference": float(np.abs(ours - sitk.GetArrayFromImage(itk_grid())).max())}

    pair("displacement field onto the fixed grid, in memory (float64)", ours_grid, itk_grid,
         grid_difference)  # fmt: skip
    for name, field in (("displacement", result.field), ("inverse", result.inverse_field)):
        ours, theirs = files(name)
        pair(
            f"{name} field written on the fixed grid (.nii.gz)",
            lambda f=field, p=ours: write_displacement_nifti(f, fixed, p),
            lambda f=field, p=theirs: itk_field(f, fixed, p),
            lambda n=name: compare_files(n),
        )
    for name, image in (("warped", result.warped), ("jacobian", result.jacobian)):
        ours, theirs = files(name)
        pair(
            f"{name} image written (.nii.gz)",
            lambda i=image, p=ours: write_float32_nifti(i, p),
            lambda i=image, p=theirs: sitk.WriteImage(i, str(p), useCompression=True),
            lambda n=name: compare_files(n),
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load-note", default="not recorded")
    args = parser.parse_args(argv)
    if not (DATA / "ct_2mm.nii.gz").is_file():
        print(f"skipped: the MRI-DIR pair is not at {DATA}")
        return 0
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    with tempfile.TemporaryDirectory() as folder:
        rows = [r for s in (2.0, 1.0) for r in measure(s, args.repeats, Path(folder))]
    command = shlex.join(["nice", "-n", "10", ".venv/bin/python", "benchmarks/output_writing.py",
                          *sys.argv[1:]])  # fmt: skip
    lines = [
        BEGIN,
        "## Writing register's outputs: intermodal's writers beside ITK's (real pair's grids)",
        "",
        f"- date: {date}; command: `{command}`; load: {args.load_note}",
        "- the MRI-DIR CT (fixed) at its own 2 mm and resampled to 1 mm, the T2 MR registered "
        "onto it by `preset_settings('fast', 3, similarity='mi', spacing=3.0)`; its fields on "
        "the 3 mm working grid; one thread (torch and ITK); each pair of writers in turns, "
        f"median of {args.repeats}; ITK: `sitk.Resample` onto the fixed grid then "
        "`sitk.WriteImage(useCompression=True)`; ours: what `report.save_result` calls",
        "- max difference: largest absolute difference between the two files' values (0: the "
        "same float32 values); MB: file sizes",
        "",
        "| fixed grid | output | ours s | ITK s | ratio | max difference | ours MB | ITK MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        sizes = f"{r['ours_mb']:.1f} | {r['itk_mb']:.1f}" if "ours_mb" in r else "- | -"
        lines.append(
            f"| {r['grid']} | {r['what']} | {r['ours_s']:.3f} | {r['itk_s']:.3f} | "
            f"{r['ratio']:.2f} | {r['max_difference']:.2g} | {sizes} |"
        )
    lines.append(END)
    publish(RESULTS, lines, RECORD, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
