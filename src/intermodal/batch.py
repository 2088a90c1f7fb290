"""Registering many CT/MR pairs: the pair list, the methods, and a resumable batch run.

**Pairs.** A pair registers the MR of one subject (moving) onto the CT of another or the same
subject (fixed). The pairs come from a dataset manifest (:mod:`intermodal.data.manifest`):

- ``intra`` (the default): each subject of the split, its own MR onto its own CT;
- ``inter``: every ordered pair of two different subjects of the split, ``n (n - 1)`` pairs;
- ``all``: both, every ordered pair of the split, ``n^2`` pairs;
- an explicit list, either a top-level ``"pairs"`` list in a JSON manifest or a CSV file with
  the header ``fixed,moving``, each entry naming subject ids::

      "pairs": [{"fixed": "subject_003", "moving": "subject_003"},
                {"fixed": "subject_003", "moving": "subject_004"}]

  An explicit list may name any subject of the manifest, whatever its split. When a manifest
  holds a ``"pairs"`` list it is used unless another choice is given.

The fixed labels are the fixed subject's ``labels`` (CT grid), the moving labels the moving
subject's ``mr_labels`` (MR grid). Landmarks, for TRE, follow the same rule: the fixed subject's
``landmarks`` are CT-space points and the moving subject's ``mr_landmarks`` (an extra subject
key, a path relative to the manifest) MR-space points, both CSV ``x,y[,z]`` in mm, corresponding
row by row. Each pair's outputs go to a folder named ``<fixed id>--<moving id>``.

**Methods.** A method turns a pair into an output folder. The contract, which evaluation relies
on: the folder holds ``transform.h5`` (an ITK transform mapping fixed physical points to moving
ones) and, when the method has them, ``displacement.nii.gz`` (the deformable part, LPS mm on
the fixed grid) and ``report.json`` (``timings_s.total``: the run time in seconds). The built-in
method ``intermodal`` writes everything ``intermodal register`` writes. Others (ANTs, elastix)
are added with :func:`register_method`.

**Batch runs.** :func:`run_batch` registers the pairs of this process's share, one folder per
pair, and writes ``done.json`` into a folder last, atomically. A run resumes: a pair whose folder
holds a ``done.json`` for the same inputs is skipped, and anything else of that pair (a folder
without the marker, a hidden staging folder left by a killed run) is removed and redone. Under
``torchrun`` (or with ``RANK``/``WORLD_SIZE`` set), process ``rank`` takes the pairs whose index
``i`` in the list satisfies ``i % world_size == rank``; the processes share no state but the
folder, so none needs a process group. One run at a time per output folder.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from intermodal.data.manifest import Manifest, ManifestError
from intermodal.errors import IntermodalError, OutputExistsError
from intermodal.io import write_text_atomic

if TYPE_CHECKING:
    from intermodal.registration import Progress, Settings

logger = logging.getLogger(__name__)

PAIR_CHOICES = ("intra", "inter", "all")
"""Pair lists built from a split (see the module docstring)."""

DONE_FILE = "done.json"
"""Written last into a pair's folder: the pair is complete."""

RUN_FILE = "batch.json"
"""The run's method and settings, at the top of the output folder; a resumed run must match."""

REQUIRED_OUTPUT = "transform.h5"
"""The one file every method must write."""

_SEPARATOR = "--"


# ---------------------------------------------------------------------------------------------
# Pairs


@dataclass(frozen=True)
class Pair:
    """One registration: the moving subject's MR onto the fixed subject's CT.

    Every path is absolute. Labels and landmarks are optional.

    Attributes:
        fixed_id: subject id of the fixed image.
        moving_id: subject id of the moving image.
        fixed: the fixed subject's CT.
        moving: the moving subject's MR.
        fixed_labels: label map on the fixed CT's grid.
        moving_labels: label map on the moving MR's grid.
        fixed_landmarks: CSV of CT-space points (mm).
        moving_landmarks: CSV of MR-space points (mm), row by row the same anatomy.
    """

    fixed_id: str
    moving_id: str
    fixed: Path
    moving: Path
    fixed_labels: Path | None = None
    moving_labels: Path | None = None
    fixed_landmarks: Path | None = None
    moving_landmarks: Path | None = None

    @property
    def name(self) -> str:
        """The pair's folder name, ``<fixed id>--<moving id>``."""
        return f"{self.fixed_id}{_SEPARATOR}{self.moving_id}"

    @property
    def intra_subject(self) -> bool:
        """Whether fixed and moving are the same subject."""
        return self.fixed_id == self.moving_id

    def inputs(self) -> dict[str, str | None]:
        """The pair's input files as strings (``None`` where absent), for records."""
        return {
            key: None if value is None else str(value)
            for key, value in asdict(self).items()
            if key not in ("fixed_id", "moving_id")
        }


