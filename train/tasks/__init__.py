"""Verifiable tasks for SFT and RL: each builds a `datasets.Dataset` (column `prompt`, the reference
`answer`, and the columns its reward reads), a TRL-signature reward and an accuracy metric.

    from mdlm.train.tasks import get_task
    task = get_task("sudoku")
    train, test = task.dataset("train"), task.dataset("test")
    rewards = task.reward(prompts, completions, completion_ids, **columns)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    dataset: Callable  # (split "train" | "test", num_examples=None, seed=0) -> datasets.Dataset
    reward: Callable  # fn(prompts, completions, completion_ids, **columns) -> list[float]
    accuracy: Callable  # fn(completions, **columns) -> list[float] of 0/1
    columns: tuple[str, ...]  # the dataset columns reward and accuracy read
    max_completion_length: int  # tokens a reference answer needs (byte-level tokens), with room to spare
    baseline: Callable | None = None  # (train, test) -> (name, accuracy) of a trivial answerer to beat


def _sudoku() -> Task:
    from mdlm.train.tasks import sudoku

    return Task("sudoku", sudoku.build_dataset, sudoku.sudoku_reward, sudoku.sudoku_accuracy,
                ("puzzle", "answer"), 24)


def _countdown() -> Task:
    from mdlm.train.tasks import countdown

    return Task("countdown", countdown.build_dataset, countdown.countdown_reward, countdown.countdown_accuracy,
                ("numbers", "target"), 16, countdown.fixed_pattern_baseline)


def _signatures() -> Task:
    from mdlm.train.tasks import signatures

    return Task("signatures", signatures.build_dataset, signatures.signature_reward, signatures.signature_accuracy,
                ("answer",), 96)


TASKS: dict[str, Callable[[], Task]] = {"sudoku": _sudoku, "countdown": _countdown, "signatures": _signatures}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]()


def greedy_config(completion_length: int):
    """The evaluation decoder: confidence-ordered, one token per step, argmax (temperature 0)."""
    from mdlm.decode.config import DecodeConfig

    return DecodeConfig(sampler="confidence", steps=completion_length, temperature=0.0)


def complete(model, tokenizer, prompts: list[str], length: int, config, batch_size: int = 64) -> list[str]:
    """`model`'s completions of `prompts` under the decoder `config`, decoded `batch_size` prompts at a time
    in eval mode without gradients (the model's mode is restored after)."""
    import torch

    from mdlm.decode.generate import generate

    completions = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            completions += generate(model, tokenizer, list(prompts[start:start + batch_size]), length, config)
    model.train(was_training)
    return completions


def evaluate(model, tokenizer, task: Task, dataset, config=None, completion_length: int | None = None,
             batch_size: int = 64) -> dict:
    """Held-out accuracy and mean reward of `model` on `dataset` (decoded with `config`, by default
    greedy confidence decoding of the task's completion length)."""
    length = completion_length or task.max_completion_length
    completions = complete(model, tokenizer, list(dataset["prompt"]), length, config or greedy_config(length),
                           batch_size)
    columns = {k: list(dataset[k]) for k in task.columns}
    rewards = task.reward(list(dataset["prompt"]), completions, None, **columns)
    accuracy = task.accuracy(completions, **columns)
    return {"accuracy": sum(accuracy) / len(accuracy), "reward": sum(rewards) / len(rewards),
            "examples": len(accuracy), "sample": completions[:3]}
