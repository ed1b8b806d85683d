"""Plain aligned tables for the CLI's listings (`cvops ps`, `cvops sweep status`)."""
from __future__ import annotations

from typing import Sequence, TextIO


def print_table(rows: list[dict[str, str]], columns: Sequence[str], out: TextIO) -> None:
    widths = {c: max([len(c), *(len(row[c]) for row in rows)]) for c in columns}
    for row in [dict(zip(columns, columns)), *rows]:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip(), file=out)
