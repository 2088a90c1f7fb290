"""README.md and docs/ against the code: the commands they show exist, their links resolve."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from intermodal.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 200


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _command_lines(text: str) -> list[str]:
    """Every ``intermodal ...`` command in the page's code blocks, continuations joined."""
    blocks, block, language = [], None, ""
    for line in text.splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            if block is None:
                block, language = [], fence[3:].strip()
            else:
                if language in ("", "bash", "sh"):
                    blocks.append("\n".join(block))
                block = None
        elif block is not None:
            block.append(line)
    lines = []
    for shell in blocks:
        for line in re.sub(r"\\\n\s*", " ", shell).splitlines():
            line = line.split(" #", 1)[0].strip()
            match = re.match(r"(?:\S*/)?intermodal\s+(\S.*)$", line)
            match = match or re.match(r"torchrun\s.*-m intermodal\s+(\S.*)$", line)
            if match:
                lines.append(match.group(1))
    return lines


def test_readme_is_short_and_opens_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert [line.split()[:2] for line in first_block.splitlines()] == [
        ["make", "demo"],
        ["make", "test"],
    ]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_shown_exist_with_their_options(page: Path) -> None:
    commands = _subcommands()
    for line in _command_lines(page.read_text(encoding="utf-8")):
        words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))
        name = words[0]
        assert name in commands, f"{page.name}: no command 'intermodal {name}' ({line})"
        known = {s for a in commands[name]._actions for s in a.option_strings}
        for word in words[1:]:
            option = word.split("=", 1)[0]
            if option.startswith("--"):
                assert option in known, f"{page.name}: 'intermodal {name}' has no {option}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        assert (page.parent / target).exists(), f"{page.name}: link to missing {target}"
