"""Shared by the benchmark scripts: replace one marked section of RESULTS.md, leave the rest."""

from __future__ import annotations

from pathlib import Path


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


def publish(results: Path, lines: list[str]) -> str:
    """Join ``lines`` (its first and last are the section's markers), write it, print it."""
    section = "\n".join(lines)
    write_section(results, lines[0], lines[-1], section)
    print(section)
    return section
