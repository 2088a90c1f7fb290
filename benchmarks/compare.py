"""Side by side: intermodal against VoxelMorph, ANTs, elastix and SimpleITK (issue 4).

Every method registers the same pairs on the same machine in the same run, interleaved (each
pair runs the methods in a rotated order, so a change in the machine's load hits them alike),
all on one CPU thread each (``OMP_NUM_THREADS=1``, ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``,
SimpleITK's global default, torch's ``set_num_threads(1)``, elastix ``number_of_threads=1``).
The methods are described in ``benchmarks/peers.py``. Parts:

- ``heldout2d`` / ``heldout3d``: synthetic pelvis pairs no model has seen (dataset seed 5, the
  MR of subject 2k+1 onto the CT of subject 2k). Dice per organ of the moving MR's labels
  warped (nearest neighbour) onto the fixed CT's grid, HD95 (mm) averaged over organs, SDlogJ
  and the share of non-positive Jacobian determinants of each method's deformable part on the
  fixed grid, seconds per pair. VoxelMorph in 2D is trained first when its weights are
  missing (``train_voxelmorph`` on ``configs/pelvis2d.toml``'s data, steps, batch and lr); in
  3D its weights are read from ``benchmarks/weights/`` (trained on a GPU by
  ``tools/train_gpu.py``).
- ``real``: the MRI-DIR pork phantom (``../shared/data/mridir``), one subprocess per method
  for its peak RSS; NMI on the CT grid as ``benchmarks/real_pair.py`` scores it.
- ``scaling``: time and peak RSS against volume size for the two networks' forward passes,
  the whole ``register`` and ANTs SyNRA, each measurement in a fresh subprocess.
- ``memory``: ``register`` on a synthetic 512x512x400 CT with a 512x512x100 MR.

Each part stores its measurements in ``benchmarks/measured/compare/PART.json`` (committed, so
``--render-only`` works on any clone; transforms, logs and the QC figures go to the ignored
``benchmarks/out/compare``); every run re-renders the sections of ``benchmarks/RESULTS.md``
between ``<!-- compare_*:begin -->`` and ``<!-- compare_*:end -->`` from the stored parts, so
the parts can be run one at a time. Each section names the command that produced its numbers.

Usage::

    nice -n 10 .venv/bin/python benchmarks/compare.py                     # every part
    nice -n 10 .venv/bin/python benchmarks/compare.py --parts heldout2d --pairs-2d 60
"""

from __future__ import annotations

import os

# One thread everywhere, before torch, ITK or ANTs is imported (a worker inherits these).
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
import real_pair  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "compare"  # transforms, logs and the QC figure (ignored)
# each part's measured rows (JSON, committed), so that --render-only rebuilds RESULTS.md
# anywhere, and a part rerun alone is rendered beside the others' stored runs
MEASURED = REPO / "benchmarks" / "measured" / "compare"
SEEDS = REPO / "benchmarks" / "measured" / "ants_seeds"  # benchmarks/ants_seeds.py's runs
RESULTS = REPO / "benchmarks" / "RESULTS.md"
DATA = REPO.parent / "shared" / "data" / "mridir"
PARTS = ("heldout2d", "heldout3d", "real", "scaling", "memory")
ORGANS = {"bone": 2, "bladder": 3, "prostate": 4, "rectum": 5}
HELDOUT_SEED = 5  # dataset seed no bundled model was trained on (they use seed 1)
TUNING_SEED = 6  # dataset seed for choosing settings, so that the held-out pairs stay unseen
CONFIG_2D = REPO / "configs" / "pelvis2d.toml"
VXM_3D = REPO / "benchmarks" / "weights"  # VxmPairwise 3D, trained on a GPU (tools/train_gpu.py)
GIB = 1024.0
UNRECORDED_LOAD = "its other load not recorded"  # without --load-note

# method key -> row label
LABELS = {
    "affine": "affine only (intermodal's Mattes MI init)",
    "im_model": "intermodal: bundled model alone (`refine=0`)",
    "im_fast": "intermodal: bundled model alone after a moments init (`init=moments, refine=0`)",
    "im_default": "intermodal: model + refine (defaults)",
    "im_refine": "intermodal: refinement alone (`model=None`)",
    "im_smooth": "intermodal: model + refine, smoother preset (`--preset smooth`: 2D "
    "`volume_penalty=0.6, smoothness=0.5`, 3D `volume_penalty=0.4, smoothness=0.5`)",
    "im_sampled": "intermodal: model + refine, smoother preset, MIND at a tenth of the voxels "
    "each step (`sampling=0.1`)",
    "im_preset_fast": "intermodal: fast preset (`--preset fast`: 3D refinement alone on a 4 mm "
    "grid after a moments init, 18 steps, MIND at a tenth of the voxels; 2D the model after a "
    "moments init, then 6 steps)",
    "im_fast_mi": "intermodal: fast preset, mutual information instead of MIND "
    "(`--preset fast --similarity mi`)",
    "im_fast_mi_2mm": "intermodal: fast preset, mutual information on the 2 mm grid, as many "
    "samples per step (`--preset fast --similarity mi --spacing 2 --sampling 0.025`)",
    "im_fast_mi_3mm": "intermodal: fast preset, mutual information on a 3 mm grid "
    "(`--preset fast --similarity mi --spacing 3`)",
    "im_fast_mi_3mm_s05": "intermodal: fast preset, mutual information on a 3 mm grid, half the "
    "diffusion weight (`--preset fast --similarity mi --spacing 3 --smoothness 0.5`)",
    "im_fast_mi_3mm_levels": "intermodal: fast preset, mutual information on a 3 mm grid, "
    "6/3/15 steps on the 4x/2x/1x levels, 2 squarings (`--preset fast --similarity mi "
    "--spacing 3 --level-steps 6,3,15 --integration-steps 2`)",
    "vxm_intra": "VoxelMorph VxmPairwise, intra loss (LNCC CT + LNCC MR)",
    "vxm_mi": "VoxelMorph VxmPairwise, MI loss",
    "ants": "ANTs SyNRA, Mattes MI",
    "elastix": "elastix affine + B-spline, Mattes MI",
    "sitk": "SimpleITK affine + B-spline, Mattes MI",
}
# the fast preset with mutual information, the metric that ANTs optimises and the real pair's
# NMI scores; the rows below add to it
_FAST_MI = {"preset": "fast", "device": "cpu", "similarity": "mi"}
# Settings of the intermodal method keys that are the same in 2D and 3D (im_smooth and
# im_sampled depend on the dimension: see intermodal_settings).
INTERMODAL_SETTINGS = {
    "im_model": {"model": "auto", "refine": 0, "device": "cpu"},
    "im_fast": {"model": "auto", "refine": 0, "init": "moments", "device": "cpu"},
    "im_default": {"model": "auto", "device": "cpu"},
    "im_refine": {"model": None, "device": "cpu"},
    # through preset_settings, as `--preset fast` runs it
    "im_preset_fast": {"preset": "fast", "device": "cpu"},
    # On the preset's 4 mm grid, and on the default 2 mm grid with the preset's number of
    # samples per step (a tenth of the 4 mm grid's voxels is a fortieth of the 2 mm grid's).
    # Fixed from those two rules, not tuned on the real pair.
    "im_fast_mi": dict(_FAST_MI),
    "im_fast_mi_2mm": {**_FAST_MI, "spacing": 2.0, "sampling": 0.025},
    # The row that the rule of RESULTS.md's tuning_3d_mi_nmi picked on the tuning pairs in its
    # run at 72b5bbf (the highest NMI within a tenth of ANTs' time there), before any run of it
    # on the real pair.
    "im_fast_mi_3mm": {**_FAST_MI, "spacing": 3.0},
    # The row that the same rule picked in tuning_3d_mi_smooth at 82cedfe, before any run of it
    # on the real pair.
    "im_fast_mi_3mm_s05": {**_FAST_MI, "spacing": 3.0, "smoothness": 0.5},
    # The row that the same rule picked in tuning_3d_mi_levels at 9c47b73, before any run of it
    # on the real pair.
    "im_fast_mi_3mm_levels": {
        **_FAST_MI,
        "spacing": 3.0,
        "level_steps": (6, 3, 15),
        "integration_steps": 2,
    },
}
SMOOTH_SETTINGS = peers.FORMER_PRESETS["smooth"]