def _moving_landmarks(manifest: Manifest, entry, problems: list[str]) -> Path | None:
    value = entry.extra.get("mr_landmarks")
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        problems.append(f'subject {entry.id}: "mr_landmarks" must be a path, found {value!r}')
        return None
    path = Path(os.path.normpath(manifest.path.parent / Path(value).expanduser()))
    if not path.is_file():
        problems.append(f"subject {entry.id}: mr_landmarks {path}: file not found")
    return path


def _pair(manifest: Manifest, fixed_id: str, moving_id: str, problems: list[str]) -> Pair | None:
    try:
        fixed, moving = manifest.subject(fixed_id), manifest.subject(moving_id)
    except IntermodalError:
        missing = [i for i in (fixed_id, moving_id) if i not in {s.id for s in manifest.subjects}]
        problems.append(f"pair {fixed_id} <- {moving_id}: no subject with id {missing[0]!r}")
        return None
    for id_ in dict.fromkeys((fixed_id, moving_id)):
        if "/" in id_ or "\\" in id_ or id_.startswith(".") or _SEPARATOR in id_:
            problems.append(
                f"subject {id_}: id cannot name an output folder (no '/', '\\', '--' and no "
                "leading '.')"
            )
            return None
    return Pair(
        fixed_id=fixed.id,
        moving_id=moving.id,
        fixed=fixed.ct,
        moving=moving.mr,
        fixed_labels=fixed.labels,
        moving_labels=moving.mr_labels,
        fixed_landmarks=fixed.landmarks,
        moving_landmarks=_moving_landmarks(manifest, moving, problems),
    )


def _explicit_pairs(raw: Any, problems: list[str]) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        problems.append(f'"pairs" must be a list of {{"fixed", "moving"}} objects, not {raw!r}')
        return []
    ids = []
    for k, item in enumerate(raw):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(key), (str, int)) and str(item.get(key)).strip()
            for key in ("fixed", "moving")
        ):
            problems.append(f'pairs[{k}]: expected {{"fixed": <id>, "moving": <id>}}, got {item!r}')
            continue
        ids.append((str(item["fixed"]).strip(), str(item["moving"]).strip()))
    return ids


def _read_pairs_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except OSError as err:
        raise IntermodalError(f"{path}: cannot read the pair list: {err.strerror or err}") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise IntermodalError(f"{path}: not a readable CSV pair list ({err})") from err
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "fixed" not in header or "moving" not in header:
        raise IntermodalError(
            f"{path}: a pair list needs the header 'fixed,moving' (subject ids), "
            f"got {','.join(header) or 'an empty file'!r}"
        )
    return [dict(zip(header, (cell.strip() for cell in row))) for row in rows[1:]]


