"""A full disk during any write: a clear one-line error naming the file, nothing half-written.

Two kinds of fault: a patched write that puts part of the data on disk and then raises
``OSError(ENOSPC)`` (or, like ITK's NIfTI writer, returns as if all went well), and a real
limit on file size (``RLIMIT_FSIZE``) in a subprocess, under which the C++ writers of ITK
really fail half way.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.checkpoint import card_path, load_model, save_model
from intermodal.errors import IntermodalError
from intermodal.io import write_bytes_atomic, write_image, write_points, write_text_atomic
from intermodal.networks import RegistrationModel

FORMATS = (".nii.gz", ".nii", ".mha", ".nrrd")


def volume(size: int = 24) -> sitk.Image:
    values = np.random.default_rng(0).normal(size=(size, size, size)).astype(np.float32)
    return sitk.GetImageFromArray(values)


def full_disk_after_half(real_write):
    """A replacement for ``Path.write_bytes``/``write_text`` that writes half, then fails."""

    def write(self, data, *args, **kwargs):
        real_write(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    return write


def assert_refused(err: pytest.ExceptionInfo, path: pathlib.Path) -> None:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message


@pytest.mark.parametrize("overwrite", [True, False])
@pytest.mark.parametrize("text", [True, False])
def test_atomic_writes_leave_nothing_on_a_full_disk(tmp_path, monkeypatch, overwrite, text):
    target = tmp_path / "out" / "record.json"
    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk_after_half(pathlib.Path.write_bytes))
    with pytest.raises(IntermodalError) as err:
        if text:
            write_text_atomic(target, "x" * 10_000, overwrite=overwrite)
        else:
            write_bytes_atomic(target, b"x" * 10_000, overwrite=overwrite)
    assert_refused(err, target)
    assert "No space left on device" in str(err.value)
    assert list(target.parent.iterdir()) == []


def test_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    target = write_text_atomic(tmp_path / "record.json", "old\n")
    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk_after_half(pathlib.Path.write_bytes))
    with pytest.raises(IntermodalError):
        write_text_atomic(target, "new" * 1000)
    assert target.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_points_on_a_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "points.csv"
    monkeypatch.setattr(pathlib.Path, "write_text", full_disk_after_half(pathlib.Path.write_text))
    with pytest.raises(IntermodalError) as err:
        write_points(target, np.zeros((100, 3)))
    assert_refused(err, target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("itk_reports_it", [True, False])
def test_write_image_on_a_full_disk(tmp_path, monkeypatch, ext, itk_reports_it):
    # ITK's MetaImage and NRRD writers raise; its NIfTI writer returns as if it had succeeded.
    # Either way the image must not land, and an older file at the target must survive.
    target = write_image(volume(4), tmp_path / f"warped{ext}")
    before = target.read_bytes()
    real_write = sitk.WriteImage

    def half_write(image, name, *args, **kwargs):
        real_write(image, name, *args, **kwargs)
        data = pathlib.Path(name).read_bytes()
        pathlib.Path(name).write_bytes(data[: len(data) // 2])
        if itk_reports_it:
            raise RuntimeError("ITK ERROR: ImageIO(0x1): No space left on device")

    monkeypatch.setattr("intermodal.io.images.sitk.WriteImage", half_write)
    with pytest.raises(IntermodalError) as err:
        write_image(volume(), target, overwrite=True)
    assert_refused(err, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_real_file_size_limit_in_every_format(tmp_path):
    # RLIMIT_FSIZE makes write() fail with EFBIG past 64 KiB, as a full disk fails with ENOSPC:
    # the real ITK writers, not a patch, meet the fault.
    script = textwrap.dedent(
        """
        import json, resource, signal, sys
        import numpy as np, SimpleITK as sitk
        from intermodal.errors import IntermodalError
        from intermodal.io import write_image
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        values = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
        image = sitk.GetImageFromArray(values)
        outcome = {}
        for ext in sys.argv[2:]:
            try:
                write_image(image, f"{sys.argv[1]}/warped{ext}")
                outcome[ext] = "written"
            except IntermodalError as err:
                outcome[ext] = str(err)
        print(json.dumps(outcome))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *FORMATS],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    for ext in FORMATS:
        message = outcome[ext]
        assert message != "written", f"{ext}: a truncated file was accepted"
        assert "\n" not in message and f"warped{ext}" in message, message
    assert list(tmp_path.iterdir()) == []


def test_model_save_on_a_full_disk_keeps_the_previous_model(tmp_path, monkeypatch):
    path = save_model(RegistrationModel(ndim=2, features=(4, 8)), tmp_path / "m.safetensors", {})
    weights, card = path.read_bytes(), card_path(path).read_bytes()
    real_write = pathlib.Path.write_bytes
    calls = []

    def card_fails(self, data):
        calls.append(self.name)
        if len(calls) == 2:  # the weights go through; the card meets the full disk
            return full_disk_after_half(real_write)(self, data)
        return real_write(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", card_fails)
    with pytest.raises(IntermodalError) as err:
        save_model(RegistrationModel(ndim=2, features=(4, 8, 8)), path, {})
    assert "\n" not in str(err.value) and "m.json" in str(err.value)
    monkeypatch.undo()
    assert path.read_bytes() == weights and card_path(path).read_bytes() == card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    load_model(path)


def test_model_save_on_a_full_disk_leaves_no_new_model(tmp_path, monkeypatch):
    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk_after_half(pathlib.Path.write_bytes))
    with pytest.raises(IntermodalError) as err:
        save_model(RegistrationModel(ndim=2, features=(4, 8)), tmp_path / "m.safetensors", {})
    assert "\n" not in str(err.value) and "m.safetensors" in str(err.value)
    assert list(tmp_path.iterdir()) == []
