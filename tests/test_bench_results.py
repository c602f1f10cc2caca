"""Benchmark results record paths relative to the repository, not the machine that produced them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mdlm.eval.bench.common import REPO_ROOT, write_results


def strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def test_write_results_makes_repository_paths_relative(tmp_path):
    outside = str(tmp_path / "elsewhere")
    results = {"run": str(REPO_ROOT / "runs" / "bench" / "mdlm-small"),
               "nested": {"runs": [REPO_ROOT / "runs" / "bench" / "ar-small", "runs/x", "12"]},
               "root": str(REPO_ROOT), "external": outside, "note": "not a path /here"}
    plotted = []
    written = write_results(tmp_path, "demo", results, lambda r, path: plotted.append(r), lambda r: "table")
    on_disk = json.loads((tmp_path / "demo.json").read_text())
    assert on_disk == written == plotted[0]
    assert on_disk["run"] == "runs/bench/mdlm-small" and on_disk["root"] == "."
    assert on_disk["nested"]["runs"] == ["runs/bench/ar-small", "runs/x", "12"]
    assert on_disk["external"] == outside and on_disk["note"] == "not a path /here"


def test_committed_results_name_no_absolute_path():
    for path in sorted((Path(REPO_ROOT) / "results").glob("*.json")):
        absolute = [s for s in strings(json.loads(path.read_text())) if os.path.isabs(s)]
        assert not absolute, f"{path.name} records absolute paths {absolute[:3]}"


def test_every_benchmark_takes_one_output_dir_flag(capsys):
    import importlib

    import pytest

    import pkgutil

    import mdlm.eval.bench as bench

    # Every benchmark module (the ones that write results); found, not listed, so a new one is checked too.
    names = [m.name for m in pkgutil.iter_modules(bench.__path__) if m.name not in ("common", "report", "reference")]
    assert {"decoding", "lm_eval", "pretrain", "sampling", "schema", "speculative", "rl", "lm_head", "first_hitting_speed"} <= set(names)
    for name in names:
        module = importlib.import_module(f"mdlm.eval.bench.{name}")
        with pytest.raises(SystemExit):
            module.main(["--help"])
        usage = capsys.readouterr().out
        assert "--output-dir" in usage, name
        assert not any(old in usage.split() for old in ("--output", "--out", "--results-dir", "[--output",
                                                        "[--out", "[--results-dir")), name
