"""Inputs for fuzzing the readers: small valid seed files and the ways to damage them.

Shared by the hypothesis tests in this folder. Every case is made from plain values (offsets,
byte values, sizes), so hypothesis can shrink a failure and a deeper run can replay one from
its random seed.
Each ``make_*`` function writes one input under a folder and returns the path to read.
"""

from __future__ import annotations

import gzip
import math
import random
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

VOLUME_FORMATS = (".nii", ".nii.gz", ".mha", ".nrrd", ".dcm")
PICTURE_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F")
PICTURE_FORMATS = (".png", ".tif", ".jpg")
UID_ROOT = "1.2.826.0.1.3680043.2.1125.77"
SERIES_ORIGIN = (-20.0, 10.0, 0.0)  # LPS mm of the first voxel of the slice at depth 0

# Values that tend to break parsers: zero, signs, extremes, NaN/Inf in float fields.
INTERESTING_INTS = (0, 1, -1, 2, 3, 4, 7, 8, 127, 128, 255, 256, 32767, -32768, 65535)
INTERESTING_FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, -2.5, float("nan"), float("inf"))

# NIfTI-1 header fields worth aiming at: (offset, struct format, count).
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "i", 1),
    "dim": (40, "h", 8),
    "datatype": (70, "h", 1),
    "bitpix": (72, "h", 1),
    "pixdim": (76, "f", 8),
    "vox_offset": (108, "f", 1),
    "scl_slope": (112, "f", 1),
    "scl_inter": (116, "f", 1),
    "qform_code": (252, "h", 1),
    "sform_code": (254, "h", 1),
    "quatern": (256, "f", 6),
    "srow": (280, "f", 12),
    "magic": (344, "4s", 1),
}


def seed_volume(ndim: int = 3, dtype: type = np.float32) -> sitk.Image:
    """A small ramp with anisotropic spacing and an offset origin."""
    shape = (4, 5, 6)[3 - ndim :]
    values = (np.arange(int(np.prod(shape))).reshape(shape) % 50).astype(dtype)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.8, 1.25, 2.5)[:ndim])
    image.SetOrigin((-10.0, 5.5, 30.0)[:ndim])
    return image


def seed_bytes(ext: str, folder: Path) -> bytes:
    """The bytes of a small valid file of format ``ext`` written by SimpleITK."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"seed{ext}"
    if ext == ".dcm":
        image = sitk.Cast(seed_volume(3, np.int16)[:, :, 0:1], sitk.sitkInt16)
        write_dicom_slice(path, sitk.GetArrayFromImage(image)[0], position=(0.0, 0.0, 0.0))
    else:
        sitk.WriteImage(seed_volume(3), str(path), useCompression=ext == ".nii.gz")
    data = path.read_bytes()
    path.unlink()
    return data


def header_length(ext: str, data: bytes) -> int:
    """How many leading bytes of ``data`` are header (where flips do most damage)."""
    if ext == ".nii":
        return 352
    if ext in (".mha", ".nrrd"):
        marker = b"ElementDataFile = LOCAL\n" if ext == ".mha" else b"\n\n"
        end = data.find(marker)
        return end + len(marker) if end >= 0 else min(len(data), 512)
    if ext == ".dcm":
        return min(len(data), 1200)
    return min(len(data), 64)


def flip_bytes(data: bytes, edits: Sequence[tuple[int, int]]) -> bytes:
    """Set ``data[offset % len(data)] = value`` for each ``(offset, value)``."""
    damaged = bytearray(data)
    for offset, value in edits:
        damaged[offset % len(damaged)] = value & 0xFF
    return bytes(damaged)


def set_nifti_field(data: bytes, field: str, index: int, value: float | int | bytes) -> bytes:
    """Overwrite element ``index`` of a NIfTI-1 header field (little-endian) with ``value``."""
    offset, fmt, count = NIFTI_FIELDS[field]
    size = struct.calcsize("<" + fmt)
    at = offset + (index % count) * size
    if fmt == "4s":
        packed = bytes(value)[:4].ljust(4, b"\0") if isinstance(value, bytes) else b"n+2\0"
    elif fmt in ("h", "i"):
        bits = 8 * size
        packed = struct.pack("<" + fmt, (int(value) + 2 ** (bits - 1)) % 2**bits - 2 ** (bits - 1))
    else:
        packed = struct.pack("<" + fmt, float(value))
    return data[:at] + packed + data[at + size :]


def make_damaged_file(
    folder: Path,
    ext: str,
    seed: bytes,
    *,
    edits: Sequence[tuple[int, int]] = (),
    header_only: bool = True,
    cut: int | None = None,
    name: str = "case",
) -> Path:
    """Write ``seed`` with byte ``edits`` (offsets folded into the header if ``header_only``).

    For ``.nii.gz`` the edits go into the uncompressed NIfTI and it is compressed again, so
    the header is damaged rather than the gzip stream; ``cut`` then truncates the compressed
    bytes (a truncated gzip stream). For other formats ``cut`` truncates the file.
    """
    if ext == ".nii.gz":
        raw = gzip.decompress(seed)
        limit = 352 if header_only else len(raw)
        raw = flip_bytes(raw, [(offset % limit, value) for offset, value in edits])
        data = gzip.compress(raw, mtime=0)
    else:
        limit = header_length(ext, seed) if header_only else len(seed)
        data = flip_bytes(seed, [(offset % limit, value) for offset, value in edits])
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path = folder / f"{name}{ext}"
    path.write_bytes(data)
    return path


def make_picture(
    folder: Path, ext: str, mode: str, size: tuple[int, int], seed: int, *, name: str = "pic"
) -> Path | None:
    """Write a random picture in Pillow ``mode``; ``None`` if the format cannot hold the mode."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "1":
        picture = Image.fromarray(rng.integers(0, 2, (height, width), dtype=np.uint8) * 255)
        picture = picture.convert("1")
    elif mode == "P":
        picture = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        picture = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode == "I;16":
        picture = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    elif mode == "I":
        picture = Image.fromarray(rng.integers(-(2**20), 2**20, (height, width), dtype=np.int32))
    elif mode == "F":
        picture = Image.fromarray(rng.normal(size=(height, width)).astype(np.float32))
    else:
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
        pixels = rng.integers(0, 255, (height, width, channels), dtype=np.uint8)
        picture = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    path = folder / f"{name}{ext}"
    try:
        picture.save(path)
    except (OSError, ValueError, KeyError):
        return None  # e.g. JPEG cannot hold RGBA, palette, 16-bit or float
    return path


