"""Check results and their one-line rendering."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.Enum):
    PASS = ("✓", "OK")
    FAIL = ("✗", "FAIL")
    WARN = ("!", "WARN")
    INFO = ("i", "INFO")
    SKIP = ("–", "SKIP")

    def __init__(self, symbol: str, word: str):
        self.symbol = symbol
        self.word = word


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


def render(result: CheckResult, *, unicode: bool = True) -> str:
    # A job log or a Windows console may not take "✓"; the word form keeps the line greppable.
    mark = result.status.symbol if unicode else f"[{result.status.word}]"
    line = f"{mark} {result.name:<11} {result.detail}"
    if result.fix:
        line += f" → {result.fix}" if unicode else f" -> {result.fix}"
    return line
