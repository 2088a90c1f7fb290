"""Dataset manifests: which CT/MR pairs a dataset holds, their label maps and their splits.

Two formats are read:

- JSON, as written by :func:`intermodal.data.synth.write_dataset` (Learn2Reg style)::

      {"name": "...", "labels": {"0": "background", "1": "bladder", ...},
       "subjects": [{"id": "subject_000", "ct": "subject_000/ct.nii.gz",
                     "mr": "subject_000/mr.nii.gz", "labels": "...", "mr_labels": "...",
                     "seed": 0, ...}, ...],
       "training": ["subject_000", ...], "validation": [...], "test": [...]}

- CSV with a header ``id,ct,mr[,labels][,mr_labels][,landmarks][,split]``; ``split`` is
  ``training``, ``validation``, ``test`` or empty. Without a ``split`` column every subject is
  in ``training``.

Paths are relative to the manifest's folder (absolute paths are kept). :func:`load_manifest`
checks everything up front and reports every problem it finds in one :class:`ManifestError`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from intermodal.errors import IntermodalError
from intermodal.io import write_text_atomic

SPLITS = ("training", "validation", "test")
"""The split names a manifest may hold, in this order."""

IMAGE_KEYS = ("ct", "mr", "labels", "mr_labels")
"""Subject keys that name image files (``ct`` and ``mr`` required)."""

_FILE_KEYS = (*IMAGE_KEYS, "landmarks")
_CSV_COLUMNS = ("id", *_FILE_KEYS, "split")


class ManifestError(IntermodalError):
    """A manifest with one or more problems; the message lists all of them, one per line.

    Raised as ``ManifestError(path, problems)``; ``ManifestError(message)`` also works.

    Attributes:
        path: the manifest file (``None`` for a ready-made message).
        problems: one line per problem, each naming the subject and the file concerned.
    """

    def __init__(
        self, path: str | os.PathLike[str], problems: Sequence[str] | str | None = None
    ) -> None:
        if problems is None:  # a ready-made message
            self.path, self.problems = None, [str(path)]
            super().__init__(str(path))
            return
        self.path = Path(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        lines = [f"{self.path}: {n} problem{'' if n == 1 else 's'}:"]
        lines += [f"  - {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class SubjectEntry:
    """One subject: a CT and an MR of the same body, with optional labels and landmarks.

    Every path is absolute. ``labels`` lies on the CT grid, ``mr_labels`` on the MR grid.
    ``extra`` holds the subject's other manifest keys as they were written (e.g. ``seed``).
    """

    id: str
    ct: Path
    mr: Path
    labels: Path | None = None
    mr_labels: Path | None = None
    landmarks: Path | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Manifest:
    """A dataset: its subjects, label names and splits.

    Attributes:
        path: the manifest file (absolute).
        name: the dataset's name (the file's stem when the manifest names none).
        labels: label value -> label name.
        subjects: every subject, in manifest order.
        splits: split name (``training``, ``validation``, ``test``) -> subject ids.
        info: other top-level keys of a JSON manifest (e.g. ``description``, ``prepared``);
            written back by :func:`write_manifest`.
    """

    path: Path
    name: str
    labels: dict[int, str]
    subjects: list[SubjectEntry]
    splits: dict[str, list[str]]
    info: dict = field(default_factory=dict)

    def split(self, name: str) -> list[SubjectEntry]:
        """The subjects of split ``name``, in the split's order (empty if the split is absent).

        Raises:
            IntermodalError: ``name`` is not one of ``training``, ``validation``, ``test``
                or another split the manifest holds.
        """
        if name not in self.splits and name not in SPLITS:
            known = ", ".join(dict.fromkeys([*SPLITS, *self.splits]))
            raise IntermodalError(f"{self.path}: no split {name!r}; splits are {known}")
        by_id = {s.id: s for s in self.subjects}
        return [by_id[i] for i in self.splits.get(name, [])]

    def subject(self, id: str) -> SubjectEntry:
        """The subject called ``id``.

        Raises:
            IntermodalError: no subject has that id.
        """
        for entry in self.subjects:
            if entry.id == id:
                return entry
        raise IntermodalError(f"{self.path}: no subject with id {id!r}")


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: dimension, and size/spacing/origin in (x, y, z)."""

    ndim: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


