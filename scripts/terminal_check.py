"""Check a captured ``bench run`` terminal: how many lines are not the tool's own, and the
longest silence between the tool's lines.

Input: the run's stdout+stderr, each line prefixed with its arrival time in seconds (``T line``),
as ``.ci/run`` captures README command 1. Only what follows the tool's first line counts (the
``pip install`` before it is the installer's, not ours). The tool's own lines: ``bench: ...``
(progress, heartbeats, errors) and the closing summary (from ``== <suite>: ...`` on).

    python scripts/terminal_check.py LOG [--max-foreign 10] [--max-gap 60]

Prints one line with both figures; exits 1 if either is over its limit.
"""

from __future__ import annotations

import argparse
import sys


def analyse(lines: list[str]) -> tuple[list[str], float]:
    """(the foreign lines, the longest gap in seconds between consecutive tool lines)."""
    foreign, last, gap, started, summary = [], None, 0.0, False, False
    for raw in lines:
        stamp, _, text = raw.rstrip("\n").partition(" ")
        try:
            t = float(stamp)
        except ValueError:
            continue
        if text.startswith("bench: "):
            started = True
        if not started or not text.strip():
            continue
        summary = summary or text.startswith("== ")
        if text.startswith("bench: ") or summary:
            if last is not None:
                gap = max(gap, t - last)
            last = t
        else:
            foreign.append(text)
    return foreign, gap


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log")
    p.add_argument("--max-foreign", type=int, default=10)
    p.add_argument("--max-gap", type=float, default=60.0)
    args = p.parse_args(argv)
    with open(args.log, encoding="utf-8", errors="replace") as f:
        foreign, gap = analyse(f.readlines())
    print(f"terminal: {len(foreign)} line(s) not the tool's own (limit {args.max_foreign}); "
          f"longest silence between the tool's lines {gap:.0f} s (limit {args.max_gap:g})")
    for line in foreign[:20]:
        print(f"  foreign: {line[:160]}")
    return 0 if len(foreign) <= args.max_foreign and gap <= args.max_gap else 1


if __name__ == "__main__":
    sys.exit(main())
