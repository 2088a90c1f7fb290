"""Shared by the benchmark scripts: replace one marked section of RESULTS.md, leave the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_section(results: Path, begin: str, end: str, section: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) into ``results``.

    The text between the markers is replaced; without them the section is appended. The file
    is read just before it is written, so sections written meanwhile by others are kept.
    """
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmarks\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    results.write_text(text, encoding="utf-8")


def publish(results: Path, lines: list[str], record: Path | None = None, rows: Any = None) -> str:
    """Join ``lines`` (its first and last are the section's markers), write it, print it.

    With ``record``, the measured ``rows`` and the section are also kept there as JSON.
    """
    section = "\n".join(lines)
    write_section(results, lines[0], lines[-1], section)
    print(section)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        payload = {"rows": rows, "section": section}
        record.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return section
