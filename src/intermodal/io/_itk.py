"""Turning SimpleITK exceptions into short, one-line reasons."""

from __future__ import annotations


def itk_reason(err: RuntimeError) -> str:
    """The gist of a SimpleITK exception on one short line (its text spans several lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        for marker in ("ITK ERROR:", "sitk::ERROR:"):
            if marker in line:
                reason = line.split(marker, 1)[1].strip()
                # Drop the "ClassName(0x55...): " prefix ITK puts before its message.
                head, sep, tail = reason.partition("): ")
                if sep and "(0x" in head:
                    reason = tail
                return reason[:200]
    return (lines[-1][:200] if lines else type(err).__name__) or type(err).__name__