def uses_bundled(method: str, dim: int) -> bool:
    """Whether an intermodal method key runs the bundled model (``model="auto"``)."""
    settings = intermodal_settings(method, dim)
    return settings is not None and peers.resolve_settings(settings, dim).model == "auto"


def intermodal_settings(method: str, dim: int) -> dict[str, Any] | None:
    """``Settings`` keywords of an intermodal method key, or ``None`` for a peer."""
    if method == "im_smooth":
        return {"model": "auto", "device": "cpu", **SMOOTH_SETTINGS[dim]}
    if method == "im_sampled":
        return {"model": "auto", "device": "cpu", **SMOOTH_SETTINGS[dim], "sampling": 0.1}
    return INTERMODAL_SETTINGS.get(method)


# Issue 4's targets
DICE_MARGIN = 0.05
SDLOGJ_MAX = 0.10
FOLDING_MAX = 1e-4  # 0.01 %
FORWARD_RATIO_MAX = 0.25
TIME_RATIO_MAX = 0.1
MEMORY_MAX_GIB = 4.0
GPU_NETWORK_MAX_S = 0.25  # network forward at 192x160x192 on a GPU
FORWARD_SHAPE = (160, 192, 160)  # array order (z, y, x)


# --------------------------------------------------------------------------- helpers


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def command_line() -> str:
    script = f"benchmarks/{Path(sys.argv[0]).name}"
    return shlex.join(["nice", "-n", "10", ".venv/bin/python", script, *sys.argv[1:]])


def save_part(name: str, payload: dict[str, Any]) -> None:
    MEASURED.mkdir(parents=True, exist_ok=True)
    (MEASURED / f"{name}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")


def load_part(name: str) -> dict[str, Any] | None:
    path = MEASURED / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def versions() -> dict[str, str]:
    return real_pair.versions(
        ("intermodal", "torch", "voxelmorph", "antspyx", "itk-elastix", "SimpleITK")
    )


def run_measured(command: list[str], log: Path) -> tuple[float, float, int]:
    """Run ``command``; wall s, peak RSS MiB (the kernel's ``ru_maxrss`` via ``wait4``), rc."""
    with log.open("w") as stream:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    return seconds, usage.ru_maxrss / 1024.0, os.waitstatus_to_exitcode(status)


def peak_rss_mib() -> float:
    """This process's peak resident set (MiB): ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss`` of the child through ``wait4``: Linux carries a process's maxrss across
    ``execve``, so a child started from a parent that had grown to 750 MiB reports at least
    750 MiB whatever it does. ``VmHWM`` belongs to the new address space and starts afresh.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def worker_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]


def jacobian_scores(jacobian_det: np.ndarray) -> dict[str, float]:
    from intermodal.metrics import nonpositive_fraction, sdlogj

    return {"sdlogj": sdlogj(jacobian_det), "folding": nonpositive_fraction(jacobian_det)}


def label_scores(fixed_labels: sitk.Image, moving_labels: sitk.Image, transform) -> dict:
    """Dice and HD95 (mm) per organ of the moving labels warped onto the fixed labels' grid."""
    from intermodal.metrics import dice, hd95

    warped = sitk.Resample(moving_labels, fixed_labels, transform, sitk.sitkNearestNeighbor, 0)
    a = sitk.GetArrayFromImage(fixed_labels)
    b = sitk.GetArrayFromImage(warped)
    spacing = fixed_labels.GetSpacing()[::-1]
    scores = {}
    for organ, value in ORGANS.items():
        scores[f"dice_{organ}"] = dice(a == value, b == value)
        scores[f"hd95_{organ}"] = hd95(a == value, b == value, spacing)
    return scores


def heldout_pair(dim: int, k: int, dataset_seed: int = HELDOUT_SEED):
    """Pair ``k``: (fixed subject 2k, moving subject 2k+1) of a dataset seed (the held-out 5)."""
    from intermodal.data.synth import SEED_STRIDE, generate_subject

    fixed = generate_subject(dataset_seed * SEED_STRIDE + 2 * k, dim=dim)
    moving = generate_subject(dataset_seed * SEED_STRIDE + 2 * k + 1, dim=dim)
    return fixed, moving


# the last pair's evaluator, with the two images it was built from: every method of a pair is
# scored against the same scaled images and mask, so they are built once per pair
_last_evaluator: list[Any] = []


def nmi_score(fixed_ct: sitk.Image, moving_mr: sitk.Image, transform) -> float:
    """NMI of the MR warped onto the CT grid, scored by ``real_pair.Evaluator`` as the real
    pair is (32 bins, inside the CT's data)."""
    from real_pair import Evaluator

    if not (_last_evaluator and _last_evaluator[0] is fixed_ct and _last_evaluator[1] is moving_mr):
        _last_evaluator[:] = [fixed_ct, moving_mr, Evaluator(fixed_ct, moving_mr)]
    evaluator = _last_evaluator[2]
    return evaluator.nmi(evaluator.warp(transform))


def pair_scores(fixed, moving, result: peers.PeerResult) -> dict[str, float]:
    """Label, Jacobian and NMI scores of one method's result on a synthetic pair."""
    return {
        "seconds": result.seconds,
        **label_scores(fixed.ct_labels, moving.mr_labels, result.transform),
        **jacobian_scores(result.jacobian_det),
        "nmi": nmi_score(fixed.ct, moving.mr, result.transform),
    }


def has_bundled(dim: int) -> bool:
    from intermodal.errors import IntermodalError
    from intermodal.models import resolve_model

    try:
        resolve_model("auto", dim)
    except IntermodalError:
        return False
    return True


# --------------------------------------------------------------------------- VoxelMorph


def voxelmorph_models(dim: int, retrain: bool) -> tuple[dict[str, tuple[Any, dict]], str | None]:
    """The two trained VxmPairwise models of ``dim``, or why there are none.

    2D: trained here first when missing (``configs/pelvis2d.toml``'s steps, about 40 min
    each on one thread). 3D: the weights in ``benchmarks/weights/vxm_3d_*``, trained on a GPU
    by ``tools/train_gpu.py`` (hours on this CPU); they are read, never retrained here.
    """
    from intermodal.training.config import load_config

    models = {}
    for loss in ("intra", "mi"):
        if dim == 3:
            folder = VXM_3D / f"vxm_3d_{loss}"
            if not (folder / "model.safetensors").is_file():
                return {}, f"no 3D weights in {folder.relative_to(REPO)} (tools/train_gpu.py)"
            models[f"vxm_{loss}"] = peers.load_voxelmorph(folder)
            continue
        steps = load_config(CONFIG_2D).train.steps
        folder = OUT / f"vxm_2d_{loss}"
        card = folder / "card.json"
        if retrain or not card.is_file() or json.loads(card.read_text())["steps"] != steps:
            print(f"training VoxelMorph ({loss}) for {steps} steps ...", flush=True)
            peers.train_voxelmorph(CONFIG_2D, loss, folder)
        models[f"vxm_{loss}"] = peers.load_voxelmorph(folder)
    return models, None


# --------------------------------------------------------------------------- held-out pairs


