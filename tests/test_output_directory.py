"""OutputDirectory: all or nothing, and a killed run's staging folder does not stay forever."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from intermodal.report import OutputDirectory, remove_stale_staging

OWNER = ".intermodal-owner.json"


def fake_staging(parent, name: str, suffix: str, owner: dict | None):
    folder = parent / f".{name}.{suffix}"
    folder.mkdir()
    (folder / "half.nii.gz").write_bytes(b"partial")
    if owner is not None:
        (folder / OWNER).write_text(json.dumps(owner), encoding="utf-8")
    return folder


def test_the_committed_folder_holds_only_what_was_written(tmp_path):
    destination = tmp_path / "out"
    with OutputDirectory(destination) as staging:
        (staging / "report.json").write_text("{}")
    assert sorted(p.name for p in destination.iterdir()) == ["report.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_the_next_run_removes_the_staging_folder_of_a_run_killed_outright(tmp_path):
    destination = tmp_path / "out"
    writer = textwrap.dedent(f"""
        import sys, time
        from intermodal.report import OutputDirectory
        with OutputDirectory({str(destination)!r}) as staging:
            (staging / "warped.nii.gz").write_bytes(b"half")
            print(staging, flush=True)
            time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    staging = tmp_path / os.path.basename(process.stdout.readline().strip())
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    assert staging.is_dir() and not destination.exists()  # what SIGKILL leaves behind

    with OutputDirectory(destination) as new:
        (new / "report.json").write_text("{}")
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staging_folders_that_may_be_in_use_are_kept(tmp_path):
    host = socket.gethostname()
    live = fake_staging(tmp_path, "out", "live0001", {"pid": os.getpid(), "host": host})
    elsewhere = fake_staging(tmp_path, "out", "other001", {"pid": 2**22 + 7, "host": host + "x"})
    unknown = fake_staging(tmp_path, "out", "noowner1", None)
    garbled = fake_staging(tmp_path, "out", "garbled1", None)
    (garbled / OWNER).write_text("not json")
    replaced = tmp_path / ".out.abcdefgh.old"  # an earlier output being replaced: user data
    replaced.mkdir()
    other_name = fake_staging(tmp_path, "out2", "deadbeef", {"pid": 2**22 + 7, "host": host})
    assert remove_stale_staging(tmp_path / "out") == []
    for folder in (live, elsewhere, unknown, garbled, replaced, other_name):
        assert folder.is_dir()


def test_a_staging_folder_of_a_finished_process_on_this_machine_is_removed(tmp_path):
    command = [sys.executable, "-c", "import os; print(os.getpid())"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    owner = {"pid": int(done.stdout), "host": socket.gethostname()}
    dead = fake_staging(tmp_path, "out", "dead0001", owner)
    assert remove_stale_staging(tmp_path / "out") == [dead]
    assert not dead.exists()
