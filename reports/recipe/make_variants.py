"""Test-split variants in other OSHA styles, for ``abexrat evaluate`` (written outside the repo).

- ``test_untitled.jsonl``: the test reports with their titles removed (a bare narrative).
- ``test_short.jsonl``: only the narrative's first sentence, no title (a short one-line report).
- ``test_title_only.jsonl``: only the title (a headline-style record).

    .venv/bin/python reports/recipe/make_variants.py ../shared/data/osha/test.json --out /tmp/variants
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from abexrat.text import first_sentence


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("test", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    rows = json.loads(args.test.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    variants = {
        "untitled": lambda r: {"title": "", "summary": r["summary"]},
        "short": lambda r: {"title": "", "summary": first_sentence(" ".join(r["summary"].split()))},
        "title_only": lambda r: {"title": r["title"], "summary": ""},
    }
    for name, make in variants.items():
        lines = [json.dumps({"idx": r["idx"], **make(r), "gold": r["gold"]}) for r in rows]
        (args.out / f"test_{name}.jsonl").write_text("\n".join(lines) + "\n")
        words = sum(len((make(r)["title"] + " " + make(r)["summary"]).split()) for r in rows) / len(rows)
        print(f"{args.out / f'test_{name}.jsonl'}: {len(rows)} reports, {words:.0f} words on average")


if __name__ == "__main__":
    main()