def heldout(
    dim: int, pairs: int, methods: list[str], retrain: bool, load_note: str | None = None
) -> dict[str, Any]:
    """Register every pair with every method, interleaved; scores per pair and method."""
    from intermodal.classical import initial_alignment

    vxm, vxm_missing = {}, None
    if any(m.startswith("vxm") for m in methods):
        vxm, vxm_missing = voxelmorph_models(dim, retrain)
    vxm_spacing = None
    if vxm:
        vxm_spacing = next(iter(vxm.values()))[1]["spacing"]
    skipped: dict[str, str] = {}
    if not has_bundled(dim):
        for key in methods:
            if uses_bundled(key, dim):
                skipped[key] = f"no bundled {dim}D model is installed (pelvis{dim}d)"
    if vxm_missing:
        for key in ("vxm_intra", "vxm_mi"):
            if key in methods:
                skipped[key] = vxm_missing
    active = [m for m in methods if m not in skipped]

    def run(method: str, fixed, moving) -> peers.PeerResult:
        if method == "affine":
            start = time.perf_counter()
            fixed_n, moving_n = peers.normalised(fixed.ct, moving.mr)
            affine = initial_alignment(fixed_n, moving_n, "affine")
            seconds = time.perf_counter() - start
            return peers.PeerResult(affine, np.ones(1), seconds, {})
        settings = intermodal_settings(method, dim)
        if settings is not None:
            return peers.intermodal_register(fixed.ct, moving.mr, settings)
        if method in vxm:
            return peers.voxelmorph_register(fixed.ct, moving.mr, vxm[method][0], vxm_spacing)
        if method == "ants":
            return peers.ants_register(fixed.ct, moving.mr)
        if method == "elastix":
            return peers.elastix_register(fixed.ct, moving.mr)
        if method == "sitk":
            return peers.sitk_register(fixed.ct, moving.mr)
        raise ValueError(f"unknown method {method!r}")

    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in active}
    infos: dict[str, Any] = {}
    for k in range(pairs):
        fixed, moving = heldout_pair(dim, k)
        order = active[k % len(active) :] + active[: k % len(active)]
        for method in order:
            try:
                result = run(method, fixed, moving)
            except Exception as error:  # a peer failing on a pair is a result, not a crash
                traceback.print_exc()
                rows[method].append({"pair": k, "error": f"{type(error).__name__}: {error}"})
                continue
            entry = {"pair": k, **pair_scores(fixed, moving, result)}
            rows[method].append(entry)
            infos.setdefault(method, result.info)
            print(
                f"{dim}D pair {k + 1}/{pairs} {method}: {result.seconds:.1f} s, mean Dice "
                f"{mean_dice(entry):.3f}",
                flush=True,
            )
        save_part(
            f"heldout{dim}d",
            {"dim": dim, "pairs_done": k + 1, "rows": rows, "skipped": skipped, "info": infos},
        )
    payload = {
        "dim": dim,
        "load_note": load_note,
        "pairs": pairs,
        "pairs_done": pairs,
        "rows": rows,
        "skipped": skipped,
        "info": infos,
        "date": now(),
        "command": command_line(),
        "vxm_cards": {
            k: {x: y for x, y in c.items() if x != "history"} for k, (_, c) in vxm.items()
        },
    }
    save_part(f"heldout{dim}d", payload)
    return payload


def mean_dice(entry: dict[str, Any]) -> float:
    """Mean organ Dice of one pair's scores."""
    return float(np.mean([entry[f"dice_{organ}"] for organ in ORGANS]))


def short_label(method: str) -> str:
    """A method's row label without its parenthesised details."""
    return LABELS[method].split(" (")[0]


def summarise(entries: list[dict[str, Any]]) -> dict[str, float]:
    good = [e for e in entries if "error" not in e]
    if not good:
        return {}

    def mean(key: str) -> float:
        return float(np.nanmean([e[key] for e in good]))

    out = {f"dice_{o}": mean(f"dice_{o}") for o in ORGANS}
    out["dice"] = float(np.mean([out[f"dice_{o}"] for o in ORGANS]))
    out["hd95"] = float(np.nanmean([mean(f"hd95_{o}") for o in ORGANS]))
    out["sdlogj"] = mean("sdlogj")
    out["folding"] = mean("folding")
    out["seconds"] = float(np.median([e["seconds"] for e in good]))
    out["n"] = len(good)
    out["failed"] = len(entries) - len(good)
    return out


# the first held-out pairs that benchmarks/regularisation.py's sweeps scored (sections
# regularisation_2d / _3d) when an earlier smoother preset was chosen on them (2D: 20; 3D: 3);
# the present preset was chosen on TUNING_SEED's pairs, but the pairs after these are the ones
# no setting was ever scored on
SWEPT_HELDOUT_PAIRS = {2: 20, 3: 3}


def _untuned_pairs_line(part: dict[str, Any]) -> list[str]:
    """The smoother preset against ANTs on the pairs its settings were not chosen on."""
    dim, n_tuned = part["dim"], SWEPT_HELDOUT_PAIRS[part["dim"]]
    rows = part["rows"]
    if "im_smooth" not in rows or "ants" not in rows:
        return []
    pairs = {e["pair"] for e in rows["im_smooth"] if "error" not in e and e["pair"] >= n_tuned}
    pairs &= {e["pair"] for e in rows["ants"] if "error" not in e}
    if not pairs:
        return [
            f"- the smoother preset's settings were chosen on all {dim}D pairs here "
            f"(benchmarks/regularisation.py, first {n_tuned} pairs): no untouched pair to check"
        ]
    parts = []
    for method in ("im_smooth", "im_default", "ants"):
        s = summarise([e for e in rows.get(method, []) if e["pair"] in pairs])
        if s:
            parts.append(f"{short_label(method)} {s['dice']:.3f} (SDlogJ {s['sdlogj']:.3f})")
    return [
        f"- earlier presets were swept on the first {n_tuned} pairs (the present one on the "
        f"tuning pairs); on the "
        f"{len(pairs)} pairs after them, mean Dice: " + "; ".join(parts),
        "",
    ]


def _vxm_line(dim: int, cards: dict[str, dict[str, Any]]) -> str:
    """How the VoxelMorph rows' networks were trained, from their cards."""
    card = next(iter(cards.values()))
    where = ", ".join(
        f"{c['loss']}: {c['wall_time_s'] / 60:.0f} min on "
        + (c.get("device") if c.get("device", "cpu") != "cpu" else "1 CPU thread")
        for c in cards.values()
    )
    ours = json.loads((REPO / "src" / "intermodal" / "models" / f"pelvis{dim}d.json").read_text())
    ours_train = ours["training"]["config"]["train"]
    return (
        f"- VoxelMorph: `VxmPairwise({dim}, 1, 1)` with its defaults ({card['parameters']:,} "
        "parameters: 5 levels of 16 features, 5 scaling-and-squaring steps at full size), "
        f"trained by `benchmarks/peers.py:train_voxelmorph` on `{card['config']}`'s data "
        f"({card['subjects']} training subjects, {'x'.join(map(str, card['shape']))} at "
        f"{card['spacing'][0]:g} mm) with our pair sampling, augmentation and losses: "
        f"{card['steps']} steps, batch {card['batch_size']}, Adam lr {card['lr']:g}, "
        f"direction {card['direction']}, smoothness {card['smoothness']:g} (our bundled "
        f"{dim}D model: {ours_train['steps']} steps, batch {ours_train['batch_size']}, lr "
        f"{ours_train['lr']:g}); {where}. At test time: our affine, then its field on its "
        f"{card['spacing'][0]:g} mm working grid, composed as intermodal composes its own"
    )