def write_dicom_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    position: Sequence[float],
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    spacing: tuple[float, float] = (0.8, 0.75),
    uid: str = f"{UID_ROOT}.1",
    instance: int = 1,
    modality: str = "CT",
) -> None:
    """Write one int16 DICOM slice with the position and orientation tags GDCM sorts on.

    ``spacing`` is ``(row spacing, column spacing)`` in mm, the DICOM PixelSpacing order.
    """
    image = sitk.GetImageFromArray(np.asarray(pixels, dtype=np.int16))
    tags = {
        "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
        "0008|0018": f"{uid}.{instance}",
        "0008|0060": modality,
        "0020|000d": f"{UID_ROOT}.9",
        "0020|000e": uid,
        "0020|0013": str(instance),
        "0020|0032": "\\".join(f"{p:.6f}" for p in position),
        "0020|0037": "\\".join(f"{v:.8f}" for v in orientation),
        "0028|0030": f"{spacing[0]:.6f}\\{spacing[1]:.6f}",
    }
    for tag, value in tags.items():
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)


def slice_pixels(index: int, shape: tuple[int, int] = (5, 6)) -> np.ndarray:
    """Slice ``index`` of a ramp volume whose value grows by 100 per slice (known answers)."""
    return np.full(shape, 100 * index, dtype=np.int16) + np.arange(shape[1], dtype=np.int16)


