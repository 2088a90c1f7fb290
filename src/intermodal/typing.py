"""Type aliases shared by the package's modules."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
"""A progress callback, called as ``progress(stage, step, total)``: ``step`` of ``total`` done
in the named stage; ``total`` is 0 for a stage without steps. ``register``, ``prepare`` and
the GUI's worker report through it."""

__all__ = ["Progress"]