def render_heldout(part: dict[str, Any]) -> str:
    dim = part["dim"]
    name = f"compare_heldout{dim}d"
    lines = [
        f"<!-- {name}:begin -->",
        f"## Side by side, {dim}D synthetic pelvis, held out (issue 4)",
        "",
        f"- date: {part.get('date', '?')}; command: `{part.get('command', '?')}`",
        f"- {part['pairs_done']} inter-subject pairs: MR of subject 2k+1 onto CT of subject 2k of "
        f"`intermodal.data.synth.generate_subject({HELDOUT_SEED} * SEED_STRIDE + n, dim={dim})` "
        "(dataset seed 5, never used in training); methods interleaved pair by pair, every "
        "method on one CPU thread (torch, ITK, ANTs, elastix), on a 2-core machine "
        f"({part.get('load_note') or UNRECORDED_LOAD}): times are medians per "
        "pair and comparable only within this table",
        "- Dice and HD95: the moving MR's label map warped by each method's transform "
        "(nearest neighbour) onto the fixed CT's grid; HD95 averaged over the four organs. "
        "SDlogJ and non-positive J: the deformable part's Jacobian determinant on the fixed "
        "CT's grid, no mask (elastix: its whole transform, whose affine part has a constant "
        "positive determinant, which changes neither figure)",
        "",
        "| method | Dice bone | Dice bladder | Dice prostate | Dice rectum | mean Dice "
        "| HD95 mm | SDlogJ | non-positive J % | s per pair (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, entries in part["rows"].items():
        s = summarise(entries)
        if not s:
            lines.append(f"| {LABELS[method]} | failed on every pair | | | | | | | | |")
            continue
        sd = "-" if method == "affine" else f"{s['sdlogj']:.3f}"
        fold = "-" if method == "affine" else f"{100 * s['folding']:.4f}"
        failed = f" ({s['failed']} failed)" if s["failed"] else ""
        lines.append(
            f"| {LABELS[method]}{failed} | "
            + " | ".join(f"{s[f'dice_{o}']:.3f}" for o in ORGANS)
            + f" | **{s['dice']:.3f}** | {s['hd95']:.2f} | {sd} | {fold} | {s['seconds']:.2f} |"
        )
    for method, reason in part.get("skipped", {}).items():
        lines.append(f"| {LABELS[method]} | not run: {reason} | | | | | | | | |")
    lines.append("")
    lines.extend(_untuned_pairs_line(part))
    cards = part.get("vxm_cards") or {}
    if cards:
        lines.append(_vxm_line(dim, cards))
    info = part.get("info", {})
    if "im_default" in info or "im_refine" in info:
        lines.append(
            "- intermodal: `intermodal.registration.register(fixed_ct, moving_mr, "
            'Settings(...))` with the settings in the row names, `device="cpu"`; defaults '
            "otherwise (MIND-SSC refinement, 90 steps over a 4-2-1 pyramid)"
        )
    lines += [
        '- ANTs: `ants.registration(type_of_transform="SyNRA", aff_metric="mattes", '
        'syn_metric="mattes")` on the [0, 1]-scaled images, antspyx defaults otherwise; '
        'elastix: itk-elastix\'s default "affine" and "bspline" parameter maps unchanged '
        "(AdvancedMattesMutualInformation; the B-spline map with its default bending-energy "
        "penalty, 10 mm final grid); SimpleITK: `intermodal.classical.initial_alignment` + "
        "`bspline_registration` (40 mm mesh, Mattes MI, L-BFGS-B)",
        "",
        f"<!-- {name}:end -->",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- real pair


def real_worker(method: str, workdir: Path) -> dict[str, Any]:
    ct = sitk.ReadImage(str(DATA / "ct_2mm.nii.gz"), sitk.sitkFloat32)
    mr = sitk.ReadImage(str(DATA / "mr_t2_2mm.nii.gz"), sitk.sitkFloat32)
    settings = intermodal_settings(method, 3)
    if settings is not None:
        result = peers.intermodal_register(ct, mr, settings)
    elif method.startswith("vxm"):
        # the weights of the held-out 3D part, at their training spacing, as there
        network, card = voxelmorph_models(3, retrain=False)[0][method]
        result = peers.voxelmorph_register(ct, mr, network, card["spacing"])
    else:
        result = {"ants": peers.ants_register, "elastix": peers.elastix_register,
                  "sitk": peers.sitk_register}[method](ct, mr)  # fmt: skip
    sitk.WriteTransform(result.transform, str(workdir / "transform.h5"))
    return {"seconds": result.seconds, **jacobian_scores(result.jacobian_det), "info": result.info}


def real(methods: list[str], repeats: int = 1, load_note: str | None = None) -> dict[str, Any]:
    from real_pair import Evaluator

    if not (DATA / "ct_2mm.nii.gz").is_file():
        payload = {"skipped": f"the MRI-DIR pair is not at {DATA}", "date": now()}
        save_part("real", payload)
        return payload
    evaluator = Evaluator.from_folder(DATA)
    identity = evaluator.warp(None)
    rows: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    warped: dict[str, np.ndarray] = {"identity": identity}
    active = []
    vxm_missing = None
    if any(m.startswith("vxm") for m in methods):
        vxm_missing = voxelmorph_models(3, retrain=False)[1]
    for method in methods:
        if uses_bundled(method, 3) and not has_bundled(3):
            skipped[method] = "no bundled 3D model is installed (pelvis3d)"
        elif method.startswith("vxm") and vxm_missing:
            skipped[method] = vxm_missing
        else:
            active.append(method)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in active}
    # the methods take turns, so that a change in the machine's load hits them alike
    for repeat in range(repeats):
        for method in active:
            if runs[method] and "error" in runs[method][-1]:
                continue
            workdir = OUT / "real" / method
            workdir.mkdir(parents=True, exist_ok=True)
            print(f"real pair: {method} (run {repeat + 1}/{repeats}) ...", flush=True)
            spec = {"task": "real", "method": method, "out": str(workdir)}
            wall, rss, code = run_measured(worker_command(spec), workdir / "log.txt")
            if code != 0:
                runs[method].append({"error": (workdir / "log.txt").read_text()[-500:]})
                warped.pop(method, None)  # a failed method has no panel in the QC figure
                continue
            result = json.loads((workdir / "result.json").read_text())
            # every run is scored: ANTs samples its metric from a clock seed, so its result
            # differs from run to run (the next run overwrites this one's transform)
            array = evaluator.warp(sitk.ReadTransform(str(workdir / "transform.h5")))
            warped[method] = array  # the last run's goes into the QC figure
            nmi = evaluator.nmi(array)
            runs[method].append({"process_s": wall, "wait4_maxrss_mib": rss, "nmi": nmi, **result})
            print(
                f"    {result['seconds']:.1f} s, {result['peak_rss_mib']:.0f} MiB, NMI {nmi:.4f}",
                flush=True,
            )
    for method, done in runs.items():
        if not done or "error" in done[-1]:
            rows[method] = done[-1] if done else {"error": "not run"}
            continue
        rows[method] = {
            **done[-1],
            "seconds": statistics.median(r["seconds"] for r in done),
            "process_s": statistics.median(r["process_s"] for r in done),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in done),
            "seconds_runs": [r["seconds"] for r in done],
            "repeats": len(done),
            "nmi": statistics.median(r["nmi"] for r in done),
            "nmi_runs": [r["nmi"] for r in done],
            "load_note": load_note,
            "date": now(),
            "command": command_line(),
        }
        print(f"{method}: median {rows[method]['seconds']:.1f} s, NMI {rows[method]['nmi']:.4f}")
    # methods of an earlier run that this one did not measure again stay, with their command
    previous = load_part("real") or {}
    for method, row in (previous.get("rows") or {}).items():
        if method in rows or method in skipped:
            continue
        rows[method] = {"date": previous["date"], "command": previous["command"], **row}
        transform = OUT / "real" / method / "transform.h5"
        if "error" not in row and transform.is_file():
            warped[method] = evaluator.warp(sitk.ReadTransform(str(transform)))
    for method, reason in (previous.get("skipped") or {}).items():
        if method not in rows and method not in skipped:
            skipped[method] = reason
    order = list(LABELS)
    rows = dict(sorted(rows.items(), key=lambda item: order.index(item[0])))
    warped = {"identity": identity, **{m: warped[m] for m in rows if m in warped}}
    write_real_qc(OUT / "real_qc.png", evaluator.fixed_array, warped)
    payload = {
        "date": now(),
        "command": command_line(),
        "nmi_before": evaluator.nmi(identity),
        "rows": rows,
        "skipped": skipped,
    }
    save_part("real", payload)
    return payload