def load_pairs(
    manifest: Manifest,
    pairs: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
) -> list[Pair]:
    """The pairs to register or evaluate (the rules are in the module docstring).

    Args:
        manifest: a loaded manifest (:func:`intermodal.data.manifest.load_manifest`).
        pairs: ``"intra"``, ``"inter"``, ``"all"``, the path of a CSV pair list (header
            ``fixed,moving``), or ``None``: the manifest's ``"pairs"`` list if it has one, else
            ``"intra"``.
        split: the split whose subjects ``intra``/``inter``/``all`` pair up.

    Returns:
        The pairs, in a fixed order (explicit lists keep theirs; otherwise by fixed subject in
        split order, then by moving subject).

    Raises:
        ManifestError: unknown subject ids, duplicate pairs, unusable ids or missing landmark
            files (every problem listed).
        IntermodalError: an empty split or pair list, or an unreadable pair list file.
    """
    problems: list[str] = []
    source: Path = manifest.path
    if pairs is None and "pairs" in manifest.info:
        ids = _explicit_pairs(manifest.info["pairs"], problems)
    elif pairs is None or str(pairs) in PAIR_CHOICES:
        mode = "intra" if pairs is None else str(pairs)
        members = [entry.id for entry in manifest.split(split)]
        if not members:
            raise IntermodalError(f"{manifest.path}: split {split!r} is empty; no pairs to make")
        ids = [
            (fixed, moving)
            for fixed in members
            for moving in members
            if mode == "all" or (fixed == moving) == (mode == "intra")
        ]
    else:
        source = Path(pairs).expanduser()
        if not source.is_file():
            raise IntermodalError(
                f"{source}: pair list not found (expected {', '.join(PAIR_CHOICES)} or a CSV "
                "file with the header 'fixed,moving')"
            )
        rows = _read_pairs_csv(source)
        ids = [(row.get("fixed", ""), row.get("moving", "")) for row in rows]
        for line, (fixed, moving) in enumerate(ids, start=2):
            if not fixed or not moving:
                problems.append(f"line {line}: needs both a fixed and a moving subject id")
        ids = [(fixed, moving) for fixed, moving in ids if fixed and moving]
    if not ids and not problems:
        raise IntermodalError(f"{source}: the pair list is empty")
    result, seen = [], set()
    for fixed_id, moving_id in ids:
        if (fixed_id, moving_id) in seen:
            problems.append(f"pair {fixed_id} <- {moving_id}: listed twice")
            continue
        seen.add((fixed_id, moving_id))
        pair = _pair(manifest, fixed_id, moving_id, problems)
        if pair is not None:
            result.append(pair)
    if problems:
        raise ManifestError(source, list(dict.fromkeys(problems)))
    return result


# ---------------------------------------------------------------------------------------------
# Methods


class PairMethod(Protocol):
    """A registration method that :func:`run_batch` can run.

    Attributes:
        name: the method's name, as :func:`make_method` knows it.
    """

    name: str

    def settings(self) -> dict[str, Any]:
        """Everything that decides the results, JSON-serialisable; a resumed run must match."""
        ...

    def __call__(self, pair: Pair, destination: Path, *, extra_report: dict[str, Any]) -> None:
        """Register ``pair`` and write its output folder at ``destination`` (which is absent).

        The folder must hold :data:`REQUIRED_OUTPUT`; ``extra_report`` goes into its
        ``report.json`` where the method writes one. Raise on failure.
        """
        ...


