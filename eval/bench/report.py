"""Regenerate the README's result tables from `results/*.json`.

Each benchmark module `mdlm.eval.bench.NAME` writes `results/NAME.json` and exposes
`markdown_table(results) -> str`. The README holds one block per benchmark between the markers
`<!-- results:NAME -->` and `<!-- /results:NAME -->`; this script replaces what is between them. A
benchmark run again into a subfolder (`--output-dir results/rl-countdown`) has the block
`<!-- results:rl-countdown/rl -->`: the table of `results/rl-countdown/rl.json`, by the module `rl`.

    python -m mdlm.eval.bench.report            # rewrite README.md in place
    python -m mdlm.eval.bench.report --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+(?:/[\w-]+)*) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def render_block(name: str, results_dir: Path) -> str:
    path = results_dir / f"{name}.json"
    module_name = name.rsplit("/", 1)[-1]
    if not path.exists():
        return f"_No results yet: run `python -m mdlm.eval.bench.{module_name}`._\n"
    module = importlib.import_module(f"mdlm.eval.bench.{module_name}")
    table = module.markdown_table(json.loads(path.read_text()))
    return table.rstrip("\n") + "\n"


def render_readme(text: str, results_dir: Path) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name"), results_dir) + m.group(4), text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = parser.parse_args(argv)
    old = args.readme.read_text()
    new = render_readme(old, args.results)
    if args.check:
        if new != old:
            print(f"{args.readme} is out of date: run python -m mdlm.eval.bench.report", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    from mdlm.errors import run_main

    run_main("mdlm.eval.bench.report", main)
