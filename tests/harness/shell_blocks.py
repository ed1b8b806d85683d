"""The shell blocks of the project's Markdown documents, for the tests that run them as written."""
from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shell_blocks(document: str) -> list[list[str]]:
    """Each fenced ```sh / ```bash / ```shell block of ``document`` (a path from the repo root)."""
    blocks, current = [], None
    for line in (REPO_ROOT / document).read_text().splitlines():
        if current is None and re.match(r"^```(sh|bash|shell)\s*$", line):
            current = []
        elif current is not None and line.startswith("```"):
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks
