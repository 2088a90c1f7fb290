"""Cheap checks that an image file is complete before SimpleITK reads it.

SimpleITK 2.5 reads a truncated ``.nii.gz`` or ``.nii`` without raising and fills the missing
voxels with zeros; its NIfTI reader silently replaces a zero ``pixdim`` by 1 and NaN or Inf
voxels by 0. These checks read the header and stream the data once (in chunks, nothing kept)
so such files are refused instead of being read wrong.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import warnings
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
    elif ext in (".nrrd", ".nhdr"):
        _check_nrrd(path)
    elif ext in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        _check_picture(path)
    elif ext == ".dcm":
        check_dicom_size(path)


# A header may declare far more voxels than its file could hold even compressed (deflate
# tops out near 1032:1, LZW near 1365:1): such "decompression bombs" made ITK's TIFF reader
# allocate tens of GB. Declared sizes above this bound are refused before anything is read.
_MAX_RATIO = 2048
_MAX_SLACK = 64 << 20


def _check_declared_bytes(path: Path, declared: int, what: str) -> None:
    limit = _MAX_RATIO * path.stat().st_size + _MAX_SLACK
    if declared > limit:
        raise ImageReadError(
            f"{path}: the header declares {what} ({declared / 2**20:.0f} MiB of pixels), far "
            f"more than a {path.stat().st_size}-byte file can hold: corrupt header"
        )


def _check_picture(path: Path) -> None:
    """Read a PNG/JPEG/TIFF header with Pillow (no pixels) and bound its declared size."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about damaged metadata; not ours
            with Image.open(path) as picture:
                width, height = picture.size
                frames = int(getattr(picture, "n_frames", 1))
                bands = len(picture.getbands())
                mode = picture.mode
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{path}: picture too large ({_one_line(err)})") from err
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on corrupt headers
        raise ImageReadError(
            f"{path}: not a readable {path.suffix.lower()} picture ({_one_line(err)})"
        ) from err
    depth = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") else 1
    declared = width * height * frames * bands * depth
    _check_declared_bytes(path, declared, f"{width} x {height} pixels x {frames} frames")


