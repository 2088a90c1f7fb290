"""plastimatch as a peer on the real CT/MR pair: registration and RT-structure propagation.

The MRI-DIR pork phantom (``../shared/data/mridir``, CC BY 4.0; see its NOTICE.md: Ger RB et
al., Med Phys 2018, doi:10.1002/mp.13090; TCIA MRI-DIR, doi:10.7937/K9/TCIA.2018.3f08iejt):
the CT is fixed, the T2 MR moving, both at 2 mm. Nothing made from the data is committed:
DICOM copies, masks and logs go to ``benchmarks/out/plastimatch_peer/`` (git-ignored); only
the numbers go to ``benchmarks/measured/plastimatch_peer.json``.

Runs, each in its own process, timed and with its peak memory (the kernel's ``ru_maxrss`` of
the child, through ``os.wait4``, as ``real_pair.py`` measures):

- ``intermodal register`` on the NIfTI pair, defaults (as ``real_pair.py`` runs it);
- ``intermodal register --dicom --structures``: the same pair written as DICOM series (with
  ``tests/dicom/dicom_helpers.write_series``), the MR's body outline as an RT Structure Set;
  the run reads DICOM, registers, writes the DICOM series, the Deformable Spatial
  Registration, the propagated RT Structure Set and the QA page;
- ``plastimatch register``: centre alignment, an ITK affine stage and two plastimatch
  B-spline stages (30 mm then 15 mm grid), all on mutual information, once as written and
  once with ``regularization_lambda`` on the B-spline stages (the stages are recorded in the
  JSON);
- ``plastimatch warp`` of the same RT Structure Set through each of plastimatch's vector
  fields onto the CT grid.

Scores, the same code for both: NMI of the normalised MR through each transform
(``real_pair.Evaluator``: ``intermodal.losses.nmi``, 32 bins, inside the CT's scanned data);
the share of voxels with a non-positive Jacobian determinant; and for the propagated body
outline (the pair has no labels, but the phantom's outline is visible on both scans) the Dice,
mean distance to agreement and HD95 against the CT's own body outline, and between the two
tools' propagated outlines.

Usage::

    .venv/bin/python benchmarks/plastimatch_peer.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "mridir"
CT_NAME, MR_NAME = "ct_2mm.nii.gz", "mr_t2_2mm.nii.gz"
OUT = REPO / "benchmarks" / "out" / "plastimatch_peer"
MEASURED = REPO / "benchmarks" / "measured" / "plastimatch_peer.json"
CT_BODY_HU = -400.0  # the phantom against air; the scanner pads outside its view with -2048

sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests" / "dicom"))

PLASTIMATCH_STAGES = """\
[STAGE]
xform=align_center

[STAGE]
xform=affine
impl=itk
optim=rsg
metric=mi
max_its=100
res=4 4 4

[STAGE]
xform=bspline
impl=plastimatch
optim=lbfgsb
metric=mi
max_its=50
grid_spac=30 30 30
res=2 2 2

[STAGE]
xform=bspline
impl=plastimatch
optim=lbfgsb
metric=mi
max_its=50
grid_spac=15 15 15
res=1 1 1
"""
PLASTIMATCH_LAMBDA = 0.005
"""The one regularised variant run: plastimatch's B-spline stages have no smoothness penalty
by default, and on this pair they fold (see RESULTS.md); 0.005 is a single value tried, not
a tuned one."""


def plastimatch_configs() -> dict[str, str]:
    """The stage lists run: as written above, and with ``regularization_lambda`` added to both
    B-spline stages."""
    regularised = PLASTIMATCH_STAGES.replace(
        "res=2 2 2\n", f"res=2 2 2\nregularization_lambda={PLASTIMATCH_LAMBDA}\n"
    ).replace("res=1 1 1\n", f"res=1 1 1\nregularization_lambda={PLASTIMATCH_LAMBDA}\n")
    return {
        "plastimatch B-spline MI": PLASTIMATCH_STAGES,
        f"plastimatch B-spline MI, regularization_lambda={PLASTIMATCH_LAMBDA}": regularised,
    }


LOADS: list[float] = []  # the machine's 1-minute load average at the start of each run


def run_measured(command: list[str], log: Path) -> tuple[float, float]:
    """Run ``command``; return its wall time (s) and peak RSS (MiB, ``ru_maxrss``)."""
    LOADS.append(round(os.getloadavg()[0], 2))
    with log.open("w") as stream:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{log.read_text()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024.0


def largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))


def body_masks(ct: sitk.Image, mr: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The phantom's outline: CT above -400 HU; MR above its Otsu threshold; largest part."""
    ct_body = largest_component(sitk.GetArrayFromImage(ct) > CT_BODY_HU)
    otsu = sitk.GetArrayFromImage(sitk.OtsuThreshold(mr, 0, 1)) > 0
    return ct_body, largest_component(otsu)