def read_image_header(path: str | os.PathLike[str]) -> ImageHeader:
    """The grid of an image file, from its header alone where SimpleITK can read one.

    Files whose header cannot be read on its own (a DICOM directory, an RGB picture, a header
    SimpleITK refuses) are read in full by :func:`intermodal.io.read_image`, which also gives
    the precise reason when the file is not a usable image. A file with a sound header but
    truncated or non-finite data passes here; it fails when it is read.

    Raises:
        ImageReadError: the file is missing or not a readable 2D/3D scalar image.
    """
    from intermodal.io import READ_EXTENSIONS, read_image  # io pulls in DICOM support

    path = Path(path)
    name = path.name.lower()
    ext = ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()
    if path.is_file() and ext in READ_EXTENSIONS:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            pass  # read_image below says why, in words a user can act on
        else:
            size = tuple(int(n) for n in reader.GetSize())
            spacing = tuple(float(s) for s in reader.GetSpacing())
            usable = (
                reader.GetDimension() in (2, 3)
                and reader.GetNumberOfComponents() == 1
                and 0 not in size
                and all(math.isfinite(s) and s > 0 for s in spacing)
            )
            if usable:
                return ImageHeader(
                    reader.GetDimension(),
                    size,
                    spacing,
                    tuple(float(o) for o in reader.GetOrigin()),
                    tuple(float(d) for d in reader.GetDirection()),
                )
    image = read_image(path)
    return ImageHeader(
        image.GetDimension(),
        tuple(image.GetSize()),
        tuple(image.GetSpacing()),
        tuple(image.GetOrigin()),
        tuple(image.GetDirection()),
    )


# ---------------------------------------------------------------------------------------------
# Reading


