"""Cheap checks that an image file is complete before SimpleITK reads it.

SimpleITK 2.5 reads a truncated ``.nii.gz`` or ``.nii`` without raising and fills the missing
voxels with zeros; its NIfTI reader silently replaces a zero ``pixdim`` by 1 and NaN or Inf
voxels by 0. These checks read the header and stream the data once (in chunks, nothing kept)
so such files are refused instead of being read wrong.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intermodal.errors import ImageReadError

_CHUNK = 1 << 22

# Bytes per element of MetaImage element types.
_MET_SIZES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip


def check_file(path: Path, ext: str) -> None:
    """Run the checks that apply to extension ``ext``; raise :class:`ImageReadError` on failure."""
    if ext in (".nii", ".nii.gz"):
        # Go by content, as ITK does: an uncompressed NIfTI named .nii.gz reads fine.
        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        _check_nifti(path, compressed=compressed)
    elif ext in (".mha", ".mhd"):
        _check_metaimage(path)


@dataclass(frozen=True)
class _NiftiLayout:
    sizes: tuple[int, ...]
    data_start: int
    data_stop: int | None  # None: the data size cannot be told from the header
    float_dtype: np.dtype | None  # set for float32/float64 data, which may hold NaN or Inf


def _check_nifti(path: Path, *, compressed: bool) -> None:
    """Check a NIfTI file's header, that it holds all its voxels and that floats are finite.

    ``.nii.gz`` is decompressed to its end in chunks (nothing kept), which also proves the gzip
    stream complete. Float data is scanned for NaN and Inf because the NIfTI reader in ITK
    silently replaces them by 0.
    """
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as f:
            head = f.read(540)
            layout = _parse_nifti_header(path, head)
            if layout.float_dtype is None or layout.data_stop is None:
                if not compressed:
                    _check_nifti_size(path, layout, path.stat().st_size)
                    return
                counter = None
            else:
                counter = _NonFiniteCounter(layout.float_dtype, layout.data_start, layout.data_stop)
                counter.feed(head, 0)
            total = len(head)
            while chunk := f.read(_CHUNK):
                if counter is not None:
                    counter.feed(chunk, total)
                total += len(chunk)
    except EOFError as err:
        raise ImageReadError(f"{path}: truncated gzip stream (file ends early)") from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise ImageReadError(f"{path}: not a valid gzip file ({_one_line(err)})") from err
    _check_nifti_size(path, layout, total)
    if counter is not None and counter.nan + counter.inf:
        bad = counter.nan + counter.inf
        raise ImageReadError(
            f"{path}: {bad} of {math.prod(layout.sizes)} voxels are not finite "
            f"({counter.nan} NaN, {counter.inf} infinite)"
        )


def _check_nifti_size(path: Path, layout: _NiftiLayout, file_size: int) -> None:
    if layout.data_stop is not None and file_size < layout.data_stop:
        raise ImageReadError(
            f"{path}: truncated NIfTI data: {file_size} bytes, the header needs {layout.data_stop}"
        )


def _parse_nifti_header(path: Path, head: bytes) -> _NiftiLayout:
    """Read the fields of a NIfTI-1 or NIfTI-2 header that say where the voxels are."""
    if len(head) < 4:
        raise ImageReadError(f"{path}: not a NIfTI file (only {len(head)} bytes)")
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", head[:4])
        if sizeof_hdr in (348, 540):
            break
    else:
        raise ImageReadError(f"{path}: not a NIfTI file (header size field is {sizeof_hdr})")
    if len(head) < sizeof_hdr:
        raise ImageReadError(f"{path}: truncated NIfTI header ({len(head)} of {sizeof_hdr} bytes)")
    if sizeof_hdr == 348:
        dim = struct.unpack(endian + "8h", head[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
        pixdim = struct.unpack(endian + "8f", head[76:108])
        vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
        single_file = head[344:347] == b"n+1"
    else:
        datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
        dim = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        vox_offset = struct.unpack(endian + "q", head[168:176])[0]
        single_file = head[4:7] == b"n+2"
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise ImageReadError(f"{path}: corrupt NIfTI header: dim[0] is {ndim}, expected 1 to 7")
    sizes = tuple(int(d) for d in dim[1 : ndim + 1])
    if any(d < 0 for d in sizes):
        raise ImageReadError(f"{path}: corrupt NIfTI header: negative size {sizes}")
    if any(d == 0 for d in sizes):
        raise ImageReadError(f"{path}: empty image: size {sizes}")
    spatial = pixdim[1 : min(ndim, 3) + 1]
    if not all(math.isfinite(p) and p != 0 for p in spatial):
        # ITK would silently read a zero pixdim as spacing 1.
        spacing = tuple(float(p) for p in spatial)
        raise ImageReadError(f"{path}: zero or invalid spacing {spacing} in the NIfTI header")
    if not single_file or bitpix <= 0 or vox_offset < 0:
        return _NiftiLayout(sizes, vox_offset, None, None)
    data_stop = vox_offset + math.ceil(math.prod(sizes) * bitpix / 8)
    float_dtype = {16: np.dtype(endian + "f4"), 64: np.dtype(endian + "f8")}.get(datatype)
    return _NiftiLayout(sizes, vox_offset, data_stop, float_dtype)


class _NonFiniteCounter:
    """Count NaN and Inf in the byte range ``[start, stop)`` of a stream fed chunk by chunk."""

    def __init__(self, dtype: np.dtype, start: int, stop: int) -> None:
        self.dtype, self.start, self.stop = dtype, start, stop
        self.pending = b""
        self.nan = 0
        self.inf = 0

    def feed(self, chunk: bytes, offset: int) -> None:
        """Take ``chunk``, which starts at byte ``offset`` of the stream."""
        lo, hi = max(self.start - offset, 0), min(self.stop - offset, len(chunk))
        if hi <= lo:
            return
        data = self.pending + chunk[lo:hi]
        usable = len(data) - len(data) % self.dtype.itemsize
        values = np.frombuffer(data, dtype=self.dtype, count=usable // self.dtype.itemsize)
        self.nan += int(np.count_nonzero(np.isnan(values)))
        self.inf += int(np.count_nonzero(np.isinf(values)))
        self.pending = data[usable:]


def _check_metaimage(path: Path) -> None:
    """Check that a MetaImage (.mha/.mhd) file holds the raw voxels its header announces."""
    fields: dict[str, str] = {}
    header_len = 0
    with open(path, "rb") as f:
        while raw := f.readline(4096):
            header_len += len(raw)
            if header_len > 1 << 16:
                return  # not a sensible text header; leave the verdict to SimpleITK
            key, sep, value = raw.decode("latin-1").partition("=")
            if not sep:
                continue
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break
    try:
        sizes = [int(s) for s in fields["dimsize"].split()]
        elem_size = _MET_SIZES[fields["elementtype"].upper()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        data_file = fields["elementdatafile"]
    except (KeyError, ValueError):
        return  # an unusual header: SimpleITK reports what is wrong with it
    if any(s == 0 for s in sizes):
        return  # empty: reported after reading, with the size
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if data_file.upper() == "LOCAL":
        data_path, offset = path, header_len
    elif data_file.upper() == "LIST" or "%" in data_file or " " in data_file:
        return
    else:
        data_path, offset = path.parent / data_file, 0
        if not data_path.is_file():
            raise ImageReadError(f"{path}: its data file {data_file} is missing")
    if compressed:
        _check_zlib_complete(path, data_path, offset)
        return
    expected = offset + int(np.prod(sizes, dtype=np.int64)) * elem_size * channels
    actual = data_path.stat().st_size
    if actual < expected:
        raise ImageReadError(
            f"{path}: truncated MetaImage data: {actual} bytes, the header needs {expected}"
        )


def _check_zlib_complete(path: Path, data_path: Path, offset: int) -> None:
    decompressor = zlib.decompressobj()
    try:
        with open(data_path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(_CHUNK):
                # Bounded output, dropped as it comes: only completeness matters here.
                while chunk and not decompressor.eof:
                    decompressor.decompress(chunk, _CHUNK)
                    chunk = decompressor.unconsumed_tail
            while not decompressor.eof and decompressor.decompress(b"", _CHUNK):
                pass
    except zlib.error as err:
        raise ImageReadError(f"{path}: corrupt compressed data ({_one_line(err)})") from err
    if not decompressor.eof:
        raise ImageReadError(f"{path}: truncated compressed data (stream ends early)")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] or type(err).__name__