def make_dicom_series(
    folder: Path,
    positions: Sequence[float],
    *,
    orientations: Sequence[Sequence[float]] | None = None,
    pixels: Sequence[np.ndarray] | None = None,
    lateral: Sequence[float] | None = None,
    uid: str = f"{UID_ROOT}.1",
) -> Path:
    """Write one series: slice ``k`` at ``positions[k]`` mm along the normal of its orientation.

    Args:
        folder: created if missing; one ``.dcm`` file per slice, named in write order.
        positions: where each slice lies along the slice normal, in mm, in write order.
        orientations: per slice, the 6 direction cosines (row then column); axial by default.
        pixels: per slice, an int16 ``(rows, columns)`` array; by default ``slice_pixels(k)``.
        lateral: per slice, an in-plane shift in mm along the row direction (a sheared stack).
        uid: the SeriesInstanceUID.

    Returns:
        ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for k, depth in enumerate(positions):
        orientation = np.asarray(
            orientations[k] if orientations is not None else (1, 0, 0, 0, 1, 0), dtype=float
        )
        row, column = orientation[:3], orientation[3:]
        normal = np.cross(row, column)
        origin = np.array(SERIES_ORIGIN) + depth * normal
        if lateral is not None:
            origin = origin + lateral[k] * row
        write_dicom_slice(
            folder / f"slice{k:03d}.dcm",
            pixels[k] if pixels is not None else slice_pixels(k),
            position=origin,
            orientation=orientation,
            uid=uid,
            instance=k + 1,
        )
    return folder


def random_edits(rng: random.Random, most: int = 8) -> list[tuple[int, int]]:
    """1 to ``most`` random ``(offset, value)`` byte edits for :func:`flip_bytes`."""
    return [(rng.randrange(1 << 16), rng.randrange(256)) for _ in range(rng.randint(1, most))]


def make_random_series(folder: Path, rng: random.Random) -> dict | None:
    """Write a DICOM series with random defects; return what a correct reader must give.

    Defects: missing slices, duplicates (identical or not), uneven positions, a tilted slice,
    a sheared stack, a slice of another size, files in shuffled order, and sometimes a
    damaged file. Returns the oracle for :func:`check_series`: ``{"refuse": bool,
    "depths": [mm], "values": [...]}`` (``refuse`` when the series must not be read), or
    ``None`` when a file was damaged (then any clean outcome will do).
    """
    count = rng.randint(1, 8)
    spacing = rng.choice([1.0, 2.5, 3.0])
    positions = [k * spacing for k in range(count)]
    pixels = [slice_pixels(k) for k in range(count)]
    orientations = [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)] * count
    shear = 0.0
    for _ in range(rng.randint(0, 3)):
        defect = rng.choice(["missing", "duplicate", "uneven", "tilt", "shear", "size", "shuffle"])
        if defect == "missing" and len(positions) > 2:
            k = rng.randrange(1, len(positions) - 1)
            del positions[k], pixels[k], orientations[k]
        elif defect == "duplicate" and positions:
            k = rng.randrange(len(positions))
            same = rng.random() < 0.5
            positions.insert(k, positions[k])
            pixels.insert(k, pixels[k] if same else pixels[k] + 7)
            orientations.insert(k, orientations[k])
        elif defect == "uneven" and positions:
            k = rng.randrange(len(positions))
            positions[k] += rng.uniform(-0.6, 0.6) * spacing
        elif defect == "tilt" and positions:
            k = rng.randrange(len(positions))
            angle = rng.choice([0.05, 0.3, 1.57])
            orientations[k] = (1.0, 0.0, 0.0, 0.0, math.cos(angle), math.sin(angle))
        elif defect == "shear":
            shear = rng.uniform(0.1, 1.0)
        elif defect == "size" and pixels:
            k = rng.randrange(len(pixels))
            pixels[k] = slice_pixels(k, (rng.randint(1, 7), rng.randint(1, 7)))
        elif defect == "shuffle":
            order = list(range(len(positions)))
            rng.shuffle(order)
            positions = [positions[k] for k in order]
            pixels = [pixels[k] for k in order]
            orientations = [orientations[k] for k in order]
    if not positions:
        positions, pixels, orientations = (
            [0.0],
            [slice_pixels(0)],
            orientations[:1] or [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)],
        )
    # What a correct reader gives: slice k's values are 100 * k + column (see slice_pixels);
    # tilted, sheared, resized or conflicting duplicate slices must be refused.
    refuse = (shear != 0.0 and len(positions) > 1) or len({tuple(o) for o in orientations}) > 1
    refuse = refuse or len({p.shape for p in pixels}) > 1
    refuse = refuse or any(
        positions[i] == positions[j] and not np.array_equal(pixels[i], pixels[j])
        for i in range(len(positions))
        for j in range(i)
    )
    oracle = {"refuse": refuse, "depths": positions, "values": [float(p[0, 0]) for p in pixels]}
    make_dicom_series(
        folder,
        positions,
        orientations=orientations,
        pixels=pixels,
        lateral=[k * shear for k in range(len(positions))] if shear else None,
    )
    if rng.random() < 0.2:  # damage one slice file as well
        victim = rng.choice(sorted(folder.iterdir()))
        data = victim.read_bytes()
        cut = rng.randrange(len(data)) if rng.random() < 0.5 else None
        oracle = None
        victim.write_bytes(
            flip_bytes(data[: cut if cut is not None else len(data)], random_edits(rng, 3))
            if cut is None
            else data[:cut]
        )
    return oracle


def check_series(image: sitk.Image, oracle: dict) -> str | None:
    """What is wrong with a series read from :func:`make_random_series`'s files, or ``None``."""
    if oracle["refuse"]:
        return "a defective series (tilt, shear, sizes or conflicting slices) was read"
    normal = np.reshape(image.GetDirection(), (3, 3))[:, 2]
    start = np.dot(image.GetOrigin(), normal) - np.dot(SERIES_ORIGIN, normal)
    depths = start + image.GetSpacing()[2] * np.arange(image.GetSize()[2])
    order = np.argsort(oracle["depths"])
    expected = np.interp(
        depths, np.array(oracle["depths"])[order], np.array(oracle["values"])[order]
    )
    got = sitk.GetArrayViewFromImage(image)[:, 0, 0]
    # Gaps within 1% of each other count as even (DICOM positions are rounded): a slice may
    # sit up to 1% of a gap off, which moves values by up to 1 (100 per slice).
    if not np.allclose(got, expected, rtol=0, atol=2.0):
        return f"slice values {got.tolist()} at {depths.tolist()} mm, expected {expected.tolist()}"
    return None


