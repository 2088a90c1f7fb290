"""Training throughput: intermodal's network against VoxelMorph's VxmPairwise, in one run.

One training step is the same for both: the network predicts a field for an inter-modality
pair, subject ``i``'s CT and MR are warped by it, and the ``intra`` loss (LNCC on CT, LNCC on
MR, plus diffusion smoothness) is minimised by one Adam step. Only the network differs:

- intermodal: ``RegistrationModel`` as the bundled models configure it (velocity at half
  resolution, scaling and squaring there, then resized);
- VoxelMorph: ``voxelmorph.nn.models.VxmPairwise`` (PyPI ``voxelmorph``) with its defaults
  (``nb_features=(16,) * 5``, 5 integration steps at full resolution), warping with its own
  ``SpatialTransformer``.

The inputs are random tensors of the given size and batch (throughput does not depend on the
content). The two are timed in alternating blocks, so that a change of load on the machine
hits both alike; the figure is the median over blocks of steps per second, and the ratio is
taken block by block.

Usage::

    .venv/bin/python benchmarks/train_throughput.py            # both presets below
    .venv/bin/python benchmarks/train_throughput.py --preset 2d --blocks 5

(Re)writes the section between ``<!-- throughput:begin -->`` and ``<!-- throughput:end -->``
of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from results_file import write_section  # benchmarks/ is on sys.path when run as a script

from intermodal.losses import diffusion, lncc
from intermodal.networks import RegistrationModel
from intermodal.spatial import warp

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- throughput:begin -->", "<!-- throughput:end -->"
# (spatial shape in array order, batch): the bundled models' training grids and batches
PRESETS = {"2d": ((160, 160), 4), "3d": ((64, 64, 64), 1)}


class Intermodal(torch.nn.Module):
    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.model = RegistrationModel(ndim)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor):
        displacement = self.model(fixed, moving).displacement
        return displacement, lambda image: warp(image, displacement)


class VoxelMorph(torch.nn.Module):
    def __init__(self, ndim: int) -> None:
        super().__init__()
        from voxelmorph.nn.models import VxmPairwise
        from voxelmorph.nn.modules import SpatialTransformer

        self.model = VxmPairwise(ndim, 1, 1)
        self.transformer = SpatialTransformer()

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor):
        displacement = self.model(moving, fixed)
        return displacement, lambda image: self.transformer(image, displacement)


def make_step(network: torch.nn.Module, shape: tuple[int, ...], batch: int):
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand((batch, 1, *shape), generator=generator) for _ in range(4)]
    moving_ct, moving_mr, fixed_ct, fixed_mr = images
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)

    def step() -> None:
        displacement, apply = network(fixed_ct, moving_mr)
        loss = (
            lncc(fixed_ct, apply(moving_ct), 9)
            + lncc(fixed_mr, apply(moving_mr), 9)
            + diffusion(displacement)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(preset: str, blocks: int, steps: int) -> dict:
    shape, batch = PRESETS[preset]
    ndim = len(shape)
    torch.manual_seed(0)
    runners = {
        "intermodal": make_step(Intermodal(ndim), shape, batch),
        "voxelmorph": make_step(VoxelMorph(ndim), shape, batch),
    }
    for run in runners.values():  # warm-up: allocator, first-call overheads
        run()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(blocks):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            rates[name].append(steps / (time.perf_counter() - start))
    ratios = [a / b for a, b in zip(rates["intermodal"], rates["voxelmorph"])]
    params = {
        "intermodal": sum(p.numel() for p in Intermodal(ndim).parameters()),
        "voxelmorph": sum(p.numel() for p in VoxelMorph(ndim).parameters()),
    }
    return {
        "preset": preset,
        "shape": shape,
        "batch": batch,
        "median": {name: statistics.median(r) for name, r in rates.items()},
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "params": params,
    }


def render(results: list[dict], args: argparse.Namespace) -> str:
    import voxelmorph

    presets = " ".join(f"--preset {r['preset']}" for r in results)
    lines = [
        BEGIN,
        "## Training throughput against VoxelMorph (CPU)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M}Z; command: "
        f"`.venv/bin/python benchmarks/train_throughput.py {presets} --blocks {args.blocks} "
        f"--steps {args.steps}`",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, voxelmorph "
        f"{getattr(voxelmorph, '__version__', '?')}",
        "- one step: forward on (CT_j, MR_i), warp CT_i and MR_i, LNCC + LNCC + diffusion, "
        "backward, Adam; the two networks alternate in blocks of "
        f"{args.steps} steps, {args.blocks} blocks each; medians over blocks",
        "",
        "| input (array order) | batch | intermodal steps/s | VxmPairwise steps/s "
        "| ratio (block by block: median, range) | parameters intermodal / VxmPairwise |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        low, high = r["ratio_range"]
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {r['batch']} "
            f"| {r['median']['intermodal']:.2f} | {r['median']['voxelmorph']:.2f} "
            f"| {r['ratio']:.2f}x ({low:.2f}..{high:.2f}) "
            f"| {r['params']['intermodal']:,} / {r['params']['voxelmorph']:,} |"
        )
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS))
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    results = [measure(p, args.blocks, args.steps) for p in args.preset or sorted(PRESETS)]
    section = render(results, args)
    write_section(args.results, BEGIN, END, section)
    print(section)


if __name__ == "__main__":
    main()
