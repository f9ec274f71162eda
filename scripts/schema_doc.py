"""Rewrite the column tables of results/README.md from benchmark/schema.py (between its
``<!-- schema:NAME -->`` markers), and the regression gate's power tables from the published privacy
board (``<!-- compare:power -->``, benchmark.compare.power_doc); ``--check`` only says whether they
are current (exit 1 if not).

    python scripts/schema_doc.py [--check]

tests/test_schema.py and tests/test_compare.py fail while the committed tables differ.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmark.compare import update_power_doc  # noqa: E402
from benchmark.leaderboard import read_leaderboard  # noqa: E402
from benchmark.schema import update_doc  # noqa: E402

README = REPO / "results" / "README.md"
PRIVACY_BOARD = REPO / "results" / "privacy" / "leaderboard.csv"  # what .ci/run gates against


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if results/README.md is not current")
    args = p.parse_args(argv)
    text = README.read_text()
    try:
        new = update_power_doc(update_doc(text), read_leaderboard(PRIVACY_BOARD))
    except ValueError as e:  # SchemaError, CompareError, an unreadable board: one line
        print(f"schema_doc: {e}", file=sys.stderr)
        return 2
    if new == text:
        print(f"{README.relative_to(REPO)}: current")
        return 0
    if args.check:
        print(f"{README.relative_to(REPO)}: its generated tables differ from benchmark/schema.py or "
              f"{PRIVACY_BOARD.relative_to(REPO)} (run python scripts/schema_doc.py)", file=sys.stderr)
        return 1
    README.write_text(new)
    print(f"{README.relative_to(REPO)}: tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