def load_manifest(
    path: str | os.PathLike[str],
    *,
    check_files: bool = True,
    required_splits: Sequence[str] = ("training",),
) -> Manifest:
    """Read a JSON or CSV manifest and check it, reporting every problem at once.

    Always checked: the file parses; ``subjects`` is a list of entries with ``id``, ``ct`` and
    ``mr``; ids are unique; split lists name existing subjects, no subject sits in two splits,
    each split in ``required_splits`` is non-empty; every named file exists. With
    ``check_files`` also: every image is readable (its header; see :func:`read_image_header`),
    CT and MR are both 2D or both 3D and so is every subject of the dataset, ``labels`` has the
    CT's grid and ``mr_labels`` the MR's.

    Args:
        path: the manifest (``.json`` or ``.csv``), or a folder holding ``dataset.json``.
        check_files: also open every image (headers only where possible).
        required_splits: splits that must hold at least one subject.

    Returns:
        The :class:`Manifest`, with absolute paths.

    Raises:
        ManifestError: one or more problems; the message lists them all, one per line.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "dataset.json"
    path = path.absolute()
    if not path.is_file():
        raise ManifestError(path, "manifest file not found")
    problems: list[str] = []
    if path.suffix.lower() == ".csv":
        raw = _read_csv(path, problems)
    else:
        raw = _read_json(path, problems)
    if raw is None:
        raise ManifestError(path, problems)

    root = path.parent
    subjects = _parse_subjects(raw["subjects"], root, problems)
    ids = [s.id for s in subjects]
    for id_, count in Counter(ids).items():
        if count > 1:
            problems.append(f"subject {id_}: id used by {count} subjects")
    splits = _check_splits(raw["splits"], set(ids), required_splits, problems)
    for entry in subjects:
        for key in _FILE_KEYS:
            file = getattr(entry, key)
            if file is not None and not file.exists():
                problems.append(f"subject {entry.id}: {key} {file}: file not found")
    if check_files:
        _check_images(subjects, problems)
    if problems:
        raise ManifestError(path, problems)
    return Manifest(
        path=path,
        name=raw["name"],
        labels=raw["labels"],
        subjects=subjects,
        splits=splits,
        info=raw["info"],
    )


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        problems.append(f"cannot read the manifest: {err.strerror or err}")
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"not valid JSON: {err}")
        return None
    if not isinstance(data, dict):
        problems.append(f"expected a JSON object at the top level, found {type(data).__name__}")
        return None
    subjects = data.get("subjects")
    if subjects is None:
        problems.append('missing key "subjects" (a list of {"id", "ct", "mr", ...} entries)')
        subjects = []
    elif not isinstance(subjects, list):
        problems.append(f'"subjects" must be a list, found {type(subjects).__name__}')
        subjects = []
    labels: dict[int, str] = {}
    raw_labels = data.get("labels", {})
    if not isinstance(raw_labels, dict):
        problems.append(f'"labels" must map values to names, found {type(raw_labels).__name__}')
    else:
        for key, value in raw_labels.items():
            try:
                labels[int(key)] = str(value)
            except ValueError:
                problems.append(f"labels: key {key!r} is not an integer label value")
    splits = {name: data[name] for name in SPLITS if name in data}
    known = {"name", "labels", "subjects", *SPLITS}
    return {
        "name": str(data.get("name") or path.stem),
        "labels": labels,
        "subjects": subjects,
        "splits": splits,
        "info": {k: v for k, v in data.items() if k not in known},
    }


def _read_csv(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        problems.append(f"cannot read the manifest: {err.strerror or err}")
        return None
    except (UnicodeDecodeError, csv.Error) as err:
        problems.append(f"not a valid CSV file: {err}")
        return None
    if not rows:
        problems.append("empty CSV file; expected a header id,ct,mr[,labels][,mr_labels]...")
        return None
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("id", "ct", "mr") if c not in header]
    if missing:
        problems.append(
            f"CSV header lacks column(s) {', '.join(missing)}; found {','.join(header)}"
        )
        return None
    subjects = []
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            problems.append(f"line {line}: {len(row)} cells but the header has {len(header)}")
            continue
        values = {h: cell.strip() for h, cell in zip(header, row)}
        entry = {k: v for k, v in values.items() if v and k != "split"}
        subjects.append(entry)
        split = values.get("split", "training" if "split" not in header else "").lower()
        if split in splits:
            if entry.get("id"):
                splits[split].append(entry["id"])
        elif split:
            problems.append(
                f"line {line}: subject {entry.get('id', '?')}: split {split!r} is not one of "
                f"{', '.join(SPLITS)}"
            )
    return {"name": path.stem, "labels": {}, "subjects": subjects, "splits": splits, "info": {}}


def _parse_subjects(raw: list, root: Path, problems: list[str]) -> list[SubjectEntry]:
    subjects = []
    for k, item in enumerate(raw):
        where = f"subjects[{k}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, found {type(item).__name__}")
            continue
        id_ = item.get("id")
        if isinstance(id_, (int, str)) and not isinstance(id_, bool) and str(id_).strip():
            id_ = str(id_).strip()
            where = f"subject {id_}"
        else:
            problems.append(f'{where}: missing or empty "id"')
            continue
        paths: dict[str, Path | None] = {}
        ok = True
        for key in _FILE_KEYS:
            value = item.get(key)
            if value is None or value == "":
                if key in ("ct", "mr"):
                    problems.append(f'{where}: missing "{key}" (a path to the {key.upper()})')
                    ok = False
                paths[key] = None
            elif not isinstance(value, str):
                problems.append(f'{where}: "{key}" must be a path, found {value!r}')
                ok = False
            else:
                paths[key] = Path(os.path.normpath(root / Path(value).expanduser()))
        if ok:
            extra = {k: v for k, v in item.items() if k not in ("id", *_FILE_KEYS)}
            subjects.append(SubjectEntry(id=id_, **paths, extra=extra))  # type: ignore[arg-type]
    return subjects


def _check_splits(
    raw: dict[str, Any], ids: set[str], required: Sequence[str], problems: list[str]
) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {}
    for name in SPLITS:
        members = raw.get(name, [])
        if not isinstance(members, list):
            problems.append(f'split "{name}": must be a list of subject ids')
            members = []
        clean = []
        for member in members:
            if isinstance(member, dict) and "id" in member:
                member = member["id"]
            if not isinstance(member, (str, int)) or isinstance(member, bool):
                problems.append(f'split "{name}": entry {member!r} is not a subject id')
                continue
            member = str(member)
            if member not in ids:
                problems.append(f'split "{name}": subject {member}: no subject has this id')
            elif member in clean:
                problems.append(f'split "{name}": subject {member}: listed twice')
            else:
                clean.append(member)
        splits[name] = clean
    seen: dict[str, str] = {}
    for name in SPLITS:
        for member in splits[name]:
            if member in seen:
                problems.append(f"subject {member}: in both {seen[member]} and {name} splits")
            else:
                seen[member] = name
    for name in required:
        if not splits.get(name):
            problems.append(f'split "{name}": empty, but at least one subject is needed')
    return {name: members for name, members in splits.items() if name in raw or members}


def _check_images(subjects: list[SubjectEntry], problems: list[str]) -> None:
    from intermodal.errors import ImageReadError

    ct_dims: dict[str, int] = {}
    for entry in subjects:
        headers: dict[str, ImageHeader] = {}
        for key in IMAGE_KEYS:
            file = getattr(entry, key)
            if file is None or not file.exists():
                continue
            try:
                headers[key] = read_image_header(file)
            except ImageReadError as err:
                problems.append(f"subject {entry.id}: {key} {err}")
        ct, mr = headers.get("ct"), headers.get("mr")
        if ct and mr and ct.ndim != mr.ndim:
            problems.append(
                f"subject {entry.id}: ct {entry.ct} is {ct.ndim}D but mr {entry.mr} is "
                f"{mr.ndim}D; both must be 2D or both 3D"
            )
        if ct:
            ct_dims[entry.id] = ct.ndim
        for labels, image in (("labels", "ct"), ("mr_labels", "mr")):
            if labels in headers and image in headers:
                mismatch = _grid_mismatch(headers[labels], headers[image])
                if mismatch:
                    problems.append(
                        f"subject {entry.id}: {labels} {getattr(entry, labels)} must lie on the "
                        f"{image.upper()} grid ({getattr(entry, image)}): {mismatch}"
                    )
    if len(set(ct_dims.values())) > 1:
        usual = Counter(ct_dims.values()).most_common(1)[0][0]
        for id_, ndim in ct_dims.items():
            if ndim != usual:
                problems.append(
                    f"subject {id_}: ct is {ndim}D but most subjects of the dataset are {usual}D"
                )


def _grid_mismatch(labels: ImageHeader, image: ImageHeader) -> str:
    if labels.ndim != image.ndim or labels.size != image.size:
        return f"size {labels.size} differs from {image.size}"
    tolerance = 1e-3 * min(image.spacing)
    if any(abs(a - b) > tolerance for a, b in zip(labels.spacing, image.spacing)):
        return f"spacing {labels.spacing} mm differs from {image.spacing} mm"
    if any(abs(a - b) > tolerance for a, b in zip(labels.origin, image.origin)):
        return f"origin {labels.origin} mm differs from {image.origin} mm"
    return ""


# ---------------------------------------------------------------------------------------------
# Writing


def _relative(file: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(file, root)).as_posix()
    except ValueError:  # another drive on Windows
        return str(file)


def write_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` as JSON to ``path``, with file paths relative to ``path``'s folder.

    The file is written to a temporary name beside ``path`` and moved into place, replacing
    any existing file. ``manifest.path`` is not changed.

    Returns:
        ``path`` as an absolute :class:`~pathlib.Path`.

    Raises:
        IntermodalError: the file cannot be written.
    """
    path = Path(path).expanduser().absolute()
    root = path.parent
    subjects = []
    for entry in manifest.subjects:
        item: dict[str, Any] = {"id": entry.id}
        for key in _FILE_KEYS:
            file = getattr(entry, key)
            if file is not None:
                item[key] = _relative(Path(file), root)
        item.update(entry.extra)
        subjects.append(item)
    data: dict[str, Any] = {
        "name": manifest.name,
        **manifest.info,
        "labels": {str(k): v for k, v in sorted(manifest.labels.items())},
        "subjects": subjects,
    }
    for name in SPLITS:
        data[name] = list(manifest.splits.get(name, []))
    for name, members in manifest.splits.items():
        data.setdefault(name, list(members))
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return path