def agreement(reference: np.ndarray, candidate: np.ndarray, spacing: Any) -> dict[str, float]:
    from intermodal.metrics import dice, directed_surface_distances, hd95

    distances = np.concatenate([
        directed_surface_distances(candidate, reference, spacing),
        directed_surface_distances(reference, candidate, spacing),
    ])  # fmt: skip
    return {
        "dice": round(dice(reference, candidate), 4),
        "mean_distance_mm": round(float(distances.mean()), 3),
        "hd95_mm": round(hd95(reference, candidate, spacing), 3),
    }


def folding(displacement: sitk.Image) -> float:
    det = sitk.GetArrayViewFromImage(sitk.DisplacementFieldJacobianDeterminant(displacement))
    return float(np.count_nonzero(det <= 0)) / det.size


def prepare_dicom(ct: sitk.Image, mr: sitk.Image, mr_body: np.ndarray) -> dict[str, Path]:
    """The pair as DICOM series of one patient, and the MR's body outline as an RTSTRUCT."""
    from dicom_helpers import write_series

    from intermodal.dicom import read_series_info
    from intermodal.dicom.structures import Roi, write_structure_set
    from intermodal.io import read_image

    folder = OUT / "dicom_inputs"
    shutil.rmtree(folder, ignore_errors=True)
    write_series(ct, folder / "ct", modality="CT", patient_id="MRIDIR")
    write_series(mr, folder / "mr", modality="MR", patient_id="MRIDIR")
    moving = read_image(folder / "mr")
    structures = folder / "mr_body.dcm"
    write_structure_set(
        structures, [(Roi(1, "Body", (255, 128, 0), interpreted_type="EXTERNAL"), mr_body)],
        image=moving, frame=read_series_info(folder / "mr"), description="MR Otsu outline",
        label="MR_BODY",
    )  # fmt: skip
    return {"ct": folder / "ct", "mr": folder / "mr", "structures": structures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if not (args.data / CT_NAME).is_file() or not (args.data / MR_NAME).is_file():
        print(f"skipped: the real pair is not at {args.data} (../shared/data/mridir)")
        return 0
    plastimatch = shutil.which("plastimatch")
    if plastimatch is None:
        print("skipped: plastimatch is not installed (Debian package plastimatch)")
        return 0
    from real_pair import Evaluator

    from intermodal.dicom.structures import rasterise, read_structure_set

    OUT.mkdir(parents=True, exist_ok=True)
    ct = sitk.ReadImage(str(args.data / CT_NAME), sitk.sitkFloat32)
    mr = sitk.ReadImage(str(args.data / MR_NAME), sitk.sitkFloat32)
    evaluator = Evaluator(ct, mr)
    ct_body, mr_body = body_masks(ct, mr)
    spacing = ct.GetSpacing()[::-1]
    inputs = prepare_dicom(ct, mr, mr_body)
    intermodal = str(Path(sys.executable).parent / "intermodal")
    rows: dict[str, dict[str, Any]] = {}

    # intermodal on the NIfTI pair, as real_pair.py runs it
    nifti_out = OUT / "intermodal_nifti"
    command = [
        intermodal,
        "register",
        "--fixed",
        str(args.data / CT_NAME),
        "--moving",
        str(args.data / MR_NAME),
        "--out",
        str(nifti_out),
        "--overwrite",
        "--quiet",
    ]
    seconds, rss = run_measured(command, OUT / "intermodal_nifti.log")
    report = json.loads((nifti_out / "report.json").read_text())
    transform = sitk.ReadTransform(str(nifti_out / "transform.h5"))
    rows["intermodal register (NIfTI)"] = {
        "command": shlex.join(command), "seconds": round(seconds, 2),
        "peak_rss_mib": round(rss, 1), "nmi": round(evaluator.nmi(evaluator.warp(transform)), 4),
        "folding": report["jacobian"]["nonpositive_fraction"],
    }  # fmt: skip

    # intermodal on the DICOM pair, with DICOM out and the body outline propagated
    dicom_out = OUT / "intermodal_dicom"
    command = [intermodal, "register", "--fixed", str(inputs["ct"]), "--moving",
               str(inputs["mr"]), "--out", str(dicom_out), "--overwrite", "--quiet", "--dicom",
               "--structures", str(inputs["structures"])]  # fmt: skip
    seconds, rss = run_measured(command, OUT / "intermodal_dicom.log")
    report = json.loads((dicom_out / "report.json").read_text())
    transform = sitk.ReadTransform(str(dicom_out / "transform.h5"))
    (written,) = sorted((dicom_out / "dicom").glob("structures_*_on_CT.dcm"))
    ours = rasterise(read_structure_set(written).rois[0], ct, written)
    rows["intermodal register --dicom --structures"] = {
        "command": shlex.join(command), "seconds": round(seconds, 2),
        "peak_rss_mib": round(rss, 1), "nmi": round(evaluator.nmi(evaluator.warp(transform)), 4),
        "folding": report["jacobian"]["nonpositive_fraction"],
        "body_vs_ct_outline": agreement(ct_body, ours, spacing),
    }  # fmt: skip

    # plastimatch: B-spline MI registration, then the RT structure warp, per configuration
    for number, (name, stages) in enumerate(plastimatch_configs().items()):
        work = OUT / f"plastimatch_{number}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        command_file = work / "register.txt"
        command_file.write_text(
            f"[GLOBAL]\nfixed={args.data / CT_NAME}\nmoving={args.data / MR_NAME}\n"
            f"vf_out={work / 'vf.nrrd'}\nimg_out={work / 'warped.nrrd'}\n\n{stages}"
        )
        command = [plastimatch, "register", str(command_file)]
        seconds, rss = run_measured(command, work / "register.log")
        field = sitk.ReadImage(str(work / "vf.nrrd"), sitk.sitkVectorFloat64)
        plastimatch_folding = folding(field)
        transform = sitk.DisplacementFieldTransform(sitk.Image(field))
        warp = [plastimatch, "warp", "--input", str(inputs["structures"]), "--xf",
                str(work / "vf.nrrd"), "--fixed", str(args.data / CT_NAME), "--output-prefix",
                str(work / "masks"), "--prefix-format", "nrrd"]  # fmt: skip
        warp_seconds, warp_rss = run_measured(warp, work / "warp.log")
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "masks" / "Body.nrrd"))) > 0
        rows[name] = {
            "command": f"{shlex.join(command)}; {shlex.join(warp)}",
            "stages": stages, "seconds": round(seconds, 2),
            "warp_seconds": round(warp_seconds, 2), "peak_rss_mib": round(max(rss, warp_rss), 1),
            "nmi": round(evaluator.nmi(evaluator.warp(transform)), 4),
            "folding": plastimatch_folding,
            "body_vs_ct_outline": agreement(ct_body, theirs, spacing),
            "body_vs_intermodal": agreement(ours, theirs, spacing),
        }  # fmt: skip
    record = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min_at_each_run": LOADS,
        },  # fmt: skip
        "plastimatch": subprocess.run(
            [plastimatch, "--version"], capture_output=True, text=True
        ).stdout.strip(),  # fmt: skip
        "nmi_before": round(evaluator.nmi(evaluator.warp(None)), 4),
        "outline": {
            "ct": f"CT > {CT_BODY_HU:g} HU",
            "mr": "MR above its Otsu threshold",
            "both": "largest connected part, holes filled",
        },  # fmt: skip
        "rows": rows,
    }
    MEASURED.parent.mkdir(parents=True, exist_ok=True)
    MEASURED.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
