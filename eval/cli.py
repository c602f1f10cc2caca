"""`mdlm-eval` / `python -m mdlm.eval`: lm-eval-harness's own CLI with the `mdlm` model registered and
the local tasks (eval/tasks) on the task path.

    mdlm-eval --model mdlm --model_args pretrained=runs/mdlm-small,mc_num=128 \\
        --tasks stdlib_next_line,stdlib_infill --device cpu --limit 100 --output_path results/eval
    accelerate launch --multi_gpu --num_processes 2 -m mdlm.eval --model mdlm \\
        --model_args pretrained=runs/mdlm-small --tasks stdlib_ppl   # on CPU too: gloo processes

Every lm-eval flag and subcommand works (`run`, `ls tasks`, `validate`, `--include_path`, `--log_samples`,
...). The local task folder is added to whatever `--include_path` the user gives.
"""

from __future__ import annotations

import sys


def _add_local_tasks_to_task_manager() -> None:
    """lm-eval's CLI builds `TaskManager(include_path=args.include_path)` (one path); route every
    TaskManager it builds through `include_paths` so the local tasks are always found too."""
    import lm_eval.tasks

    from mdlm.eval import include_paths

    base = lm_eval.tasks.TaskManager
    if getattr(base, "_with_mdlm_tasks", False):
        return

    class TaskManagerWithLocalTasks(base):
        _with_mdlm_tasks = True

        def __init__(self, *args, include_path=None, **kwargs):
            super().__init__(*args, include_path=include_paths(include_path), **kwargs)

    lm_eval.tasks.TaskManager = TaskManagerWithLocalTasks


def check_limit(argv: list[str]) -> None:
    """lm-eval reads `--limit` as a count (or, below 1, a fraction of each task) and passes a negative one to
    islice, whose error names neither the flag nor the fix; 0 it reads as "no limit". Both are refused."""
    import math

    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--limit" and i + 1 < len(argv) else \
            arg.split("=", 1)[1] if arg.startswith("--limit=") else None
        try:
            number = float(value) if value is not None else None
        except ValueError:
            continue  # not a number: lm-eval's own parser names it
        if number is not None and not (math.isfinite(number) and number > 0):
            raise ValueError(f"--limit must be > 0 (examples per task, or below 1 a fraction of each task), got "
                             f"{value}; leave it out to evaluate every example")


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI; any error it raises (a missing task, a bad model arg, a missing run) is one line and
    exit status 2 (`mdlm.decode.cli_errors`), not lm-eval's traceback."""
    import mdlm.eval.adapter  # noqa: F401  (registers --model mdlm)
    from lm_eval.__main__ import cli_evaluate

    from mdlm.decode.cli_errors import run_main

    _add_local_tasks_to_task_manager()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--device" or a.startswith("--device=") for a in argv) and "--model" in argv:
        import torch

        # lm-eval's own default is cuda:0, which fails on a machine without CUDA
        argv += ["--device", "cuda" if torch.cuda.is_available() else "cpu"]
    sys.argv = [sys.argv[0] if sys.argv else "mdlm-eval", *argv]
    run_main("mdlm-eval", check_limit, argv)
    run_main("mdlm-eval", cli_evaluate)


if __name__ == "__main__":
    main()
