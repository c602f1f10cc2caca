"""Shared by the benchmarks: the trained runs they measure, trained on demand.

`ensure_run("mdlm-small")` returns `runs/bench/mdlm-small` when it holds a finished run, resumes it when a
run there was interrupted, and trains it through `mdlm.train.pretrain.train` otherwise. The named runs
share one token budget (BENCH_TRAINING), the `small` preset's own default, so that the MDLM and its AR
baseline are comparable: 1,500 steps x 16 x 256 = 6.1M tokens, about 30 minutes each on 2 quiet CPU
cores (1.15 s per step measured; 3-4 s per step when other jobs share the cores). `python -m mdlm.eval.bench.reference` trains all three reference runs in order.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

# One budget for every reference run: the `small` preset's defaults, 1500 steps x 16 x 256 = 6.1M tokens.
BENCH_TRAINING = dict(config="small", seq_len=256, batch_size=16, max_steps=1500, warmup_steps=100, lr=1e-3,
                      eval_every=100, eval_batches=16, save_every=50, log_every=10, seed=0)

# The AS-ARM reference continues the MDLM reference (same backbone and tokenizer) for ASSD.
ASARM_STEPS = 300

BENCH_RUNS: dict[str, dict] = {
    "mdlm-small": dict(objective="mdlm", loss="t-dce"),
    "ar-small": dict(objective="ar"),
    "asarm-small": dict(objective="as-arm", max_steps=ASARM_STEPS, warmup_steps=30, lr=3e-4, eval_every=50),
}


def runs_dir() -> Path:
    """Where benchmark runs live: $MDLM_BENCH_RUNS, else runs/bench in the repository."""
    return Path(os.environ.get("MDLM_BENCH_RUNS", REPO_ROOT / "runs" / "bench"))


def is_finished(run: Path) -> bool:
    state = run / "trainer_state.json"
    return state.is_file() and json.loads(state.read_text()).get("finished", False)


def bench_options(name: str, **train_overrides) -> dict:
    """The full training options of benchmark run `name` (its registered ones, then the overrides)."""
    return {**BENCH_TRAINING, **BENCH_RUNS.get(name, {}), **train_overrides,
            "output_dir": str(runs_dir() / name)}


def ensure_run(name: str, **train_overrides) -> Path:
    """The folder of finished benchmark run `name`, training (or resuming) it first when needed.

    Runs named in BENCH_RUNS get their registered options; any other name needs its options as
    keyword arguments (e.g. `ensure_run("asarm-small", objective="as-arm", init_from=...)`)."""
    options = bench_options(name, **train_overrides)
    run = Path(options["output_dir"])
    run.parent.mkdir(parents=True, exist_ok=True)
    # One trainer per run: a second benchmark asking for the same run waits here, then finds it finished.
    with open(run.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _finished_or_trained(run, options)


def _finished_or_trained(run: Path, options: dict) -> Path:
    from mdlm.train.pretrain import train

    if is_finished(run):
        saved = yaml.safe_load((run / "run_options.yaml").read_text()) if (run / "run_options.yaml").exists() else {}
        differ = {k: (saved.get(k), v) for k, v in options.items() if k in saved and saved[k] != v}
        if differ:
            warnings.warn(f"{run} is a finished run whose options differ from those asked for ({differ}); "
                          "using it as it is (delete it to retrain)", stacklevel=3)
        return run
    if (run / "checkpoints").is_dir():
        options["resume"] = "latest"
    elif run.exists():
        options["overwrite"] = True  # a run that died before its first checkpoint: start it again
    return train(options)


def repo_relative(value, root: Path = REPO_ROOT):
    """`value` (nested dicts / lists / strings) with every absolute path inside the repository made
    relative to it, so that committed results do not name the machine that produced them. Paths outside
    the repository (an external $MDLM_BENCH_RUNS) stay as they are: no relative form would be portable."""
    if isinstance(value, dict):
        return {key: repo_relative(item, root) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [repo_relative(item, root) for item in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value)
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix() or "."
    return value


def write_json(path: Path, results: dict) -> dict:
    """Write `results` to `path` with repository paths made relative; returns what was written."""
    results = repo_relative(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def add_output_dir_argument(parser) -> None:
    """The one output flag of every benchmark: `--output-dir`, the folder of NAME.json and NAME.png."""
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "results",
                        help="folder of the results JSON and plot (default: results/, which the tables of "
                             "docs/benchmarks.md are generated from)")


def write_results(results_dir: Path, name: str, results: dict, plot, markdown_table) -> dict:
    """Write `results_dir/NAME.json` (repository paths relative) and `NAME.png` (with the benchmark's
    `plot`) and print its table."""
    results_dir = Path(results_dir)
    results = write_json(results_dir / f"{name}.json", results)
    plot(results, results_dir / f"{name}.png")
    print(markdown_table(results))
    return results


def quick_results_dir(results_dir: Path, quick: bool) -> Path:
    """Where a benchmark writes: a --quick (smoke) run aimed at the committed results/ writes beside them,
    in results/quick/, so that it never replaces the numbers the docs are generated from."""
    results_dir = Path(results_dir)
    if quick and results_dir.resolve() == (REPO_ROOT / "results").resolve():
        results_dir = results_dir / "quick"
        print(f"--quick: writing to {results_dir} (the committed results/ are kept)", flush=True)
    return results_dir


def measure_in_fresh_process(module: str, function: str, *args) -> dict:
    """`module.function(*args)` (JSON-able arguments and result) run in a new single-threaded Python, so a
    measurement of peak memory or time sees no allocator state or thread pool of the caller."""
    import subprocess
    import sys

    code = (f"import json; from {module} import {function} as measure; "
            f"print(json.dumps(measure(*json.loads({json.dumps(json.dumps(args))}))))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {function}{args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
