"""The table of RL finetuning in docs/rl.md: held-out accuracy of the SFT model and of diffu-GRPO over seeds.

    python -m mdlm.train.rl.table --task sudoku --sft runs/sft-sudoku --seeds 0 1 2 -- --max-steps 20 ...
    python -m mdlm.train.rl.table --task sudoku --sft runs/sft-sudoku-seed0 runs/sft-sudoku-seed1 \
        runs/sft-sudoku-seed2 --seeds 0 1 2 -- ...      # one SFT run per seed: both rows over seeds

Runs `train/rl.py` once per seed (options after `--` go to it) from the same SFT model, or from the
SFT run of that seed when one is given per seed, reads each run's eval.json (greedy held-out accuracy
before and after RL) and writes results/rl-<task>.json with the per-seed numbers, mean and standard
error (sample std / sqrt(n)) of the RL row and, over distinct SFT runs, of the SFT row, and the
options: the budget stated.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def main(argv=None) -> None:
    from mdlm.train.rl.cli import build_parser, run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--sft", required=True, nargs="+",
                        help="the SFT run folder every seed starts from, or one per seed (paired in order)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="runs", help="folder of the RL runs (rl-<task>-seed<s>)")
    parser.add_argument("--out", default=None, help="default results/rl-<task>.json")
    parser.add_argument("rl", nargs=argparse.REMAINDER, help="after --: train/rl.py options")
    args = parser.parse_args(argv)
    rl_argv = [a for a in args.rl if a != "--"]
    if len(args.sft) not in (1, len(args.seeds)):
        parser.error(f"give one --sft run, or one per seed ({len(args.seeds)}); got {len(args.sft)}")
    sft_runs = args.sft * len(args.seeds) if len(args.sft) == 1 else args.sft
    rows = []
    for seed, sft_run in zip(args.seeds, sft_runs):
        folder = Path(args.runs) / f"rl-{args.task}-seed{seed}"
        start = time.time()
        given = vars(build_parser().parse_args(rl_argv + ["--task", args.task, "--model", sft_run, "--seed",
                                                          str(seed), "--output-dir", str(folder), "--overwrite"]))
        run(given)
        result = json.loads((folder / "eval.json").read_text())
        rows.append({"seed": seed, "sft_run": sft_run, "sft_accuracy": result["before"]["accuracy"],
                     "rl_accuracy": result["after"]["accuracy"], "rl_reward": result["after"]["reward"],
                     "steps": result["steps"], "seconds": round(time.time() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    rl_mean, rl_se = mean_se([r["rl_accuracy"] for r in rows])
    first_of_each_sft = {r["sft_run"]: r["sft_accuracy"] for r in reversed(rows)}
    sft_mean, sft_se = mean_se(list(first_of_each_sft.values()))
    record = {"task": args.task, "sft_runs": sorted(first_of_each_sft), "rl_options": rl_argv, "seeds": rows,
              "held_out_examples": json.loads((Path(args.runs) / f"rl-{args.task}-seed{args.seeds[0]}" /
                                               "eval.json").read_text())["after"]["examples"],
              "sft_accuracy_mean": sft_mean, "sft_accuracy_se": sft_se,
              "rl_accuracy_mean": rl_mean, "rl_accuracy_se": rl_se}
    out = Path(args.out or f"results/rl-{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "seeds"}))


if __name__ == "__main__":
    main()