class IntermodalMethod:
    """intermodal's own :func:`~intermodal.registration.register`, writing what ``register`` does.

    Args:
        settings: registration settings (defaults when ``None``), or one per image dimension
            (``{2: ..., 3: ...}``, as a preset gives them), used by each pair's dimension.
        progress: optional ``(stage, step, total)`` callback for each registration.
    """

    name = "intermodal"

    def __init__(
        self,
        settings: Settings | Mapping[int, Settings] | None = None,
        *,
        progress: Progress | None = None,
    ):
        from intermodal.registration import Settings

        if settings is None:
            settings = Settings()
        if isinstance(settings, Settings):
            settings = {2: settings, 3: settings}
        missing = {2, 3} - set(settings)
        if missing:
            raise IntermodalError(f"settings are missing for {sorted(missing)}D images")
        self.configs = {ndim: settings[ndim] for ndim in (2, 3)}
        for config in self.configs.values():
            config.validate()
        self.progress = progress

    def settings(self) -> dict[str, Any]:
        """The settings, plus the SHA-256 of the weights ``model`` names, so that a resume
        after the model file changed (e.g. a newer bundled model under ``auto``) is refused.
        Settings that differ by dimension are recorded under ``"2d"`` and ``"3d"``."""
        from intermodal.checkpoint import read_card
        from intermodal.models import resolve_model

        if self.configs[2] == self.configs[3]:
            values: dict[str, Any] = asdict(self.configs[3])
        else:
            values = {f"{ndim}d": asdict(config) for ndim, config in self.configs.items()}
        digests: dict[str, str | None] = {}
        for ndim, config in self.configs.items():
            try:
                path = resolve_model(config.model, ndim)
                digests[f"{ndim}d"] = None if path is None else read_card(path)["weights_sha256"]
            except IntermodalError:  # absent: the registration itself will say so
                digests[f"{ndim}d"] = None
        values["model_sha256"] = digests
        return values

    def __call__(self, pair: Pair, destination: Path, *, extra_report: dict[str, Any]) -> None:
        from intermodal.io import read_image, read_points
        from intermodal.registration import register
        from intermodal.report import save_result

        _bind_local_gpu(self.configs[3].device)
        fixed = read_image(pair.fixed)
        moving = read_image(pair.moving)
        labels = read_image(pair.moving_labels) if pair.moving_labels else None
        points = read_points(pair.fixed_landmarks) if pair.fixed_landmarks else None
        config = self.configs.get(fixed.GetDimension(), self.configs[3])
        result = register(fixed, moving, config, progress=self.progress)
        extra = {
            "inputs_paths": {
                "fixed": str(Path(pair.fixed).absolute()),
                "moving": str(Path(pair.moving).absolute()),
                "labels": None
                if pair.moving_labels is None
                else str(Path(pair.moving_labels).absolute()),
                "points": None
                if pair.fixed_landmarks is None
                else str(Path(pair.fixed_landmarks).absolute()),
            },
            **extra_report,
        }
        save_result(result, destination, labels=labels, points=points, extra_report=extra)


