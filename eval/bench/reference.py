"""Train the reference models every benchmark measures (each trained if absent, resumed if interrupted).

    python -m mdlm.eval.bench.reference              # runs/bench/{mdlm,ar,asarm}-small
    python -m mdlm.eval.bench.reference --only mdlm-small

The `small` MDLM and its `small` AR baseline share the backbone, the tokenizer recipe, the data order
and the token budget (`common.BENCH_TRAINING`: 1,500 steps x 16 x 256 = 6.1M tokens); the AS-ARM model
continues the MDLM for `common.ASARM_STEPS` steps (ASSD needs a two-stream model). `$MDLM_BENCH_RUNS`
moves the folder. Each run is locked while it trains, so a benchmark asking for it meanwhile waits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mdlm.eval.bench.common import BENCH_RUNS, ensure_run, runs_dir

ORDER = ("mdlm-small", "ar-small", "asarm-small")


def ensure_reference(name: str) -> Path:
    """The finished reference run `name` (trained or resumed first when needed)."""
    if name not in ORDER:
        raise ValueError(f"unknown reference run {name!r}; choose one of {ORDER}")
    extra = {"init_from": str(ensure_reference("mdlm-small"))} if name == "asarm-small" else {}
    return ensure_run(name, **extra)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=ORDER, default=list(ORDER), help="train only these runs")
    args = parser.parse_args(argv)
    runs = {}
    for name in ORDER:
        if name in args.only:
            runs[name] = ensure_reference(name)
            print(f"{name}: {runs[name]}")
    return runs


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.reference", main)
