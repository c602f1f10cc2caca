"""MkDocs hook: the benchmark plots of `results/` become files of the site at `results/...`, so a page in
docs/ shows `![...](results/NAME.png)` without a copy of the plot inside docs/ (results/ stays the one place
benchmarks write to)."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[2] / "results"


def on_files(files, config):
    for plot in sorted(RESULTS.rglob("*.png")):
        path = Path("results") / plot.relative_to(RESULTS)
        if files.get_file_from_path(path.as_posix()) is None:
            files.append(File(path.as_posix(), str(RESULTS.parent), config["site_dir"], config["use_directory_urls"]))
    return files