def _bind_local_gpu(device: str) -> None:
    """Under torchrun on a machine with GPUs, give each local process a GPU of its own."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return
    local_rank = _env_int("LOCAL_RANK", 0)
    torch.cuda.set_device(local_rank % torch.cuda.device_count())


MethodFactory = Callable[..., PairMethod]
_METHODS: dict[str, MethodFactory] = {"intermodal": IntermodalMethod}


def register_method(name: str, factory: MethodFactory, *, replace: bool = False) -> None:
    """Make a method available to :func:`make_method` (and ``--method`` on the command line).

    Args:
        name: the method's name, e.g. ``"ants-synra"``.
        factory: called as ``factory(**options)`` and returning a :class:`PairMethod`. The
            command line passes ``settings=`` (intermodal's :class:`Settings` from its
            options, one per image dimension: ``{2: ..., 3: ...}``); a factory accepts and may
            ignore it.
        replace: allow replacing a method of the same name.

    Raises:
        IntermodalError: the name is taken and ``replace`` is false.
    """
    if name in _METHODS and not replace:
        raise IntermodalError(f"a method named {name!r} is already registered")
    _METHODS[name] = factory


def method_names() -> list[str]:
    """The names :func:`make_method` knows, sorted."""
    return sorted(_METHODS)


def make_method(name: str, **options: Any) -> PairMethod:
    """The method called ``name``, built with ``options``.

    Raises:
        IntermodalError: no method has that name.
    """
    if name not in _METHODS:
        raise IntermodalError(f"unknown method {name!r}; methods are {', '.join(method_names())}")
    return _METHODS[name](**options)


# ---------------------------------------------------------------------------------------------
# Batch runs


@dataclass
class PairOutcome:
    """What happened to one pair: ``status`` is ``done``, ``skipped`` or ``failed`` (or
    ``running`` while it is being registered)."""

    pair: str
    status: str
    seconds: float = 0.0
    message: str = ""


@dataclass
class BatchSummary:
    """One process's share of a batch run.

    Attributes:
        out_dir: the output folder.
        rank: this process's rank.
        world_size: the number of processes.
        done: pairs registered by this run.
        skipped: pairs already complete before this run.
        failed: pair -> one-line reason.
    """

    out_dir: Path
    rank: int = 0
    world_size: int = 1
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.done) + len(self.skipped) + len(self.failed)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise IntermodalError(
            f"environment variable {name} must be an integer, not {value!r}"
        ) from None


def rank_from_environment() -> tuple[int, int]:
    """``(rank, world_size)`` from ``RANK`` and ``WORLD_SIZE`` (set by torchrun); ``(0, 1)``.

    Raises:
        IntermodalError: values that are not integers, or a rank outside ``[0, world_size)``.
    """
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    _check_rank(rank, world_size)
    return rank, world_size


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise IntermodalError(
            f"rank {rank} of world size {world_size}: need world size >= 1 and "
            "0 <= rank < world size"
        )


def shard(pairs: Sequence[Pair], rank: int, world_size: int) -> list[Pair]:
    """The pairs process ``rank`` of ``world_size`` takes: index ``% world_size == rank``."""
    _check_rank(rank, world_size)
    return list(pairs[rank::world_size])


def _json_normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value, default=str))


def read_done(folder: Path, pair: Pair) -> dict[str, Any] | None:
    """The ``done.json`` record of ``pair`` in ``folder``, or ``None`` if the pair is not done.

    A marker for other inputs (the manifest changed) or a folder that lost its
    :data:`REQUIRED_OUTPUT` does not count.
    """
    try:
        record = json.loads((folder / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("pair") != pair.name:
        return None
    if record.get("inputs") != pair.inputs() or not (folder / REQUIRED_OUTPUT).is_file():
        return None
    return record


def _claim_folder(out: Path, record: dict[str, Any], rank: int, overwrite: bool) -> None:
    """Check that ``out`` is new or a run of the same method and settings; record the run.

    Every process writes the same record, without replacing it (a hard link, atomic), so that
    none depends on another having started; the loser of that race compares instead.
    """
    if out.exists() and not out.is_dir():
        raise IntermodalError(f"{out}: output is a file, expected a folder")
    run_file = out / RUN_FILE
    visible = out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())
    if visible and not run_file.is_file() and not overwrite:
        raise OutputExistsError(
            f"{out}: folder is not empty and holds no register-batch run ({RUN_FILE}); pass "
            "--overwrite to write into it, or choose another folder"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise IntermodalError(f"{out}: cannot create the folder: {err.strerror}") from err
    text = json.dumps(record, indent=2, default=str) + "\n"
    if overwrite:
        if rank == 0:
            write_text_atomic(run_file, text, overwrite=True)
        return
    try:
        write_text_atomic(run_file, text, overwrite=False)
        return
    except OutputExistsError:
        pass
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntermodalError(f"{run_file}: unreadable run record ({err})") from None
    differences = [
        f"{key}: was {previous.get(key)!r}, now {record[key]!r}"
        for key in ("method", "settings")
        if previous.get(key) != record[key]
    ]
    if differences:
        raise OutputExistsError(
            f"{run_file}: an earlier run used other settings ({'; '.join(differences)}); "
            "resuming would mix results; pass --overwrite or choose another folder"
        )


def _staging_folders(out: Path) -> dict[str, list[Path]]:
    """Hidden staging folders of killed runs in ``out``, by pair name, from one listing.

    Staging folders are those of :class:`intermodal.report.OutputDirectory`
    (:data:`intermodal.report.STAGING_NAME`), ``...old`` ones included. One listing for the
    whole run, not one per pair, so that resuming a run of many pairs stays linear in their
    number.
    """
    from intermodal.report import STAGING_NAME

    found: dict[str, list[Path]] = {}
    for path in out.iterdir():
        match = STAGING_NAME.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink():
            found.setdefault(match["name"], []).append(path)
    return found


def _remove_leftovers(folder: Path, staging: Sequence[Path]) -> None:
    """Remove a pair's incomplete output ``folder`` and its ``staging`` folders."""
    for path in (folder, *staging):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _one_line(err: BaseException) -> str:
    """A failure's reason on one line (SimpleITK's messages span many)."""
    if isinstance(err, RuntimeError) and not isinstance(err, IntermodalError):
        from intermodal.io._itk import itk_reason

        text = f"{type(err).__name__}: {itk_reason(err)}"
    elif isinstance(err, IntermodalError):
        text = " ".join(str(err).split())
    else:
        text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return text[:300]


