"""The command line both shipping scripts share (``ship_pretrained.py``, ``ship_fid_reference.py``):
``--check`` computes each shipped file again with the threads its record names and compares bit for
bit (exit 1 unless all equal), else each is (re)written with ``--threads``; ``--only`` picks one
registered suite's files."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def main(argv: list[str] | None, *, doc: str, items: Callable[[str | None], Sequence[tuple]],
         check: Callable[..., bool], write: Callable[..., None], only_default: str | None, what: str) -> int:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--check", action="store_true", help=f"compute the {what} again and compare with the shipped files")
    ap.add_argument("--only", default=only_default,
                    help=f"one registered suite's {what} (default {only_default or 'every suite'})")
    ap.add_argument("--threads", type=int, default=2, help="torch threads to compute with when writing (default 2)")
    args = ap.parse_args(argv)
    todo = items(args.only)
    if args.check:
        return 0 if all([check(*item) for item in todo]) else 1
    for item in todo:
        write(*item, threads=args.threads)
    return 0
