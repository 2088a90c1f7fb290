"""The allocator setting of one-shot processes: freed volume-sized blocks are reused."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_CHILD = """
import resource, sys
import torch
if sys.argv[1] == "keep":
    from intermodal.allocator import keep_freed_memory
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = torch.ones(16 * 2**20)  # 64 MiB of float32, written in full
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    # 20 blocks of 64 MiB are 327,680 pages of 4 KiB: the default maps each block afresh
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 200_000, default
    assert kept < default / 2, (kept, default)


def test_keep_freed_memory_reports_whether_it_was_taken():
    from intermodal.allocator import keep_freed_memory

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected
