"""Evaluation: the lm-eval-harness model `mdlm`, the `mdlm-eval` CLI, offline tasks, benchmarks.

    from mdlm.eval import MDLMEvalModel, task_manager
    results = lm_eval.simple_evaluate(model=MDLMEvalModel(pretrained="runs/mdlm-small"),
                                      tasks=["stdlib_next_line"], task_manager=task_manager(), limit=50)

Importing `mdlm.eval` stays light; `MDLMEvalModel` (which imports lm-eval and registers the model as
`mdlm`) is loaded on first use.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def include_paths(include_path=None) -> list[str]:
    """The local task folder plus the user's include path(s), for lm-eval's TaskManager."""
    extra = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) \
        else [include_path]
    return [str(TASKS_DIR), *(str(p) for p in extra if str(p) != str(TASKS_DIR))]


def task_manager(include_path=None, **kwargs):
    """An lm-eval TaskManager that also knows the local tasks (stdlib_ppl, stdlib_next_line, stdlib_infill)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_paths(include_path), **kwargs)


def __getattr__(name):
    if name in ("MDLMEvalModel", "INFILL_HOLE"):
        from mdlm.eval import adapter

        return getattr(adapter, name)
    if name == "load_denoiser":  # the one loader (mdlm.decode.loading)
        from mdlm.decode.loading import load_denoiser

        return load_denoiser
    raise AttributeError(f"module 'mdlm.eval' has no attribute {name!r}")


__all__ = ["MDLMEvalModel", "task_manager", "include_paths", "TASKS_DIR", "load_denoiser"]
