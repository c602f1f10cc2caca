"""The docs site builds with `mkdocs build --strict` (what CI runs): every page of docs/ is in the nav of
mkdocs.yml, every link and anchor resolves, and the plots of results/ reach the pages that show them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    problems = [line for line in done.stderr.splitlines() if line.startswith(("WARNING", "ERROR", "  - "))]
    assert done.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems or [done.stderr[-3000:]])
    assert (site / "index.html").is_file() and (site / "benchmarks" / "index.html").is_file()
    assert (site / "results" / "pretrain.png").is_file()  # a plot of results/, shown on the benchmarks page
    assert 'src="../results/pretrain.png"' in (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