def check_dicom_size(path: Path) -> None:
    """Bound the size a DICOM file's header declares (rows x columns x frames)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # unreadable: the full read reports why
    bits = re.match(r"\D*(\d+)-bit", sitk.GetPixelIDValueAsString(reader.GetPixelID()))
    depth = int(bits.group(1)) // 8 if bits else 8
    declared = math.prod(reader.GetSize()) * reader.GetNumberOfComponents() * depth
    _check_declared_bytes(path, declared, f"size {tuple(reader.GetSize())}")


# Bytes per voxel of each NIfTI datatype code (1 is one bit per voxel).
_NIFTI_BYTES = {
    1: 1 / 8, 2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4,
    1024: 8, 1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4,
}  # fmt: skip


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
        (datatype,) = struct.unpack(endian + "h", head[70:72])
        pixdim = struct.unpack(endian + "8f", head[76:108])
        vox_offset = struct.unpack(endian + "f", head[108:112])[0]
        single_file = head[344:347] == b"n+1"
        qform_code, sform_code = struct.unpack(endian + "2h", head[252:256])
        quatern = struct.unpack(endian + "6f", head[256:280])
        srow = struct.unpack(endian + "12f", head[280:328])
    else:
        (datatype,) = struct.unpack(endian + "h", head[12:14])
        dim = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        vox_offset = struct.unpack(endian + "q", head[168:176])[0]
        single_file = head[4:7] == b"n+2"
        qform_code, sform_code = struct.unpack(endian + "2i", head[344:352])
        quatern = struct.unpack(endian + "6d", head[352:400])
        srow = struct.unpack(endian + "12d", head[400:496])
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise ImageReadError(f"{path}: corrupt NIfTI header: dim[0] is {ndim}, expected 1 to 7")
    sizes = tuple(int(d) for d in dim[1 : ndim + 1])
    if any(d < 0 for d in sizes):
        raise ImageReadError(f"{path}: corrupt NIfTI header: negative size {sizes}")
    if any(d == 0 for d in sizes):
        raise ImageReadError(f"{path}: empty image: size {sizes}")
    extra = [int(d) for d in dim[ndim + 1 :] if d > 1]
    if extra:
        # Unused dim entries are 1 (or 0) in every writer; more means a damaged dim[0], and
        # ITK would silently read the first slices of a larger image.
        raise ImageReadError(
            f"{path}: corrupt NIfTI header: dim[0] is {ndim} but later dim entries are "
            f"{tuple(int(d) for d in dim[1:])}"
        )
    spatial = pixdim[1 : min(ndim, 3) + 1]
    if not all(math.isfinite(p) and p > 0 for p in spatial):
        # ITK silently reads a zero pixdim as spacing 1, and a negative one as a flipped axis.
        spacing = tuple(float(p) for p in spatial)
        raise ImageReadError(
            f"{path}: spacing (pixdim) must be positive, got {spacing} in the NIfTI header"
        )
    for code, name, values in (
        (qform_code, "qform", (pixdim[0], *quatern)),
        (sform_code, "sform", srow),
    ):
        if code > 0 and not all(math.isfinite(v) for v in values):
            # ITK silently replaces a NaN quaternion by the identity orientation.
            raise ImageReadError(f"{path}: corrupt NIfTI header: the {name} is not finite")
    if single_file and not (math.isfinite(vox_offset) and sizeof_hdr <= vox_offset < 1 << 40):
        raise ImageReadError(
            f"{path}: corrupt NIfTI header: voxel data offset (vox_offset) is {vox_offset}"
        )
    vox_offset = int(vox_offset) if math.isfinite(vox_offset) else 0
    if datatype not in _NIFTI_BYTES:
        raise ImageReadError(f"{path}: unsupported or corrupt NIfTI datatype code {datatype}")
    if not single_file:
        return _NiftiLayout(sizes, vox_offset, None, None)
    # The reader sizes voxels by datatype (bitpix is only a hint), so the check does too.
    data_stop = vox_offset + math.ceil(math.prod(sizes) * _NIFTI_BYTES[datatype])
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
    """Check a MetaImage (.mha/.mhd) header and that the file holds the voxels it announces.

    ITK's MetaIO trusts the header: an ``NDims`` outside 1..10 makes it crash (segfault), and
    arrays shorter than ``NDims`` are read past their end. So the fields that ITK sizes by
    ``NDims`` are checked here first.
    """
    fields: dict[str, str] = {}
    header_len = 0
    with open(path, "rb") as f:
        while raw := f.readline(4096):
            header_len += len(raw)
            if header_len > 1 << 16:
                raise ImageReadError(f"{path}: not a MetaImage file (no header end in 64 KiB)")
            key, sep, value = raw.decode("latin-1").partition("=")
            if not sep:
                continue
            fields.setdefault(key.strip().lower(), value.strip())
            if key.strip().lower() == "elementdatafile":
                break
    for key, name in (
        ("ndims", "NDims"),
        ("dimsize", "DimSize"),
        ("elementdatafile", "ElementDataFile"),
    ):
        if key not in fields:
            raise ImageReadError(f"{path}: not a usable MetaImage file (its header lacks {name})")
    ndim = _meta_numbers(path, fields, "ndims", 1, integer=True)[0]
    if ndim > 3:
        raise ImageReadError(f"{path}: {ndim}D images are not supported (MetaImage NDims)")
    if ndim < 1:
        raise ImageReadError(f"{path}: corrupt MetaImage header: NDims is {ndim}")
    sizes = _meta_numbers(path, fields, "dimsize", ndim, integer=True)
    if any(s < 0 for s in sizes):
        raise ImageReadError(f"{path}: corrupt MetaImage header: negative DimSize {sizes}")
    for key, count in _MET_ARRAYS.items():
        alias = [k for k in key.split("|") if k in fields]
        if alias:
            _meta_numbers(path, fields, alias[0], count(ndim))
    channels = 1
    if "elementnumberofchannels" in fields:
        channels = _meta_numbers(path, fields, "elementnumberofchannels", 1, integer=True)[0]
        if channels < 1:
            raise ImageReadError(
                f"{path}: corrupt MetaImage header: ElementNumberOfChannels is {channels}"
            )
    elem_size = _MET_SIZES.get(fields.get("elementtype", "").upper())
    if elem_size is None:
        raise ImageReadError(
            f"{path}: unsupported or missing MetaImage ElementType {fields.get('elementtype')!r}"
        )
    data_file = fields["elementdatafile"]
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
        _check_zlib_complete(path, data_path, offset, math.prod(sizes) * elem_size * channels)
        return
    expected = offset + math.prod(sizes) * elem_size * channels
    actual = data_path.stat().st_size
    if actual < expected:
        raise ImageReadError(
            f"{path}: truncated MetaImage data: {actual} bytes, the header needs {expected}"
        )


# MetaImage fields read as NDims-sized arrays (aliases separated by "|") and their lengths.
_MET_ARRAYS = {
    "elementspacing": lambda n: n,
    "elementsize": lambda n: n,
    "offset|origin|position": lambda n: n,
    "centerofrotation": lambda n: n,
    "transformmatrix|rotation|orientation": lambda n: n * n,
}


def _meta_numbers(
    path: Path, fields: dict[str, str], key: str, count: int, *, integer: bool = False
) -> list:
    """The ``count`` finite numbers of MetaImage header field ``key``, or ImageReadError."""
    words = fields[key].split()
    try:
        values = [int(w) if integer else float(w) for w in words]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ImageReadError(
            f"{path}: corrupt MetaImage header: {key} is {fields[key][:60]!r}, expected "
            f"{count} {'integers' if integer else 'finite numbers'}"
        )
    if integer and any(abs(v) > 1 << 40 for v in values):
        raise ImageReadError(f"{path}: corrupt MetaImage header: {key} is {fields[key][:60]!r}")
    return values


def _check_zlib_complete(path: Path, data_path: Path, offset: int, expected: int) -> None:
    """Check a zlib stream ends properly and inflates to at least ``expected`` bytes.

    Decompression stops once ``expected`` bytes have come out, so a stream that inflates to
    far more (a bomb) costs no more than the image itself.
    """
    decompressor = zlib.decompressobj()
    total = 0
    try:
        with open(data_path, "rb") as f:
            f.seek(offset)
            while total < expected and (chunk := f.read(_CHUNK)):
                # Bounded output, dropped as it comes: only its length matters here.
                while chunk and not decompressor.eof and total < expected:
                    total += len(decompressor.decompress(chunk, _CHUNK))
                    chunk = decompressor.unconsumed_tail
            while not decompressor.eof and total < expected:
                out = decompressor.decompress(b"", _CHUNK)
                if not out:
                    break
                total += len(out)
    except zlib.error as err:
        raise ImageReadError(f"{path}: corrupt compressed data ({_one_line(err)})") from err
    if total < expected:
        raise ImageReadError(
            f"{path}: truncated compressed data: {total} bytes inflated, the header needs "
            f"{expected}"
        )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] or type(err).__name__


def check_written(path: Path, ext: str) -> None:
    """Check that a file SimpleITK just wrote is complete; raise :class:`ImageReadError` if not.

    ITK's NIfTI writer ignores failed writes: on a full disk it leaves a truncated ``.nii`` or
    ``.nii.gz`` and reports success. This reads only the header and the file size (and for
    ``.nii.gz`` the gzip trailer, which holds the uncompressed length), so it costs nothing
    next to the write. MetaImage and NRRD are checked the same way.
    """
    if ext in (".nii", ".nii.gz"):
        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        if compressed:
            try:
                with gzip.open(path, "rb") as f:
                    layout = _parse_nifti_header(path, f.read(540))
            except (EOFError, OSError, zlib.error) as err:
                raise ImageReadError(f"{path}: incomplete gzip stream ({_one_line(err)})") from err
            with open(path, "rb") as f:
                f.seek(-4, 2)
                (length,) = struct.unpack("<I", f.read(4))
            if layout.data_stop is not None and length != layout.data_stop % (1 << 32):
                raise ImageReadError(
                    f"{path}: incomplete gzip stream (its trailer says {length} bytes, the "
                    f"header needs {layout.data_stop})"
                )
        else:
            with open(path, "rb") as f:
                layout = _parse_nifti_header(path, f.read(540))
            _check_nifti_size(path, layout, path.stat().st_size)
    elif ext in (".mha", ".mhd"):
        _check_metaimage(path)
    elif ext in (".nrrd", ".nhdr"):
        _check_nrrd_raw(path)


def _nrrd_header(path: Path) -> tuple[dict[str, str], int]:
    """The fields of a NRRD header (keys lower-cased) and its length in bytes."""
    fields: dict[str, str] = {}
    header_len = 0
    with open(path, "rb") as f:
        while raw := f.readline(4096):
            header_len += len(raw)
            if header_len > 1 << 16:
                raise ImageReadError(f"{path}: not a NRRD file (no header end in 64 KiB)")
            line = raw.decode("latin-1").strip()
            if not line:
                break
            key, sep, value = line.partition(":")
            if sep and not value.startswith("="):
                fields.setdefault(key.strip().lower(), value.strip())
    return fields, header_len


def _check_nrrd(path: Path) -> None:
    """Bound the voxels a NRRD header declares by what its data can hold.

    teem (ITK's NRRD reader) allocates the whole declared image before reading: a header
    claiming 65536^3 floats fails only on memory. Raw data must be all there; compressed
    data is bounded by :data:`_MAX_RATIO`, text encodings by one character per value.
    """
    fields, header_len = _nrrd_header(path)
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
    except (KeyError, ValueError):
        return  # no or unusual sizes: teem reports what is wrong
    if not sizes or any(s <= 0 for s in sizes):
        return
    elem_size = _NRRD_SIZES.get(fields.get("type", "").lower(), 8)
    declared = math.prod(sizes) * elem_size
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is None:
        data_path, available = path, max(path.stat().st_size - header_len, 0)
    elif data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
        return
    else:
        data_path = path.parent / data_file
        if not data_path.is_file():
            raise ImageReadError(f"{path}: its data file {data_file} is missing")
        available = data_path.stat().st_size
    encoding = fields.get("encoding", "raw").lower()
    if encoding == "raw" and available < declared:
        raise ImageReadError(
            f"{path}: truncated NRRD data: {available} bytes of data, the header needs {declared}"
        )
    if encoding in ("ascii", "text", "txt", "hex") and math.prod(sizes) > available:
        raise ImageReadError(
            f"{path}: the header declares {math.prod(sizes)} values, more than its "
            f"{available} bytes of text can hold: corrupt header"
        )
    _check_declared_bytes(data_path, declared, f"sizes {tuple(sizes)}")


def _check_nrrd_raw(path: Path) -> None:
    """Check that a raw-encoded, attached-data NRRD file holds all the bytes its header needs."""
    fields, header_len = _nrrd_header(path)
    if fields.get("encoding") != "raw" or "data file" in fields or "datafile" in fields:
        return
    sizes = [int(s) for s in fields.get("sizes", "").split() if s.isdigit()]
    elem_size = _NRRD_SIZES.get(fields.get("type", ""))
    if not sizes or elem_size is None:
        return
    expected = header_len + math.prod(sizes) * elem_size
    if path.stat().st_size < expected:
        raise ImageReadError(
            f"{path}: truncated NRRD data: {path.stat().st_size} bytes, the header needs {expected}"
        )


_NRRD_SIZES = {
    "signed char": 1, "int8": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "short": 2,
    "int16": 2, "ushort": 2, "unsigned short": 2, "uint16": 2, "int": 4, "int32": 4, "uint": 4,
    "unsigned int": 4, "uint32": 4, "longlong": 8, "int64": 8, "ulonglong": 8, "uint64": 8,
    "float": 4, "double": 8,
}  # fmt: skip
