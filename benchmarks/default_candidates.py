"""The choice of register's default: four candidates on the realistic sets' TUNING split.

Written down before they ran (issue 23: no sweeps; a handful of candidates with a reason):

- C0: the previous structure, a 4/2/1 pyramid with every voxel at every level, 90 steps;
- C1: MIND-SSC taken at the working spacing and block-averaged (ConvexAdam's habit), a 4/2
  pyramid (8 and 4 mm in 3D), 80 steps at a quarter of the voxels: the finest level, 89 % of
  the time before, is left out;
- C2: C1 with the volume-change penalty 0.4 and half the diffusion weight (the former smooth
  preset, which scored +0.03 Dice over the default on unseen data in the issue's review);
- C3: C2 with the velocity on an 8 mm grid instead of 4 mm (fewer unknowns, smoother).

Added after C3 was chosen and the real pair's NMI fell short of ANTs' (a second, separate
decision by the same rule against C3, declared before it ran):

- C4: C3 with a mutual-information term (weight 1 nat) beside MIND: MI is what aligns the
  intensities of the real MR to the real CT globally, where MIND sees only local structure.

Rule: the highest mean Dice on the rendered tuning cases among the candidates whose mean
known-motion error (real_motion tuning cases) is within 0.5 mm of the best; nearer than 0.005
Dice, the faster. Nothing here ever reads the held-out split.

Usage: ``python benchmarks/default_candidates.py [NAMES] [CASES]`` writes
``benchmarks/measured/default_candidates.json`` and prints one line a run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realistic as bench  # noqa: E402

from intermodal.data import realistic  # noqa: E402
from intermodal.registration import Settings, register  # noqa: E402

CANDIDATES = {
    "C0_pyr421_full": dict(pyramid=(4, 2, 1), refine=90, sampling=1.0, velocity_stride=2,
                           volume_penalty=0.0, smoothness=1.0),
    "C1_pyr42_s025": dict(pyramid=(4, 2), refine=80, sampling=0.25, velocity_stride=2,
                          volume_penalty=0.0, smoothness=1.0),
    "C2_C1_smooth": dict(pyramid=(4, 2), refine=80, sampling=0.25, velocity_stride=2,
                         volume_penalty=0.4, smoothness=0.5),
    "C3_C2_vel8mm": dict(pyramid=(4, 2), refine=80, sampling=0.25, velocity_stride=4,
                         volume_penalty=0.4, smoothness=0.5),
    "C4_C3_mi": dict(pyramid=(4, 2), refine=80, sampling=0.25, velocity_stride=4,
                     volume_penalty=0.4, smoothness=0.5, mi_weight=1.0),
}  # fmt: skip
OUT = Path(__file__).resolve().parent / "measured" / "default_candidates.json"


def main() -> None:
    torch.set_num_threads(1)
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(CANDIDATES)
    cases = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    record = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name in names:
        rows, references = [], {}
        for set_name in ("rendered", "real_motion"):
            for index in range(cases):
                case = realistic.make_case(set_name, "tuning", index)
                reference = None
                if case.reference_key is not None:
                    if case.reference_key not in references:
                        fixed, moving = realistic.reference_pair(case.reference_key)
                        result = register(fixed, moving, Settings(**CANDIDATES[name]))
                        references[case.reference_key] = bench.dense_field(result.transform, fixed)
                    reference = references[case.reference_key]
                start = time.process_time()
                result = register(case.fixed, case.moving, Settings(**CANDIDATES[name]))
                cpu = time.process_time() - start
                scores = bench.score_case(
                    case, bench.dense_field(result.transform, case.fixed), reference
                )
                dice = scores.get("dice")
                row = {
                    "set": set_name, "case": case.name, "cpu_s": cpu,
                    "median_mm": scores["mapping"]["median_mm"],
                    "sdlogj": scores["jacobian"]["sdlogj"],
                    "dice": None if dice is None else sum(dice.values()) / len(dice),
                }  # fmt: skip
                rows.append(row)
                print(name, row, flush=True)
        record[name] = rows
        OUT.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
