"""Time and peak memory of a default registration of the real pair at its scanners' resolution.

The pair in ../shared/data/mridir is stored at 2 mm; its NOTICE.md gives the grids it came from
(CT 512 x 512 x 409 at 0.39 x 0.39 x 0.625 mm, MR 512 x 512 x 94 at 0.5 x 0.5 x 2.5 mm). This
script resamples each image linearly back onto a grid of that size over the same extent, and
registers them with the Python API at the defaults, as a user with the full-resolution DICOM
would (the outputs lie on the fixed CT's full grid). It prints the registration's wall time and
the process's peak RSS (``VmHWM``: the Python interpreter, the imports and both images
included).

Usage::

    .venv/bin/python tools/full_resolution_check.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from intermodal.data.realistic import load_real_pair
from intermodal.registration import register

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CT_GRID = ((512, 512, 409), (200 / 512, 200 / 512, 0.625))
MR_GRID = ((512, 512, 94), (0.5, 0.5, 2.5))
"""Size and spacing (mm) of each scanner's series, from the pair's NOTICE.md."""


def on_grid(image: sitk.Image, size: tuple[int, ...], spacing: tuple[float, ...]) -> sitk.Image:
    """``image`` resampled linearly onto ``size`` voxels of ``spacing``, from the same corner.

    The first voxel's outer corner stays where the 2 mm image's is; the extents agree within
    a 2 mm voxel. Outside the image: its lowest value (air).
    """
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    corner = np.asarray(image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3))
    grid = sitk.Image(size, image.GetPixelID())
    grid.SetSpacing(spacing)
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(tuple(corner + direction @ (0.5 * np.asarray(spacing))))
    lowest = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, lowest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(BENCHMARKS))
    from suite import peak_rss_mib  # the benchmark suite's reading of VmHWM

    torch.set_num_threads(args.threads)
    ct, mr = load_real_pair()
    ct_full, mr_full = on_grid(ct, *CT_GRID), on_grid(mr, *MR_GRID)
    del ct, mr
    start = time.perf_counter()
    result = register(ct_full, mr_full)
    seconds = time.perf_counter() - start
    print(
        f"CT {ct_full.GetSize()}, MR {mr_full.GetSize()}, {args.threads} thread(s): "
        f"register {seconds:.1f} s, peak RSS {peak_rss_mib():.0f} MiB; "
        f"stages (s) {result.report['timings_s']}"
    )


if __name__ == "__main__":
    main()
