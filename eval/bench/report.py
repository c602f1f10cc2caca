"""Regenerate the benchmark tables and their narratives in the docs from `results/`.

Each benchmark module `mdlm.eval.bench.NAME` writes `results/NAME.json` and exposes
`markdown_table(results) -> str`. The paragraphs that read the numbers (what it shows, what it does not,
how it was run) live beside the data as `results/NAME.md`, written by whoever ran the benchmark. A page of
`docs/` (or README.md) holds one block per benchmark between the markers `<!-- results:NAME -->` and
`<!-- /results:NAME -->`; this script replaces what is between them with the table followed by the
narrative. A benchmark run again into a subfolder (`--output-dir results/rl-countdown`) has the block
`<!-- results:rl-countdown/rl -->`: the table of `results/rl-countdown/rl.json` by the module `rl`, and the
narrative `results/rl-countdown/rl.md`. `<!-- results-table:NAME -->` ... `<!-- /results-table:NAME -->`
holds the table alone (the README's summary; the narrative stays on the docs page). Tables generated from
code rather than results live between `<!-- NAME -->` and `<!-- /NAME -->` for the NAMEs of `CODE_TABLES`
(the model families' table).

    python -m mdlm.eval.bench.report            # rewrite the pages in place
    python -m mdlm.eval.bench.report --check    # exit 1 if a page is out of date
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- (?P<kind>results|results-table):(?P<name>[\w-]+(?:/[\w-]+)*) -->\n)(?P<body>.*?)"
                   r"(<!-- /(?P=kind):(?P=name) -->)", re.S)
# Tables that code computes (no results file): marker name -> "module:function" returning the table.
CODE_TABLES = {"families": "mdlm.decode.families:families_table"}
CODE_BLOCK = re.compile(r"(<!-- (?P<name>%s) -->\n)(?P<body>.*?)(<!-- /(?P=name) -->)" % "|".join(CODE_TABLES), re.S)


def pages(root: Path = ROOT) -> list[Path]:
    """The pages that may hold result blocks: README.md and every Markdown file under docs/."""
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    return found + sorted(p for p in (root / "docs").rglob("*.md") if p.is_file())


def benchmark_module(name: str) -> str:
    """The module of block `name`: its file's stem with dashes as underscores (`rl-countdown/rl` -> `rl`,
    `rl-diagnose` -> `rl_diagnose`)."""
    return name.rsplit("/", 1)[-1].replace("-", "_")


def render_block(name: str, results_dir: Path, with_narrative: bool = True) -> str:
    """The generated body of block `name`: the benchmark's table, then its narrative when it has one (and
    `with_narrative`)."""
    path = results_dir / f"{name}.json"
    module_name = benchmark_module(name)
    if not path.exists():
        return f"_No results yet: run `python -m mdlm.eval.bench.{module_name}`._\n"
    module = importlib.import_module(f"mdlm.eval.bench.{module_name}")
    body = module.markdown_table(json.loads(path.read_text(encoding="utf-8"))).rstrip("\n") + "\n"
    narrative = results_dir / f"{name}.md"
    if with_narrative and narrative.is_file():
        body += "\n" + narrative.read_text(encoding="utf-8").strip("\n") + "\n"
    return body


def render_code_table(name: str) -> str:
    module_name, function_name = CODE_TABLES[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)().rstrip("\n") + "\n"


def render_text(text: str, results_dir: Path) -> str:
    """`text` with every result block regenerated from `results_dir`, and every code table from its code."""
    text = BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name"), results_dir,
                                                         with_narrative=m.group("kind") == "results") + m.group(5),
                     text)
    return CODE_BLOCK.sub(lambda m: m.group(1) + render_code_table(m.group("name")) + m.group(4), text)


render_readme = render_text  # the name this function had while the blocks lived in the README


def block_names(text: str) -> list[str]:
    return [m.group("name") for m in BLOCK.finditer(text)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--pages", type=Path, nargs="+", default=None,
                        help="pages to update (default: README.md and docs/**/*.md)")
    parser.add_argument("--check", action="store_true", help="only check that the pages are up to date")
    args = parser.parse_args(argv)
    for page in args.pages or []:
        if not page.is_file():
            raise FileNotFoundError(f"--pages {page}: no such file; name Markdown files that hold result blocks")
    stale = []
    for page in args.pages or pages():
        old = page.read_text(encoding="utf-8")
        new = render_text(old, args.results)
        if new == old:
            continue
        stale.append(page)
        if not args.check:
            page.write_text(new, encoding="utf-8")
            print(f"updated {page}")
    if args.check and stale:
        names = ", ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in stale)
        print(f"out of date with results/: {names}; run python -m mdlm.eval.bench.report", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    raise SystemExit(run_main("mdlm.eval.bench.report", main))  # --check's status reaches the shell (CI)
