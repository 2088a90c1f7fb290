"""Run independent per-subject work in several processes, for ``synth`` and ``prepare``."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from intermodal.errors import IntermodalError

Item = TypeVar("Item")
Result = TypeVar("Result")


def check_jobs(jobs: object) -> int:
    """``jobs`` as a process count, or :class:`IntermodalError` if it is not a whole number >= 1."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise IntermodalError(f"jobs must be a whole number of processes, 1 or more, not {jobs!r}")
    return jobs


def in_processes(
    function: Callable[[Item], Result], items: Sequence[Item], jobs: int, died: str
) -> Iterator[tuple[Item, Result]]:
    """Yield ``(item, function(item))`` for every item, ``jobs`` processes at a time.

    With one job (or one item) everything runs here, in order. Otherwise each call runs in a
    fresh *spawned* process (the caller may hold torch's or ITK's thread pools, which ``fork``
    leaves broken in the child) and results come in the order they finish. ``function`` must
    be importable by name (a module-level function or a ``functools.partial`` of one). An
    exception from ``function`` reaches the caller, and the calls not yet started are dropped
    rather than waited for, as they are on Ctrl-C.

    Args:
        function: the work for one item.
        items: the items.
        jobs: how many processes at once.
        died: the error's message if a worker process dies (killed, or out of memory): what
            is lost and what to do; the reason is appended.

    Raises:
        IntermodalError: a worker process died.
    """
    if jobs == 1 or len(items) < 2:
        for item in items:
            yield item, function(item)
        return
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(items)), mp_context=multiprocessing.get_context("spawn")
    )
    try:
        futures = {pool.submit(function, item): item for item in items}
        for future in as_completed(futures):
            yield futures[future], future.result()
    except BrokenProcessPool as err:
        raise IntermodalError(f"{died} ({err})") from err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