def run_batch(
    pairs: Sequence[Pair],
    out_dir: str | os.PathLike[str],
    method: PairMethod,
    *,
    rank: int = 0,
    world_size: int = 1,
    overwrite: bool = False,
    keep_going: bool = True,
    progress: Callable[[PairOutcome | None, int, int], None] | None = None,
) -> BatchSummary:
    """Register this process's share of ``pairs``, one output folder per pair, resumably.

    Layout of ``out_dir``: ``batch.json`` (method and settings), and per pair
    ``<fixed id>--<moving id>/`` with the method's outputs and ``done.json`` (written last;
    it names the pair, its inputs, the rank that did it and the time taken). The
    ``report.json`` of intermodal's method also holds ``batch.rank`` and ``batch.world_size``.

    Args:
        pairs: every pair of the run, in the same order in every process (see :func:`shard`).
        out_dir: the output folder; created if missing.
        method: the :class:`PairMethod` to run, e.g. :class:`IntermodalMethod`.
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: the number of processes sharing the pairs.
        overwrite: redo pairs that are done, and allow a folder of another run or settings.
        keep_going: record a failing pair and go on (the default); if false, raise at once.
        progress: optional callback ``(outcome, pairs finished, pairs in this share)``, called
            with ``(None, 0, n)`` first, then before each pair it runs (status ``running``) and
            after every pair.

    Returns:
        A :class:`BatchSummary` of this process's share.

    Raises:
        OutputExistsError: ``out_dir`` holds other files or a run with other settings, and
            ``overwrite`` is false.
        IntermodalError: a bad rank, or (without ``keep_going``) the first failing pair.
    """
    _check_rank(rank, world_size)
    names = [pair.name for pair in pairs]
    if len(set(names)) != len(names):
        raise IntermodalError("the pair list names a pair twice")
    out = Path(out_dir).expanduser().absolute()
    record = _json_normal({"method": method.name, "settings": method.settings()})
    _claim_folder(out, record, rank, overwrite)
    mine = shard(pairs, rank, world_size)
    staging = _staging_folders(out)
    summary = BatchSummary(out_dir=out, rank=rank, world_size=world_size)
    if progress:
        progress(None, 0, len(mine))
    for number, pair in enumerate(mine, start=1):
        folder = out / pair.name
        if not overwrite and read_done(folder, pair) is not None:
            summary.skipped.append(pair.name)
            outcome = PairOutcome(pair.name, "skipped")
        else:
            if progress:
                progress(PairOutcome(pair.name, "running"), number - 1, len(mine))
            leftovers = staging.get(pair.name, [])
            outcome = _run_pair(pair, folder, leftovers, method, rank, world_size, keep_going)
            if outcome.status == "done":
                summary.done.append(pair.name)
            else:
                summary.failed[pair.name] = outcome.message
                logger.warning("pair %s failed: %s", pair.name, outcome.message)
        if progress:
            progress(outcome, number, len(mine))
    return summary


def _run_pair(
    pair: Pair,
    folder: Path,
    leftovers: Sequence[Path],
    method: PairMethod,
    rank: int,
    world_size: int,
    keep_going: bool,
) -> PairOutcome:
    start = time.perf_counter()
    batch = {
        "pair": pair.name,
        "fixed_id": pair.fixed_id,
        "moving_id": pair.moving_id,
        "method": method.name,
        "rank": rank,
        "world_size": world_size,
    }
    try:
        _remove_leftovers(folder, leftovers)
        method(pair, folder, extra_report={"batch": batch})
        if not (folder / REQUIRED_OUTPUT).is_file():
            raise IntermodalError(f"{folder}: method {method.name!r} wrote no {REQUIRED_OUTPUT}")
        seconds = time.perf_counter() - start
        done = {
            **batch,
            "inputs": pair.inputs(),
            "seconds": round(seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_text_atomic(folder / DONE_FILE, json.dumps(done, indent=2) + "\n")
    except Exception as err:  # one pair's failure, whatever it is, must not stop the others
        if not keep_going:
            raise
        return PairOutcome(pair.name, "failed", time.perf_counter() - start, _one_line(err))
    return PairOutcome(pair.name, "done", seconds)