def write_real_qc(path: Path, fixed_array: np.ndarray, warped: dict[str, np.ndarray]) -> None:
    """Axial and coronal CT/MR checkerboards, one row per method (data images: never commit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from real_pair import checkerboard

    depth, height, _ = fixed_array.shape
    figure, axes = plt.subplots(len(warped), 2, figsize=(8, 3.6 * len(warped)), squeeze=False)
    for row, (name, array) in enumerate(warped.items()):
        board = checkerboard(fixed_array, array)
        for column, (view, image) in enumerate(
            (("axial", board[depth // 2]), ("coronal", board[:, height // 2, :]))
        ):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=0, vmax=1, origin="lower" if column else "upper")
            axis.set_title(f"{LABELS.get(name, name)}\n{view}", fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def nmi_runs_cell(row: dict[str, Any]) -> str:
    """The real-pair table's "NMI of each run" cell: the runs' NMIs in run order, "same" when
    they are equal (a seeded method), "-" for a row measured before each run was scored."""
    values = row.get("nmi_runs")
    if not values:
        return "-"
    if len(values) > 1 and len({round(v, 6) for v in values}) == 1:
        return "same"
    return " / ".join(f"{v:.4f}" for v in values)


def render_real(part: dict[str, Any]) -> str:
    lines = [
        "<!-- compare_real:begin -->",
        "## Side by side, real CT/MR pair (MRI-DIR pork phantom, 2 mm)",
        "",
    ]
    if "skipped" in part and isinstance(part["skipped"], str):
        lines += [f"Not run: {part['skipped']}.", "", "<!-- compare_real:end -->"]
        return "\n".join(lines)
    lines += [
        f"- date: {part['date']} (last run; each row names its run, commands below the table)",
        "- each method in its own subprocess on one thread, the methods taking turns; "
        "time s is the median over the runs column's count of runs (1: a single run, "
        "indicative only); CT fixed, T2 MR moving. Rows of different dates met different "
        "loads on the machine: compare times within one date only",
        "- NMI and its mask exactly as `benchmarks/real_pair.py` (normalised MR resampled "
        "through each method's transform onto the CT grid, 32 bins, CT > -1500 HU): the "
        "median over the runs, each run scored (a row whose runs column shows '-' was "
        "measured before that, and its NMI is its last run's); SDlogJ and folding: the last "
        "run's; time: "
        "the registration inside the worker (intensity scaling included, reading excluded); "
        "process s: the whole subprocess; peak RSS: the worker's own `VmHWM` (see the scaling "
        "section for why not `ru_maxrss`). QC "
        "figure: `benchmarks/out/compare/real_qc.png` (not committed)",
        "",
        "| method | time s (median) | runs | process s | peak RSS MiB | NMI after "
        "| NMI of each run | SDlogJ | non-positive J % | date |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| identity (no registration) | - | - | - | - | {part['nmi_before']:.4f} | - | - | - "
        "| - |",
    ]
    for method, row in part["rows"].items():
        if "error" in row:
            lines.append(f"| {LABELS[method]} | failed: {row['error'][-120:]!r} | | | | | | | | |")
            continue
        runs = row.get("seconds_runs", [row["seconds"]])
        lines.append(
            f"| {LABELS[method]} | {row['seconds']:.1f} | {len(runs)} | {row['process_s']:.1f} "
            f"| {row['peak_rss_mib']:.0f} | {row['nmi']:.4f} | {nmi_runs_cell(row)} "
            f"| {row['sdlogj']:.3f} | {100 * row['folding']:.4f} "
            f"| {row.get('date', part['date'])} |"
        )
    for method, reason in part.get("skipped", {}).items():
        lines.append(f"| {LABELS[method]} | not run: {reason} | | | | | | | | |")
    commands = sorted({r.get("command", part["command"]) for r in part["rows"].values()})
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in commands)]
    loads = sorted(
        {(r.get("date", part["date"]), r.get("load_note") or UNRECORDED_LOAD)
         for r in part["rows"].values()}
    )  # fmt: skip
    lines += ["", "Load: " + "; ".join(f"{date}: {note}" for date, note in loads)]
    lines += ["", "<!-- compare_real:end -->"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- scaling


def synthetic_pair(size: tuple[int, int, int], mr_size: tuple[int, int, int] | None = None):
    """Held-out subject 0's CT and subject 1's MR resampled onto ``size`` voxels (x, y, z).

    Each image keeps its own physical extent (CT 240 x 240 x 200 mm, MR 224 x 224 x 200 mm),
    so only the voxel size changes. Linear interpolation; the CT stays int16 HU.
    """
    from intermodal.data.synth import SEED_STRIDE, generate_subject

    fixed = generate_subject(HELDOUT_SEED * SEED_STRIDE, dim=3).ct
    moving = generate_subject(HELDOUT_SEED * SEED_STRIDE + 1, dim=3).mr

    def onto(image: sitk.Image, shape: tuple[int, int, int]) -> sitk.Image:
        extent = [n * s for n, s in zip(image.GetSize(), image.GetSpacing())]
        spacing = [e / n for e, n in zip(extent, shape)]
        # keep the first voxel's corner where it was
        origin = [
            o - s0 / 2 + s / 2 for o, s0, s in zip(image.GetOrigin(), image.GetSpacing(), spacing)
        ]
        reference = sitk.Image([int(n) for n in shape], image.GetPixelID())
        reference.SetSpacing(spacing)
        reference.SetOrigin(origin)
        reference.SetDirection(image.GetDirection())
        identity = sitk.Transform(3, sitk.sitkIdentity)
        low = float(sitk.GetArrayViewFromImage(image).min())
        return sitk.Resample(image, reference, identity, sitk.sitkLinear, low, image.GetPixelID())

    return onto(fixed, size), onto(moving, mr_size or size)


def scaling_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh process: a forward pass, a ``register`` or an ANTs run."""
    import torch

    from intermodal.io import read_image

    kind = spec["kind"]
    peers.single_threaded()
    before = peak_rss_mib()
    if kind.startswith("forward"):
        shape = tuple(spec["shape"])
        torch.manual_seed(0)
        info: dict[str, Any] = {}
        if kind == "forward_intermodal":
            from intermodal.checkpoint import load_model
            from intermodal.models import bundled_path

            # the network that ships: the bundled 3D model, read from its files
            network, card = load_model(bundled_path("pelvis3d"), device="cpu")
            info["network"] = card["network"]
        else:
            network = peers._vxm_network(3)
        network.eval()
        fixed = torch.rand((1, 1, *shape))
        moving = torch.rand((1, 1, *shape))
        before = peak_rss_mib()
        times = []
        with torch.no_grad():
            for _ in range(spec["repeats"]):
                start = time.perf_counter()
                if kind == "forward_intermodal":
                    network(fixed, moving)
                else:
                    network(moving, fixed)
                times.append(time.perf_counter() - start)
        return {"seconds": statistics.median(times), "times": times, "rss_before_mib": before,
                "info": info}  # fmt: skip
    if kind == "register_cli":
        # the command a user runs, outputs written: `intermodal register CT MR --out DIR`
        from intermodal.cli import main as cli_main

        out = Path(spec["out"]) / "register_out"
        start = time.perf_counter()
        code = cli_main(["register", "--fixed", spec["fixed"], "--moving", spec["moving"],
                         "--out", str(out),
                         "--device", "cpu", "--overwrite"])  # fmt: skip
        seconds = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"intermodal register exited with {code}")
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        info = {"stage_s": report["timings_s"], "model_path": report["model_path"],
                "outputs": sorted(p.name for p in out.iterdir())}  # fmt: skip
        return {"seconds": seconds, "rss_before_mib": before, "info": info}
    fixed = read_image(spec["fixed"])
    moving = read_image(spec["moving"])
    before = peak_rss_mib()
    if kind == "register":
        model = "auto" if has_bundled(3) else None
        result = peers.intermodal_register(fixed, moving, {"model": model, "device": "cpu"})
    elif kind == "register_fast":
        result = peers.intermodal_register(fixed, moving, {"preset": "fast", "device": "cpu"})
    elif kind == "ants":
        result = peers.ants_register(fixed, moving)
    else:
        raise ValueError(kind)
    return {"seconds": result.seconds, "rss_before_mib": before, "info": result.info}


def scaling(
    sizes: list[int], kinds: list[str], repeats: int, load_note: str | None = None
) -> dict[str, Any]:
    """Every kind at every size (smallest first), each in its own subprocess."""
    folder = OUT / "scaling"
    folder.mkdir(parents=True, exist_ok=True)
    shapes = [(n, n, n) for n in sizes]
    if FORWARD_SHAPE not in shapes:
        shapes.append(FORWARD_SHAPE)
    # rows of earlier runs stay unless this run measures the same shape and kind again
    previous = (load_part("scaling") or {}).get("rows", [])
    measured = {(tuple(shape), kind) for shape in shapes for kind in kinds}
    kept = [r for r in previous if (tuple(r["shape"]), r["kind"]) not in measured]
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        # the pair in (x, y, z) order on disk, the shape here in array order
        size_xyz = shape[::-1]
        pair = folder / f"pair_{'x'.join(map(str, shape))}"
        fixed_path, moving_path = pair / "ct.nii", pair / "mr.nii"
        # the 160x192x160 is measured for the forward passes only
        todo = [k for k in kinds if shape != FORWARD_SHAPE or k.startswith("forward")]
        if any(not k.startswith("forward") for k in todo) and not fixed_path.is_file():
            pair.mkdir(parents=True, exist_ok=True)
            fixed, moving = synthetic_pair(size_xyz)
            sitk.WriteImage(fixed, str(fixed_path))
            sitk.WriteImage(moving, str(moving_path))
        for kind in todo:
            spec = {"task": "scaling", "kind": kind, "shape": list(shape), "repeats": repeats,
                    "fixed": str(fixed_path), "moving": str(moving_path),
                    "out": str(pair / kind)}  # fmt: skip
            Path(spec["out"]).mkdir(parents=True, exist_ok=True)
            print(f"scaling {shape} {kind} ...", flush=True)
            wall, rss, code = run_measured(worker_command(spec), Path(spec["out"]) / "log.txt")
            row = {"shape": list(shape), "kind": kind, "process_s": wall,
                   "wait4_maxrss_mib": rss, "date": now(), "command": command_line(),
                   "load_note": load_note}  # fmt: skip
            if code == 0:
                row.update(json.loads((Path(spec["out"]) / "result.json").read_text()))
                print(f"    {row['seconds']:.2f} s, {rss:.0f} MiB", flush=True)
            else:
                row["error"] = (Path(spec["out"]) / "log.txt").read_text()[-400:]
                print(f"    failed: {row['error']}", flush=True)
            rows.append(row)
            save_part("scaling", {"rows": kept + rows, "partial": True})
    rows = sorted(
        kept + rows, key=lambda r: (np.prod(r["shape"]), list(SCALING_LABELS).index(r["kind"]))
    )
    payload = {"date": now(), "command": command_line(), "rows": rows, "repeats": repeats}
    save_part("scaling", payload)
    plot_scaling(payload, REPO / "benchmarks" / "scaling.png")
    return payload