# --------------------------------------------------------------------------- text headers

HEADER_TOKENS = (
    "0", "-1", "1", "2", "4", "nan", "inf", "-inf", "1e308", "99999999", "65536 65536 65536",
    "", "abc", "0 0 0", "1 1", "-2.5 1 1", "MET_FLOAT", "MET_UCHAR", "MET_OTHER", "float",
    "double", "raw", "gzip", "True", "False", "LOCAL", "missing.raw", "1 0 0 0 1 0 0 0 1",
    "0 0 0 0 0 0 0 0 0", "(1,0,0) (0,1,0) (0,0,1)", "(nan,0,0) (0,1,0) (0,0,1)", "none",
)  # fmt: skip


def replace_header_value(data: bytes, line: int, token: str) -> bytes:
    """Replace the value of text header line ``line`` (counted modulo the header) by ``token``.

    Works for MetaImage (``Key = value``) and NRRD (``key: value``) headers; the voxel data
    after the header is kept.
    """
    ext_end = data.find(b"ElementDataFile = LOCAL\n")
    end = ext_end if ext_end >= 0 else data.find(b"\n\n")
    if end < 0:
        return data
    lines = data[:end].split(b"\n")
    k = line % len(lines)
    text = lines[k].decode("latin-1")
    for sep in (" = ", ": ", ":="):
        if sep in text:
            key = text.split(sep, 1)[0]
            lines[k] = f"{key}{sep}{token}".encode("latin-1")
            break
    return b"\n".join(lines) + data[end:]


# --------------------------------------------------------------------------- points

POINT_TOKENS = (
    "x", "y", "z", "X", "1", "-2.5", "1e3", "nan", "inf", "-inf", "", " ", "abc", "\"1\"",
    "\"", "1,2", "0x10", "1_0", "\u00e9", "1e999", "--1", "+.5", "\t",
)  # fmt: skip


def make_points_text(rows: Sequence[Sequence[str]], *, separator: str = ",") -> str:
    """CSV text from rows of tokens (the first row usually a header)."""
    return "".join(separator.join(row) + "\n" for row in rows)


# --------------------------------------------------------------------------- verdicts


def read_outcome(reader: str, path: Path) -> tuple[str, str]:
    """Read ``path`` and judge the outcome: ``("read" | "refused" | a failure kind, detail)``.

    Passing outcomes are ``"read"`` (a float32 image with finite values and positive
    spacing, or an ``(N, 2|3)`` array of finite points) and ``"refused"`` (an
    ``IntermodalError`` whose message is one line naming the file). Failures: ``"escaped"``
    (any other exception), ``"message"`` (a badly worded refusal), ``"result"`` (a bad result),
    ``"memory"`` (refused only because an allocation failed: the header was not checked).
    """
    from intermodal.errors import IntermodalError
    from intermodal.io import read_image, read_points

    try:
        result = read_points(path) if reader == "points" else read_image(path)
    except IntermodalError as err:
        message = str(err)
        if any(word in message for word in ("bad_alloc", "allocate", "MemoryError")):
            return "memory", message  # refused only because memory ran out: a bomb got in
        if "\n" in message or path.name not in message:
            return "message", f"{type(err).__name__}: {message!r}"
        return "refused", message
    except Exception as err:  # noqa: BLE001 - anything else is exactly what we look for
        return "escaped", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    if reader == "points":
        ok = result.ndim == 2 and result.shape[1] in (2, 3) and np.isfinite(result).all()
        return ("read", f"{result.shape}") if ok else ("result", f"points {result!r}")
    problems = []
    if result.GetPixelID() != sitk.sitkFloat32:
        problems.append(f"pixel type {result.GetPixelIDTypeAsString()}")
    if result.GetDimension() not in (2, 3):
        problems.append(f"{result.GetDimension()}D")
    if not all(np.isfinite(s) and s > 0 for s in result.GetSpacing()):
        problems.append(f"spacing {result.GetSpacing()}")
    if not np.isfinite(result.GetOrigin()).all() or not np.isfinite(result.GetDirection()).all():
        problems.append(f"origin {result.GetOrigin()} direction {result.GetDirection()}")
    elif abs(np.linalg.det(np.reshape(result.GetDirection(), (result.GetDimension(),) * 2))) < 0.5:
        problems.append(f"direction {result.GetDirection()} is not a rotation")
    if not np.isfinite(sitk.GetArrayViewFromImage(result)).all():
        problems.append("non-finite values")
    if problems:
        return "result", "; ".join(problems)
    return "read", f"size {result.GetSize()}"
