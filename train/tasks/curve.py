"""SFT learning curve of a task: held-out accuracy at regular steps of one `train/sft.py` run.

    python -m mdlm.train.tasks.curve --task sudoku --every 100 -- --preset tiny --max-steps 600 ...

The run is trained in chunks (`stop_at_step`, then `--resume`: exactly the run it would be straight
through) and the saved model is decoded greedily on the held-out split after each chunk. Writes
results/sft-<task>[-seed<s>].json (the curve and the options) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def curve(task_name: str, every: int, sft_options: dict, out: Path) -> dict:
    from mdlm import MDLMForMaskedLM
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.sft import SFTArgs, finetune
    from mdlm.train.tasks import evaluate, get_task

    task = get_task(task_name)
    held = task.dataset("test")
    # Each evaluated step must be a checkpoint (the run stops there as if killed, and resumes from it).
    options = {"task": task_name, "progress": False, **sft_options, "save_every": every}
    # A recipe that stops early (--stop-at-step) ends its curve there: the model it hands on.
    given = SFTArgs.from_dict(options)
    last = given.stop_at_step or given.max_steps
    points, start = [], time.time()
    for stop in range(every, last + every, every):
        stop = min(stop, last)
        step_options = {**options, "stop_at_step": stop}
        if stop > every:
            step_options.update(resume="latest", overwrite=False)
        run = finetune(step_options)
        model = MDLMForMaskedLM.from_pretrained(run)
        result = evaluate(model, load_tokenizer(str(run)), task, held)
        points.append({"step": stop, "seconds": round(time.time() - start, 1), **result})
        print(json.dumps(points[-1]), flush=True)
        if stop == last:
            break
    record = {"task": task_name, "options": options, "held_out_examples": len(held), "curve": points}
    if task.baseline is not None:
        name, accuracy = task.baseline(task.dataset("train", 5000), held)
        record["baseline"] = {"answerer": name, "accuracy": accuracy}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    _plot(record, out.with_suffix(".png"))
    return record


def _plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in record["curve"]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, [p["accuracy"] for p in record["curve"]], marker="o", label="held-out accuracy")
    ax.plot(steps, [p["reward"] for p in record["curve"]], marker=".", label="held-out reward")
    if "baseline" in record:
        ax.axhline(record["baseline"]["accuracy"], color="grey", linestyle=":",
                   label=f"fixed pattern {record['baseline']['answerer']}")
    ax.set_xlabel("SFT step")
    ax.set_ylim(0, 1)
    ax.set_title(f"SFT on {record['task']} ({record['held_out_examples']} held-out, greedy)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from mdlm.train.sft import build_parser

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=("sudoku", "countdown"))
    parser.add_argument("--every", type=int, default=100, help="evaluate every N SFT steps")
    parser.add_argument("--out", default=None, help="default results/sft-<task>.json")
    parser.add_argument("sft", nargs=argparse.REMAINDER, help="after --: train/sft.py options")
    args = parser.parse_args(argv)
    sft_argv = [a for a in args.sft if a != "--"]
    sft_options = vars(build_parser().parse_args(sft_argv + ["--task", args.task]))
    sft_options.pop("task", None)
    curve(args.task, args.every, sft_options, Path(args.out or f"results/sft-{args.task}.json"))


if __name__ == "__main__":
    main()
