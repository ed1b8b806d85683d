"""Shared plumbing of the bench scripts: mode (--quick/--full), statistics, tables, result files."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import psutil

RESULTS_DIR = Path(os.environ.get("CVOPS_BENCH_RESULTS", Path(__file__).parent / "results"))


def parse_args(description: str, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="full", action="store_false",
                      help="short bounded run (default): a sanity check on a shared machine")
    mode.add_argument("--full", dest="full", action="store_true",
                      help="the sizes and durations published in docs/performance.md")
    parser.set_defaults(full=False)
    if extra:
        extra(parser)
    return parser.parse_args()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(stock: float, ours: float) -> str:
    """How many times better ours is, for a lower-is-better figure."""
    if not ours or ours != ours or stock != stock:
        return "n/a"
    return f"{stock / ours:.1f}×"


def machine() -> str:
    load1, _, _ = os.getloadavg()
    mem_gib = psutil.virtual_memory().total / 2**30
    return (f"{platform.node()}: {psutil.cpu_count()} cores, {mem_gib:.0f} GiB, "
            f"{platform.python_implementation()} {platform.python_version()}, load average {load1:.1f} when saved")


def print_table(title: str, headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [f"\n{title}", "| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells[1:]]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def save(name: str, full: bool, tables: list[str], data: dict) -> Path:
    """Write results/<name>.json (figures) and .md (tables) for docs/performance.md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = f"<!-- {name}: {'--full' if full else '--quick'}, {stamp}, {machine()} -->"
    (RESULTS_DIR / f"{name}.md").write_text(header + "\n" + "\n".join(tables) + "\n")
    payload = {"benchmark": name, "mode": "full" if full else "quick", "when": stamp,
               "machine": machine(), **data}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nresults: {path}", flush=True)
    return path


class Deadline:
    """A loop bound in time as well as in count."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    @property
    def passed(self) -> bool:
        return time.monotonic() > self.end
