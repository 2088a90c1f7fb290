"""What the known-motion score can show: the same known motions, scored three more ways.

The known-motion set scores a method against the known motion composed with the method's own
result on the unmoved pair (docs/evaluation.md). This script separates what goes into that
error, on the *tuning* split (nothing here is chosen on the held-out one):

1. **the set's score**: the real CT fixed, the real MR moved by the known rigid + smooth motion;
2. **MR onto MR**: the unmoved MR fixed, the same moved MR moving. The truth is the known
   motion itself, so this shows whether the refinement can recover it where the similarity of
   the two images is strong (one modality);
3. **the rigid part alone**: the MR moved by the known rigid motion only, no deformation. An
   ideal method returns its reference moved rigidly, so the error is how much the result
   depends on where it starts;
4. **seed to seed**: the unmoved pair registered with seeds 0 and 1 (the refinement samples
   its voxels at random), the median distance of the two mappings over the CT body;
5. **mirrored storage**: the unmoved pair registered with the MR stored mirrored along x (the
   same voxels in the same places, read in the other order): an ideal method returns the same
   mapping, so the distance shows how much rounding alone moves a result, for the initial
   alignment and for the whole registration.

Usage::

    .venv/bin/python tools/known_motion_check.py --cases 3

Needs the real pair in ../shared/data/mridir.
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk
import torch

from intermodal.data.realistic import (
    BODY_HU,
    expected_mapping,
    load_real_pair,
    make_case,
)
from intermodal.registration import Settings, register


def displacement_field(transform: sitk.Transform, grid: sitk.Image) -> sitk.Image:
    """The mapping ``p -> transform(p)`` as a displacement image (mm) on ``grid``."""
    return sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(), grid.GetSpacing(),
        grid.GetDirection(),
    )  # fmt: skip


def mapping(transform: sitk.Transform, grid: sitk.Image) -> np.ndarray:
    """The mapping ``p -> transform(p)`` as displacements (mm) on ``grid``, ``(*shape, ndim)``."""
    return sitk.GetArrayFromImage(displacement_field(transform, grid))


def registered(fixed: sitk.Image, moving: sitk.Image, seed: int = 0) -> sitk.Transform:
    """The default registration's fixed -> moving mapping, as a dense displacement transform."""
    result = register(fixed, moving, Settings(seed=seed))
    return sitk.DisplacementFieldTransform(displacement_field(result.transform, fixed))


def median_distance(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.median(np.linalg.norm(a - b, axis=-1)[mask]))


def mirrored(image: sitk.Image) -> sitk.Image:
    """``image`` stored mirrored along its first index axis: every voxel keeps its value and its
    physical position (ITK's DICOM reorientation to the opposite first direction)."""
    orientation = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(
        image.GetDirection()
    )
    opposite = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}
    return sitk.DICOMOrient(image, opposite[orientation[0]] + orientation[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="tuning cases (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ct, mr = load_real_pair()
    body = sitk.GetArrayFromImage(ct) > BODY_HU
    mr_body = sitk.GetArrayFromImage(sitk.OtsuThreshold(mr, 0, 1)) > 0  # the MR's phantom
    reference = registered(ct, mr)
    other_seed = registered(ct, mr, seed=1)
    print(
        "seed to seed on the unmoved pair: "
        f"{median_distance(mapping(reference, ct), mapping(other_seed, ct), body):.2f} mm"
    )
    plain = register(ct, mr, Settings())
    flipped = register(ct, mirrored(mr), Settings())
    initial = median_distance(mapping(plain.affine, ct), mapping(flipped.affine, ct), body)
    whole = median_distance(mapping(plain.transform, ct), mapping(flipped.transform, ct), body)
    print(
        f"the MR stored mirrored: the initial alignment moves {initial:.2f} mm, "
        f"the whole registration {whole:.2f} mm",
        flush=True,
    )
    for index in range(args.cases):
        case = make_case("real_motion", "tuning", index)
        # the set's score
        found = mapping(registered(case.fixed, case.moving), ct)
        score = median_distance(found, mapping(expected_mapping(case, reference), ct), body)
        # MR onto MR: the truth is the known motion itself
        mono = mapping(registered(mr, case.moving), mr)
        mono_error = median_distance(mono, mapping(case.motion_inverse, mr), mr_body)
        # the rigid part alone: the motion is rigid(q + u(q)), its inverse u^-1 after rigid^-1
        rigid = case.motion.GetNthTransform(0)
        rigid_inverse = case.motion_inverse.GetNthTransform(1)
        moved = sitk.Resample(mr, mr, rigid, sitk.sitkLinear, 0.0, mr.GetPixelID())
        expected = sitk.CompositeTransform(3)
        expected.AddTransform(rigid_inverse)
        expected.AddTransform(reference)
        rigid_error = median_distance(
            mapping(registered(ct, moved), ct), mapping(expected, ct), body
        )
        print(
            f"{case.name} ({case.params['rotation_deg']:.0f} deg, "
            f"{case.params['translation_mm']:.0f} mm): the set's score {score:.2f} mm | "
            f"MR onto MR {mono_error:.2f} mm | the rigid part alone {rigid_error:.2f} mm",
            flush=True,
        )


if __name__ == "__main__":
    main()