SCALING_LABELS = {
    "forward_intermodal": "intermodal RegistrationModel forward",
    "forward_vxm": "VxmPairwise forward",
    "register": "intermodal register (whole)",
    "register_fast": "intermodal register --preset fast (whole)",
    "ants": "ANTs SyNRA (MI)",
}


def plot_scaling(part: dict[str, Any], path: Path) -> None:
    """Time and peak RSS against voxels, one line per kind (synthetic data only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, label in SCALING_LABELS.items():
        rows = [r for r in part["rows"] if r["kind"] == kind and "seconds" in r]
        rows = [r for r in rows if len(set(r["shape"])) == 1]  # the cubic sweep
        if not rows:
            continue
        voxels = [float(np.prod(r["shape"])) for r in rows]
        left.plot(voxels, [r["seconds"] for r in rows], "o-", label=label)
        right.plot(voxels, [r["peak_rss_mib"] / GIB for r in rows], "o-", label=label)
    edges = sorted({r["shape"][0] for r in part["rows"] if len(set(r["shape"])) == 1})
    for axis, ylabel in ((left, "time s (1 thread)"), (right, "peak RSS GiB (process)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks([float(n) ** 3 for n in edges], [f"{n}^3" for n in edges])
        axis.minorticks_off()
        axis.set_xlabel("input voxels (CT and MR each)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    figure.suptitle("Synthetic 3D pelvis pair resampled to N^3, CPU, one thread", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def render_scaling(part: dict[str, Any], memory: dict[str, Any] | None) -> str:
    lines = [
        "<!-- compare_scaling:begin -->",
        "## Scaling with volume size, and memory (synthetic 3D, CPU, one thread)",
        "",
        f"- date: {part['date']} (last run); commands below the table; plot: "
        "`benchmarks/scaling.png`",
        "- the held-out synthetic pair (CT of subject 0, MR of subject 1, dataset seed 5) "
        "resampled onto N^3 voxels over each image's own extent (CT 240x240x200 mm); each "
        "measurement in a fresh subprocess; peak RSS is that process's `VmHWM` at its end "
        "(interpreter and libraries included; the figure just before the measured call is "
        "shown too). Not `ru_maxrss` through `os.wait4`: Linux carries maxrss across `execve`, "
        "so a child of a parent that had grown to 750 MiB reported at least 750 MiB",
        f"- forward: batch 1, `torch.no_grad()`, random inputs and weights, median of "
        f"{part['repeats']} calls; intermodal: the bundled 3D model's network as loaded from "
        "its files (features and output stride in the row; rows without them were measured "
        "with `features=(16, 32, 32, 32), output_stride=2`, the 3D model before this one), "
        "incl. integration and resize; VoxelMorph: `VxmPairwise(3, 1, 1)` defaults incl. its "
        "integration",
        '- register: `register(ct, mr, Settings(device="cpu"))`, the defaults (`model="auto"`; '
        "the last column names the model that ran, `pelvis3d` once it is installed): the "
        "network at its training spacing, then the refinement on the working grid, whatever "
        "the input size, so its time hardly depends on the input; `--preset fast`: "
        '`register(ct, mr, preset_settings("fast", 3, device="cpu"))`, the refinement alone '
        "on a 4 mm grid (no network); ANTs SyNRA as in the other "
        "sections, at the input resolution (its finest SyN level gets 0 iterations by default)",
        "- rows are measured one after another (machine load, by run: "
        + "; ".join(sorted({r.get("load_note") or UNRECORDED_LOAD for r in part["rows"]}))
        + "); compare rows of one size first",
        "",
        "| array shape | method | time s | peak RSS MiB | RSS before call MiB | model / date |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in part["rows"]:
        shape = "x".join(map(str, row["shape"]))
        if "error" in row:
            lines.append(f"| {shape} | {SCALING_LABELS[row['kind']]} | failed | | | |")
            continue
        note = row.get("date", part["date"])
        label = SCALING_LABELS[row["kind"]]
        network = row.get("info", {}).get("network")
        if row["kind"] == "forward_intermodal" and network:
            label += f" (features {network['features']}, output stride {network['output_stride']})"
        if row["kind"] == "register":
            model = row.get("info", {}).get("model_path")
            note = f"{Path(model).stem if model else 'none'}, {note}"
        lines.append(
            f"| {shape} | {label} | {row['seconds']:.2f} "
            f"| {row['peak_rss_mib']:.0f} | {row.get('rss_before_mib', float('nan')):.0f} "
            f"| {note} |"
        )
    commands = sorted({r.get("command", part["command"]) for r in part["rows"]})
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in commands), ""]
    if memory:
        what = (
            "`intermodal register CT MR --out DIR` (the CLI in the worker process, every "
            "output written: " + ", ".join(memory.get("info", {}).get("outputs", [])) + ")"
            if memory.get("kind") == "register_cli"
            else "`register`"
        )
        lines.append(
            f"- memory ({memory['date']}, `{memory['command']}`): {what} "
            f"(model={memory['model']!r}, device cpu) of a synthetic {memory['moving_shape']} "
            f"MR onto a {memory['fixed_shape']} CT (x, y, z; the held-out pair resampled, "
            f"int16 CT and float32 MR in uncompressed NIfTI, read by `intermodal.io.read_image`): "
            + (
                f"peak RSS {memory['peak_rss_mib'] / GIB:.2f} GiB, registration "
                f"{memory['seconds']:.0f} s, process {memory['process_s']:.0f} s (stages s: "
                f"{memory.get('info', {}).get('stage_s', {})})"
                if "peak_rss_mib" in memory and "error" not in memory
                else f"failed: {memory.get('error', '?')[-300:]!r}"
            )
        )
    previous = load_part("memory_previous")
    if previous and "peak_rss_mib" in previous:
        stages = previous.get("info", {}).get("stage_s", {})
        lines.append(
            f"- an earlier memory run ({previous['date']}; {previous['note']}): peak RSS "
            f"{previous['peak_rss_mib'] / GIB:.2f} GiB, registration {previous['seconds']:.0f} s "
            f"(stages s: {stages})"
        )
    lines += ["", "<!-- compare_scaling:end -->"]
    return "\n".join(lines)


def memory_part() -> dict[str, Any]:
    folder = OUT / "memory"
    folder.mkdir(parents=True, exist_ok=True)
    fixed_path, moving_path = folder / "ct.nii", folder / "mr.nii"
    fixed_size, moving_size = (512, 512, 400), (512, 512, 100)
    if not fixed_path.is_file():
        fixed, moving = synthetic_pair(fixed_size, moving_size)
        sitk.WriteImage(fixed, str(fixed_path))
        sitk.WriteImage(moving, str(moving_path))
    spec = {"task": "scaling", "kind": "register_cli", "fixed": str(fixed_path),
            "moving": str(moving_path), "out": str(folder)}  # fmt: skip
    print("memory: register 512x512x400 CT, 512x512x100 MR ...", flush=True)
    wall, rss, code = run_measured(worker_command(spec), folder / "log.txt")
    payload = {
        "date": now(),
        "command": command_line(),
        "fixed_shape": "x".join(map(str, fixed_size)),
        "moving_shape": "x".join(map(str, moving_size)),
        "model": "auto" if has_bundled(3) else None,
        "kind": spec["kind"],
        "process_s": wall,
        "wait4_maxrss_mib": rss,
    }
    if code == 0:
        payload.update(json.loads((folder / "result.json").read_text()))
    else:
        payload["error"] = (folder / "log.txt").read_text()[-600:]
    print(f"    {payload}", flush=True)
    save_part("memory", payload)
    return payload


# --------------------------------------------------------------------------- targets


def dice_verdict(ours: dict[str, float], theirs: dict[str, float]) -> tuple[bool, str]:
    """Issue 4's Dice target for two summaries: met or not, and why, part by part."""
    margin = ours["dice"] - theirs["dice"]
    checks = {
        "Dice margin": (margin >= DICE_MARGIN, "too small"),
        "SDlogJ": (ours["sdlogj"] <= SDLOGJ_MAX, "too high"),
        "folding": (ours["folding"] < FOLDING_MAX, "too high"),
    }
    reasons = ", ".join(f"{name} {'ok' if ok else bad}" for name, (ok, bad) in checks.items())
    return all(ok for ok, _ in checks.values()), reasons


