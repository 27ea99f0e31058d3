#!/usr/bin/env python
"""Write each topic's record schema, JSON Schema generated from the record types in
topics/, to docs/records/<kind>.schema.json.

    .local/venv/bin/python tools/records_schema.py          # write the files
    .local/venv/bin/python tools/records_schema.py --check  # exit 1 if a file differs

tests/test_records_schema.py runs the check, so the published schemas follow the types.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "records"


def rendered() -> dict[Path, str]:
    """The file -> its text for every record kind."""
    sys.path.insert(0, str(ROOT))
    from topics.schemas import json_schemas

    return {OUT / f"{stem}.schema.json": json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
            for stem, schema in json_schemas().items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    stale = []
    for path, text in rendered().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'differs' if args.check else 'written'}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
