"""Rejection-sampling finetuning (RFT): SFT on the model's own reward-1 samples, the non-RL baseline that
sharpens a policy toward its best-of-n (Yuan et al. 2023, "Scaling Relationship on Learning Mathematical
Reasoning with Large Language Models"; the "filtered behaviour cloning" control of RL papers).

    samples: R rollouts = R / G train prompts x G draws each, with the RL rollout decoder
             (`mdlm.decode` confidence decoder, L/2 steps, temperature 1: what diffu-GRPO samples)
    keep:    the (prompt, completion) pairs the task's accuracy marks correct (reward 1), duplicates dropped
    SFT:     train/sft.py from the same model on the kept pairs (`--data` JSONL), a few hundred steps

At an equal number of samples R it asks whether RL does more than imitate its own successes.

    rejection_sampling_finetune("runs/sft-sudoku", "sudoku", "runs/rft-sudoku", samples=640, generations=4)
"""

from __future__ import annotations

import json
from pathlib import Path


def sample_successes(model, tokenizer, task, prompts_data, generations: int, completion_length: int,
                     temperature: float, steps: int, seed: int, batch_size: int = 64) -> tuple[list[dict], int]:
    """G draws per prompt with the rollout decoder; returns (the distinct correct pairs, draws made)."""
    from mdlm.decode.config import DecodeConfig
    from mdlm.decode.generate import generate

    prompts = list(prompts_data["prompt"])
    columns = {k: list(prompts_data[k]) for k in task.columns}
    kept, seen = [], set()
    model.eval()
    for draw in range(generations):
        config = DecodeConfig(steps=steps, temperature=temperature, seed=seed * 1000 + draw)
        texts = []
        for start in range(0, len(prompts), batch_size):
            texts += generate(model, tokenizer, prompts[start:start + batch_size], completion_length, config)
        for prompt, text, right in zip(prompts, texts, task.accuracy(texts, **columns)):
            if right and (prompt, text.strip()) not in seen:
                seen.add((prompt, text.strip()))
                kept.append({"prompt": prompt, "response": text.strip()})
    return kept, generations * len(prompts)


def rejection_sampling_finetune(sft_run: str, task_name: str, output_dir: str, samples: int, generations: int,
                                temperature: float = 1.0, steps: int | None = None, seed: int = 0,
                                sft_options: dict | None = None) -> dict:
    """Sample, filter, finetune (see the module docstring). Returns {"run", "kept", "samples", ...}."""
    from mdlm import MDLMForMaskedLM
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.sft import finetune
    from mdlm.train.tasks import get_task

    if samples % generations:
        raise ValueError(f"samples={samples} is not a multiple of generations={generations}: RFT draws G samples "
                         "per prompt, like a GRPO group")
    task = get_task(task_name)
    model, tokenizer = MDLMForMaskedLM.from_pretrained(sft_run), load_tokenizer(sft_run)
    prompts = task.dataset("train", samples // generations, seed)
    length = task.max_completion_length
    kept, drawn = sample_successes(model, tokenizer, task, prompts, generations, length, temperature,
                                   steps or length // 2, seed)
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not kept:
        return {"run": None, "kept": 0, "samples": drawn}
    data = out.parent / f"{out.name}-pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in kept))
    options = {"model": sft_run, "data": str(data), "prompt_column": "prompt", "response_column": "response",
               "output_dir": str(out), "seed": seed, **(sft_options or {})}
    run = finetune(options)
    return {"run": str(run), "kept": len(kept), "samples": drawn, "pairs": str(data)}