def _seeded_ants_lines(dim: int, part: dict[str, Any], candidates: list[str]) -> list[str]:
    """The Dice target against ANTs under fixed seeds (benchmarks/ants_seeds.py), if run.

    One clock-seeded ANTs run per pair (the table's row) is a single draw; the target is
    also checked against the best of the seeded runs over the same pairs.
    """
    path = SEEDS / f"{dim}d.json"
    if not path.is_file():
        return []
    seeded = json.loads(path.read_text(encoding="utf-8"))
    best_seed, best = max(
        ((seed, summarise(entries)) for seed, entries in seeded["rows"].items()),
        key=lambda item: item[1]["dice"],
    )
    lines = []
    for key in candidates:
        entries = [e for e in part["rows"][key] if e["pair"] < seeded["pairs"]]
        ours = summarise(entries)
        if ours.get("n") != best["n"]:
            continue
        ok, reasons = dice_verdict(ours, best)
        lines.append(
            f"- Dice {dim}D, {LABELS[key]} vs ANTs SyNRA under fixed seeds (section ants_seeds, "
            f"best of {len(seeded['rows'])} seeds: `ANTS_RANDOM_SEED={best_seed}`): "
            f"**{'MET' if ok else 'NOT MET'}** ({reasons}): mean Dice {ours['dice']:.3f} vs "
            f"{best['dice']:.3f} (margin {ours['dice'] - best['dice']:+.3f}, {ours['n']} "
            f"pairs), SDlogJ {ours['sdlogj']:.3f}"
        )
    return lines


def _gpu_line() -> str:
    """The GPU network target, from ``benchmarks/measured/gpu_timings.json`` (a GPU run)."""
    path = REPO / "benchmarks" / "measured" / "gpu_timings.json"
    if not path.is_file():
        return "- GPU timings: not measured (no `benchmarks/measured/gpu_timings.json`)"
    measured = json.loads(path.read_text(encoding="utf-8"))
    ours = [
        r for r in measured["forward"]
        if r.get("network") == "intermodal" and r.get("precision") == "fp32"
    ]  # fmt: skip
    registers = "; ".join(
        f"{r['settings']}: {r['seconds']:.1f} s, of which the MI initial alignment "
        f"{r['stage_s']['initial_alignment']:.1f} s"
        for r in measured["register"]
    )
    if not ours:
        return "- GPU timings: the stored run has no intermodal forward row"
    seconds = ours[0]["seconds"]
    verdict = "MET" if seconds < GPU_NETWORK_MAX_S else "NOT MET"
    return (
        f"- GPU, network forward at 192x160x192 under {GPU_NETWORK_MAX_S} s: **{verdict}**: "
        f"{1000 * seconds:.1f} ms on {measured['machine']['gpu']} ({measured['date']}, "
        f"section gpu_timings); `register` there: {registers}"
    )


def _fastest_line(dim: int, summary: dict[str, dict[str, float]]) -> list[str]:
    """The time target for the fastest intermodal row whose Dice is at least ANTs'."""
    ants = summary.get("ants")
    if not ants:
        return []
    accurate = {
        key: row
        for key, row in summary.items()
        if intermodal_settings(key, dim) is not None and row and row["dice"] >= ants["dice"]
    }
    if not accurate:
        return [f"- time {dim}D: no intermodal row reaches ANTs' mean Dice {ants['dice']:.3f}"]
    key = min(accurate, key=lambda k: accurate[k]["seconds"])
    ratio = accurate[key]["seconds"] / ants["seconds"]
    return [
        f"- time {dim}D, the fastest intermodal row at equal or better Dice, {LABELS[key]}, vs "
        f"ANTs (<= {TIME_RATIO_MAX} x): **{'MET' if ratio <= TIME_RATIO_MAX else 'NOT MET'}**: "
        f"median {accurate[key]['seconds']:.2f} s vs {ants['seconds']:.2f} s per pair (ratio "
        f"{ratio:.2f}), Dice {accurate[key]['dice']:.3f} vs {ants['dice']:.3f}; its fields' "
        f"SDlogJ {accurate[key]['sdlogj']:.3f} vs {ants['sdlogj']:.3f} (the time target asks "
        "for equal accuracy, not equal smoothness)"
    ]


