"""Rewrite the column tables of results/README.md from benchmark/schema.py (between its
``<!-- schema:NAME -->`` markers); ``--check`` only says whether they are current (exit 1 if not).

    python scripts/schema_doc.py [--check]

tests/test_schema.py fails while the committed tables differ from the schema.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmark.schema import update_doc  # noqa: E402

README = REPO / "results" / "README.md"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if results/README.md is not current")
    args = p.parse_args(argv)
    text = README.read_text()
    new = update_doc(text)
    if new == text:
        print(f"{README.relative_to(REPO)}: current")
        return 0
    if args.check:
        print(f"{README.relative_to(REPO)}: its schema tables differ from benchmark/schema.py "
              f"(run python scripts/schema_doc.py)", file=sys.stderr)
        return 1
    README.write_text(new)
    print(f"{README.relative_to(REPO)}: tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
