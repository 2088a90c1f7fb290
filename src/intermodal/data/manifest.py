"""Dataset manifests: Learn2Reg-style JSON (or CSV) listing subjects and their splits.

Paths in a manifest are relative to the manifest's folder. :func:`load_manifest` checks the
whole manifest before any work starts and reports every problem it finds in one error.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from intermodal.errors import IntermodalError

SPLITS = ("training", "validation", "test")
_FILE_KEYS = ("ct", "mr", "labels", "mr_labels", "landmarks")


class ManifestError(IntermodalError):
    """A manifest with problems; the message lists every one of them, a line each."""


@dataclass(frozen=True)
class SubjectEntry:
    """One subject: a CT and an MR pre-aligned to it, with optional labels and landmarks."""

    id: str
    ct: Path
    mr: Path
    labels: Path | None = None
    mr_labels: Path | None = None
    landmarks: Path | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Manifest:
    """A dataset: subjects, label names and splits."""

    path: Path
    name: str
    labels: dict[int, str]
    subjects: list[SubjectEntry]
    splits: dict[str, list[str]]

    def subject(self, id: str) -> SubjectEntry:
        """The subject called ``id``."""
        for entry in self.subjects:
            if entry.id == id:
                return entry
        raise IntermodalError(f"{self.path}: no subject {id!r}")

    def split(self, name: str) -> list[SubjectEntry]:
        """The subjects of split ``name`` (``training``, ``validation`` or ``test``)."""
        return [self.subject(id) for id in self.splits.get(name, [])]


def _read_json(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: not a readable JSON manifest ({error})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a JSON manifest must be an object")
    if not isinstance(data.get("subjects"), list):
        problems.append("no 'subjects' list")
        data["subjects"] = []
    return data


def _read_csv(path: Path) -> dict[str, Any]:
    try:
        with open(path, newline="") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"{path}: not a readable CSV manifest ({error})") from None
    data: dict[str, Any] = {"name": path.stem, "subjects": []}
    for split in SPLITS:
        data[split] = []
    for row in rows:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        split = row.pop("split", "")
        data["subjects"].append({k: v for k, v in row.items() if v})
        if split:
            data.setdefault(split, []).append(row.get("id", ""))
    return data


def _image_info(path: Path) -> tuple[int, tuple[int, ...]] | str:
    """(dimension, size) from the header alone, or a one-line reason it cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return "not a readable image"
    return reader.GetDimension(), tuple(reader.GetSize())


def load_manifest(
    path: str | os.PathLike,
    *,
    check_files: bool = True,
    required_splits: Sequence[str] = ("training",),
) -> Manifest:
    """Read and check a manifest, reporting every problem at once.

    Args:
        path: a ``.json`` (Learn2Reg style) or ``.csv`` manifest.
        check_files: also check that every file exists, is an image, and that CT, MR and
            labels agree in dimension (labels also in size, since they are in CT space).
        required_splits: splits that must list at least one subject.

    Returns:
        The :class:`Manifest`, paths resolved against the manifest's folder.

    Raises:
        ManifestError: listing every problem found, one per line.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    problems: list[str] = []
    data = _read_csv(path) if path.suffix.lower() == ".csv" else _read_json(path, problems)
    root = path.parent
    subjects: list[SubjectEntry] = []
    seen: set[str] = set()
    dims: dict[str, int] = {}
    for number, raw in enumerate(data["subjects"]):
        if not isinstance(raw, dict):
            problems.append(f"subject #{number}: not an object")
            continue
        id = str(raw.get("id", "")).strip() or f"#{number}"
        if id in seen:
            problems.append(f"subject {id}: duplicate id")
        seen.add(id)
        missing = [key for key in ("ct", "mr") if not raw.get(key)]
        if missing:
            problems.append(f"subject {id}: no {' or '.join(missing)} file given")
            continue
        files = {key: root / str(raw[key]) for key in _FILE_KEYS if raw.get(key)}
        extra = {k: v for k, v in raw.items() if k not in _FILE_KEYS and k != "id"}
        subjects.append(SubjectEntry(id=id, extra=extra, **files))
        if not check_files:
            continue
        info = {}
        for key, file in files.items():
            if not file.is_file():
                problems.append(f"subject {id}: {key} file {file} not found")
            elif key != "landmarks":
                result = _image_info(file)
                if isinstance(result, str):
                    problems.append(f"subject {id}: {key} file {file} is {result}")
                else:
                    info[key] = result
        if "ct" in info and "mr" in info and info["ct"][0] != info["mr"][0]:
            problems.append(
                f"subject {id}: CT is {info['ct'][0]}D but MR is {info['mr'][0]}D ({files['mr']})"
            )
        if "ct" in info and "labels" in info and info["ct"][1] != info["labels"][1]:
            problems.append(
                f"subject {id}: labels size {info['labels'][1]} differs from CT size "
                f"{info['ct'][1]} ({files['labels']})"
            )
        if "ct" in info:
            dims[id] = info["ct"][0]
    if len(set(dims.values())) > 1:
        problems.append(f"subjects mix 2D and 3D CTs: {dims}")
    splits: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for split in SPLITS:
        ids = [str(i) for i in data.get(split, []) or []]
        splits[split] = ids
        for id in ids:
            if id not in seen:
                problems.append(f"split {split}: names unknown subject {id!r}")
            elif id in owner:
                problems.append(f"subject {id}: in both {owner[id]} and {split}")
            owner.setdefault(id, split)
    for split in required_splits:
        if not splits.get(split):
            problems.append(f"split {split}: is empty")
    if problems:
        lines = [f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:"]
        raise ManifestError("\n".join(lines + [f"  - {p}" for p in problems]))
    labels = {int(k): str(v) for k, v in (data.get("labels") or {}).items()}
    return Manifest(path, str(data.get("name", path.stem)), labels, subjects, splits)


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write ``manifest`` as JSON at ``path`` with paths relative to its folder (atomically)."""
    path = Path(path)
    root = path.absolute().parent
    subjects = []
    for entry in manifest.subjects:
        record: dict[str, Any] = {"id": entry.id}
        for key in _FILE_KEYS:
            value = getattr(entry, key)
            if value is not None:
                record[key] = os.path.relpath(Path(value).absolute(), root)
        record.update(entry.extra)
        subjects.append(record)
    data = {
        "name": manifest.name,
        "labels": {str(k): v for k, v in manifest.labels.items()},
        "subjects": subjects,
        **{split: list(manifest.splits.get(split, [])) for split in SPLITS},
    }
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