def _real_defaults_line(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The real pair's time target for the defaults (or refinement alone) against ANTs; rows of
    different runs are compared too, but the line then names both runs' dates."""
    ours_key = "im_default" if "im_default" in rows else "im_refine"
    if ours_key not in rows or "ants" not in rows or "error" in rows[ours_key]:
        return []
    ours, ants = rows[ours_key], rows["ants"]
    if "error" in ants:
        return []
    ratio = ours["seconds"] / ants["seconds"]
    ok = ratio <= TIME_RATIO_MAX and ours["nmi"] >= ants["nmi"]
    runs = ""
    if ours.get("date") != ants.get("date"):
        runs = (
            f"; different runs ({ours.get('date')} and {ants.get('date')}), so the time ratio "
            "mixes two loads of the machine"
        )
    return [
        f"- time, real pair, {LABELS[ours_key]} vs ANTs (<= {TIME_RATIO_MAX} x at equal "
        f"or better NMI): **{'MET' if ok else 'NOT MET'}**: {ours['seconds']:.1f} s vs "
        f"{ants['seconds']:.1f} s (ratio {ratio:.2f}, medians of "
        f"{len(ours.get('seconds_runs', [0]))} and {len(ants.get('seconds_runs', [0]))} "
        f"runs{runs}), NMI {ours['nmi']:.4f} vs {ants['nmi']:.4f}"
    ]


def _ants_nmi_source(ants: dict[str, Any]) -> str:
    """Which of ANTs' runs its real-pair NMI comes from, for the target lines."""
    values = ants.get("nmi_runs")
    if not values:
        return "ANTs' NMI is its last run's"
    return f"ANTs' NMI is the median of its {len(values)} runs' ({nmi_runs_cell(ants)})"


def _real_fastest_line(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The real pair's time target for the fastest intermodal row of ANTs' own run (same date)
    whose NMI is at least ANTs'; or, when none is, how far the fastest and the best fall short."""
    ants = rows.get("ants")
    if not ants or "error" in ants:
        return []
    same_run = {
        key: row
        for key, row in rows.items()
        if intermodal_settings(key, 3) is not None
        and "error" not in row
        and row.get("date") == ants.get("date")
    }
    if not same_run:
        return []
    accurate = {key: row for key, row in same_run.items() if row["nmi"] >= ants["nmi"]}
    if accurate:
        key = min(accurate, key=lambda k: accurate[k]["seconds"])
        ratio = accurate[key]["seconds"] / ants["seconds"]
        verdict = "MET" if ratio <= TIME_RATIO_MAX else "NOT MET"
        return [
            f"- time, real pair, the fastest intermodal row at equal or better NMI, "
            f"{LABELS[key]}, vs ANTs (<= {TIME_RATIO_MAX} x): **{verdict}**: "
            f"{accurate[key]['seconds']:.1f} s vs {ants['seconds']:.1f} s (ratio {ratio:.2f}), "
            f"NMI {accurate[key]['nmi']:.4f} vs {ants['nmi']:.4f}; {_ants_nmi_source(ants)}"
        ]
    fastest = min(same_run, key=lambda k: same_run[k]["seconds"])
    best = max(same_run, key=lambda k: same_run[k]["nmi"])
    return [
        f"- time, real pair, at equal or better NMI: **NOT MET**: no intermodal row of ANTs' "
        f"run ({ants['date']}) reaches its NMI {ants['nmi']:.4f} in {ants['seconds']:.1f} s; "
        f"the fastest, {LABELS[fastest]}: NMI {same_run[fastest]['nmi']:.4f} in "
        f"{same_run[fastest]['seconds']:.1f} s (ratio "
        f"{same_run[fastest]['seconds'] / ants['seconds']:.2f}); the highest NMI, "
        f"{LABELS[best]}: {same_run[best]['nmi']:.4f} in {same_run[best]['seconds']:.1f} s; "
        f"{_ants_nmi_source(ants)}"
    ]


def render_targets() -> str:
    """Issue 4's targets against the stored parts, each MET / NOT MET with its numbers."""
    lines = [
        "<!-- compare_targets:begin -->",
        "## Issue 4 targets (from the sections above, same runs)",
        "",
    ]
    for dim in (2, 3):
        part = load_part(f"heldout{dim}d")
        if not part:
            lines.append(f"- Dice, {dim}D: not measured")
            continue
        summary = {m: summarise(e) for m, e in part["rows"].items()}
        ours_key = "im_default" if summary.get("im_default") else "im_refine"
        ours = summary.get(ours_key)
        candidates = [k for k in (ours_key, "im_smooth", "im_sampled") if summary.get(k)]
        lines.extend(_seeded_ants_lines(dim, part, candidates))
        for key, peer in [(k, p) for k in candidates for p in ("ants", "vxm_mi")] or [
            (ours_key, "ants")
        ]:
            ours_here = summary.get(key)
            theirs = summary.get(peer)
            if not ours_here or not theirs:
                reason = part.get("skipped", {}).get(peer, "not run")
                lines.append(f"- Dice {dim}D vs {LABELS[peer]}: not measured ({reason})")
                continue
            ours, ours_label = ours_here, LABELS[key]
            margin = ours["dice"] - theirs["dice"]
            ok, verdicts = dice_verdict(ours, theirs)
            lines.append(
                f"- Dice {dim}D, {ours_label} vs {LABELS[peer]} (>= +{DICE_MARGIN} with "
                f"SDlogJ <= {SDLOGJ_MAX} and non-positive J < 0.01 %): "
                f"**{'MET' if ok else 'NOT MET'}** ({verdicts}): mean Dice {ours['dice']:.3f} vs "
                f"{theirs['dice']:.3f} (margin {margin:+.3f}, {ours['n']} pairs), SDlogJ "
                f"{ours['sdlogj']:.3f} (peer {theirs['sdlogj']:.3f}), non-positive J "
                f"{100 * ours['folding']:.4f} %"
            )
        ours = summary.get(ours_key)
        if ours and summary.get("ants"):
            ratio = ours["seconds"] / summary["ants"]["seconds"]
            accurate = ours["dice"] >= summary["ants"]["dice"]
            ok = ratio <= TIME_RATIO_MAX and accurate
            lines.append(
                f"- time {dim}D (per pair, in process), {LABELS[ours_key]} vs ANTs "
                f"(<= {TIME_RATIO_MAX} x at equal or better Dice): "
                f"**{'MET' if ok else 'NOT MET'}**: median {ours['seconds']:.2f} s "
                f"vs {summary['ants']['seconds']:.2f} s per pair (ratio {ratio:.2f}), Dice "
                f"{ours['dice']:.3f} vs {summary['ants']['dice']:.3f}"
            )
        lines.extend(_fastest_line(dim, summary))
    real_part = load_part("real")
    if real_part and isinstance(real_part.get("rows"), dict):
        rows = real_part["rows"]
        lines.extend(_real_defaults_line(rows))
        lines.extend(_real_fastest_line(rows))
    scaling_part = load_part("scaling")
    if scaling_part and scaling_part.get("rows"):
        at = {
            r["kind"]: r
            for r in scaling_part["rows"]
            if tuple(r["shape"]) == FORWARD_SHAPE and "seconds" in r
        }
        if "forward_intermodal" in at and "forward_vxm" in at:
            ratio = at["forward_intermodal"]["seconds"] / at["forward_vxm"]["seconds"]
            lines.append(
                f"- network forward at {'x'.join(map(str, FORWARD_SHAPE))} (batch 1, CPU, 1 "
                f"thread) <= {FORWARD_RATIO_MAX} x VxmPairwise's: "
                f"**{'MET' if ratio <= FORWARD_RATIO_MAX else 'NOT MET'}**: "
                f"{at['forward_intermodal']['seconds']:.2f} s vs "
                f"{at['forward_vxm']['seconds']:.2f} s (ratio {ratio:.3f}); peak RSS "
                f"{at['forward_intermodal']['peak_rss_mib']:.0f} vs "
                f"{at['forward_vxm']['peak_rss_mib']:.0f} MiB"
            )
        else:
            lines.append("- network forward at 160x192x160: not measured")
    memory = load_part("memory")
    if memory and "peak_rss_mib" in memory and "error" not in memory:
        gib = memory["peak_rss_mib"] / GIB
        lines.append(
            f"- memory, `register` of a {memory['moving_shape']} MR onto a "
            f"{memory['fixed_shape']} CT under {MEMORY_MAX_GIB:g} GiB peak RSS: "
            f"**{'MET' if gib < MEMORY_MAX_GIB else 'NOT MET'}**: {gib:.2f} GiB "
            f"(model={memory['model']!r})"
        )
    elif memory:
        lines.append(f"- memory: the run failed: {memory.get('error', '?')[-200:]!r}")
    else:
        lines.append("- memory (512x512x400 CT): not measured")
    lines += [_gpu_line(), "", "<!-- compare_targets:end -->"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- RESULTS.md


def write_sections() -> None:
    """Re-read RESULTS.md and replace (or append) only this script's sections."""
    sections = []
    for dim in (2, 3):
        part = load_part(f"heldout{dim}d")
        if part and "date" in part:
            sections.append(render_heldout(part))
    part = load_part("real")
    if part and "date" in part:
        sections.append(render_real(part))
    part = load_part("scaling")
    if part and "date" in part:
        sections.append(render_scaling(part, load_part("memory")))
    # the ants_seeds section sets the stored held-out rows beside ANTs' seeds: keep it in step
    import ants_seeds

    seed_runs = ants_seeds.stored_runs()
    if seed_runs:
        sections.append(ants_seeds.render(seed_runs))
    sections.append(render_targets())
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmarks\n"
    for section in sections:
        begin = section.splitlines()[0]
        end = begin.replace(":begin", ":end")
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + section + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text, encoding="utf-8")
    print("\n\n".join(sections))


# --------------------------------------------------------------------------- main


def worker(spec: dict[str, Any]) -> int:
    peers.single_threaded()
    out = Path(spec["out"])
    if spec["task"] == "real":
        result = real_worker(spec["method"], out)
    else:
        result = scaling_worker(spec)
    result["peak_rss_mib"] = peak_rss_mib()
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS)
    )
    parser.add_argument("--methods", default=",".join(LABELS), help="comma-separated method keys")
    parser.add_argument("--pairs-2d", type=int, default=60)
    parser.add_argument("--pairs-3d", type=int, default=5)
    parser.add_argument("--real-repeats", type=int, default=3, help="runs per method, real pair")
    parser.add_argument("--sizes", default="64,96,128,160", help="cube edges for the sweep")
    parser.add_argument("--scaling-kinds", default=",".join(SCALING_LABELS))
    parser.add_argument("--forward-repeats", type=int, default=3)
    parser.add_argument("--retrain", action="store_true", help="retrain VoxelMorph")
    parser.add_argument(
        "--load-note", help="what else ran on the machine meanwhile (held-out and scaling)"
    )
    parser.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md only")
    parser.add_argument("--no-render", action="store_true", help="store the parts only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    peers.single_threaded()
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts must be a subset of {','.join(PARTS)}, not {unknown}")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(LABELS))
    if unknown:
        parser.error(f"--methods must be a subset of {','.join(LABELS)}, not {unknown}")
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        for part in parts:
            if part == "heldout2d":
                heldout(2, args.pairs_2d, methods, args.retrain, args.load_note)
            elif part == "heldout3d":
                heldout(3, args.pairs_3d, methods, args.retrain, args.load_note)
            elif part == "real":
                real([m for m in methods if m != "affine"], args.real_repeats, args.load_note)
            elif part == "scaling":
                sizes = [int(s) for s in args.sizes.split(",") if s]
                scaling(sizes, args.scaling_kinds.split(","), args.forward_repeats, args.load_note)
            elif part == "memory":
                memory_part()
    if not args.no_render:
        write_sections()
    return 0


if __name__ == "__main__":
    sys.exit(main())
