"""Long work off the GUI thread: a QThread that runs one job, reports progress, can be cancelled.

A job is a function ``job(progress) -> value`` where ``progress(stage, step, total)`` is the
callback :func:`intermodal.registration.register` takes. Cancelling sets a flag; the next
progress call raises :class:`Cancelled` inside the job, which unwinds it. A stage that makes no
progress calls (the initial alignment) therefore finishes before a cancel takes effect.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QThread, Signal

from intermodal.errors import IntermodalError
from intermodal.typing import Progress

logger = logging.getLogger(__name__)

Job = Callable[[Progress], Any]


class Cancelled(Exception):
    """Raised inside a job, from its progress callback, once cancel was asked for."""


def error_line(error: BaseException) -> str:
    """One line for a dialog: the message of a user error, or the type and first line of a bug."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(error, IntermodalError):
        return first or type(error).__name__
    return f"internal error: {type(error).__name__}: {first}".rstrip(": ")


class JobThread(QThread):
    """Run ``job`` in a worker thread; exactly one of the outcome signals is emitted.

    Signals:
        progressed(stage, step, total): from the job's progress callback.
        succeeded(value): the job's return value.
        failed(message): a one-line message (see :func:`error_line`).
        cancelled(): the job stopped after :meth:`cancel`.
    """

    progressed = Signal(str, int, int)
    succeeded = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, job: Job, parent=None) -> None:
        super().__init__(parent)
        self._job = job
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next progress call."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def _progress(self, stage: str, step: int, total: int) -> None:
        if self._cancel.is_set():
            raise Cancelled
        self.progressed.emit(stage, int(step), int(total))

    def run(self) -> None:  # noqa: D102 - QThread's entry, runs in the worker thread
        try:
            value = self._job(self._progress)
        except Cancelled:
            self.cancelled.emit()
        except Exception as error:  # every failure becomes a dialog, never a crash
            if not isinstance(error, IntermodalError):
                logger.exception("registration job failed")
            self.failed.emit(error_line(error))
        else:
            if self._cancel.is_set():
                self.cancelled.emit()
            else:
                self.succeeded.emit(value)
