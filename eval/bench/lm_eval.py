"""Benchmark: the local lm-eval tasks for the `small` MDLM and its AR baseline, and the spread of the
Monte Carlo likelihood estimator against mc_num.

Part 1: `stdlib_ppl`, `stdlib_next_line` and `stdlib_infill` through `lm_eval.simple_evaluate` with the
`mdlm` model, for both runs (same tokenizer budget, same backbone; `mdlm.eval.bench.common`), with the
wall time of each. The infill task is also run with the MDLM blind to the suffix (prefix only, like the
AR baseline), which separates "sees the suffix" from "is a diffusion model". The CPU budget (~15 min on
2 shared cores) forces `--limit`s; the JSON records them, so the numbers are on that many documents.

Part 2: for a few held-out (context, next line) pairs, the standard deviation over repeated runs of
three estimators of -log p(line | context) at each mc_num: ours (stratified mask counts and tiled
positions), LLaDA's (stratified counts, independent positions) and the naive one (independent counts
and positions), with the exact negative ELBO (all masks enumerated) to show that all three are unbiased.

    python -m mdlm.eval.bench.lm_eval [--mdlm-run runs/bench/mdlm-small] [--ar-run runs/bench/ar-small] [--quick]
Writes results/lm_eval.json and results/lm_eval.png.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mdlm.eval.bench.common import add_output_dir_argument, write_results

NAME = "lm_eval"
ROOT = Path(__file__).resolve().parents[2]
TASKS = ("stdlib_ppl", "stdlib_next_line", "stdlib_infill")
METRICS = {"stdlib_ppl": ("bits_per_byte", "byte_perplexity", "word_perplexity"),
           "stdlib_next_line": ("acc", "acc_norm"), "stdlib_infill": ("exact_match", "edit_similarity")}
LOWER_IS_BETTER = {"bits_per_byte", "byte_perplexity", "word_perplexity"}
ESTIMATORS = {"tiled + stratified (ours)": dict(stratified_counts=True, tiled_positions=True),
              "stratified (LLaDA)": dict(stratified_counts=True, tiled_positions=False),
              "naive": dict(stratified_counts=False, tiled_positions=False)}
MC_GRID = (1, 2, 4, 8, 16, 32, 64)


def check_run_folder(flag: str, path: str | None) -> None:
    """A given run folder must be one, checked before either run is trained on demand."""
    if path is not None and not (Path(path) / "config.json").is_file():
        raise ValueError(f"{flag} {path}: not a run folder (no config.json there); pass a finished run folder, "
                         "or leave the flag out to use the benchmark's own run (trained on first use)")


def resolve_run(path: str | None, name: str) -> Path:
    """The given run folder, else the shared benchmark run (trained or resumed on demand)."""
    if path:
        return Path(path)
    from mdlm.eval.bench.common import ensure_run

    return ensure_run(name)


def evaluate_tasks(lm, limits: dict, task_manager) -> dict:
    import lm_eval

    out = {}
    for task in TASKS:
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, limit=limits[task])
        wall = time.perf_counter() - start
        values = results["results"][task]
        out[task] = {"metrics": {m: values[f"{m},none"] for m in METRICS[task]},
                     "documents": results["n-samples"][task]["effective"], "wall_s": round(wall, 1)}
        print(f"  {task}: {out[task]['metrics']} ({wall:.0f} s)", flush=True)
    return out


def spread_requests(tokenizer, count: int, context_tokens: int, line_tokens: tuple[int, int]) -> list:
    """(context, line) token pairs from held-out next-line documents whose line has 8-10 tokens."""
    from mdlm.eval.tasks.build_data import load_docs

    pairs = []
    for doc in load_docs("stdlib_next_line"):
        line = tokenizer(doc["choices"][doc["gold"]], add_special_tokens=False)["input_ids"]
        if line_tokens[0] <= len(line) <= line_tokens[1]:
            context = tokenizer(doc["context"], add_special_tokens=False)["input_ids"][-context_tokens:]
            pairs.append((context, line))
        if len(pairs) == count:
            return pairs
    raise RuntimeError("not enough held-out lines of the wanted length")


def estimator_spread(model, requests, repeats: int, mc_grid=MC_GRID, batch_size: int = 32) -> dict:
    from mdlm.eval.likelihood import exact_diffusion_nll, monte_carlo_nll

    exact = [exact_diffusion_nll(model, c, x) for c, x in tqdm(requests, desc="exact ELBO", leave=False)]
    std = {name: [] for name in ESTIMATORS}
    bias = {name: [] for name in ESTIMATORS}
    progress = tqdm(total=len(ESTIMATORS) * len(mc_grid), desc="estimator spread")
    for name, options in ESTIMATORS.items():
        for mc_num in mc_grid:
            stds, biases = [], []
            for index, (request, exact_value) in enumerate(zip(requests, exact)):
                generator = torch.Generator().manual_seed(1000 * index + mc_num)
                values = torch.tensor([monte_carlo_nll(model, *request, mc_num=mc_num, batch_size=batch_size,
                                                       generator=generator, **options) for _ in range(repeats)],
                                      dtype=torch.float64)
                stds.append(float(values.std()))
                biases.append((float(values.mean()) - exact_value) / (float(values.std()) / math.sqrt(repeats)))
            std[name].append(sum(stds) / len(stds))
            bias[name].append(max(biases, key=abs))
            progress.update()
    progress.close()
    return {"mc_num": list(mc_grid), "repeats": repeats, "requests": len(requests),
            "continuation_tokens": [len(x) for _, x in requests], "context_tokens": [len(c) for c, _ in requests],
            "exact_nll": exact, "std": std, "worst_bias_in_standard_errors": bias}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spread = results["estimator"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, values in spread["std"].items():
        left.plot(spread["mc_num"], values, marker="o", label=name)
    first = spread["std"]["naive"][0]
    left.plot(spread["mc_num"], [first / math.sqrt(m) for m in spread["mc_num"]], "k:", label="1/sqrt(mc_num)")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("mc_num (Monte Carlo samples)")
    left.set_ylabel("std of the -log p estimate (nats)")
    left.set_title(f"MDLM likelihood estimator ({spread['requests']} held-out lines, {spread['repeats']} repeats)")
    left.legend()
    tasks = [(t, m) for t in TASKS for m in METRICS[t][:1] + (("edit_similarity",) if t == "stdlib_infill" else ())]
    tasks = [(t, m) for t, m in tasks if m in results["models"]["mdlm"]["tasks"][t]["metrics"]]
    labels = [f"{t}\n{m}" for t, m in tasks]
    width = 0.27
    series = [("MDLM", results["models"]["mdlm"]["tasks"]), ("AR", results["models"]["ar"]["tasks"])]
    if "infill_prefix_only" in results:
        series.append(("MDLM, prefix only", {"stdlib_infill": results["infill_prefix_only"]}))
    for offset, (label, tasks_results) in enumerate(series):
        heights = [tasks_results[t]["metrics"][m] if t in tasks_results else float("nan") for t, m in tasks]
        right.bar([i + (offset - 1) * width for i in range(len(tasks))], heights, width, label=label)
    right.set_xticks(range(len(tasks)), labels, fontsize=8)
    right.set_title("local tasks (bits/byte: lower is better; others: higher)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _format(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1000 else f"{value:.3f}"


def markdown_table(results: dict) -> str:
    mdlm, ar = results["models"]["mdlm"]["tasks"], results["models"]["ar"]["tasks"]
    lines = ["| task | metric | MDLM | AR | MDLM wall (s) | AR wall (s) | documents |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for task in TASKS:
        for i, metric in enumerate(METRICS[task]):
            arrow = " (lower is better)" if metric in LOWER_IS_BETTER else ""
            walls = (f"{mdlm[task]['wall_s']:.0f}", f"{ar[task]['wall_s']:.0f}", str(mdlm[task]["documents"])) \
                if i == 0 else ("", "", "")
            lines.append(f"| {task if i == 0 else ''} | {metric}{arrow} | {_format(mdlm[task]['metrics'][metric])} | "
                         f"{_format(ar[task]['metrics'][metric])} | {' | '.join(walls)} |")
    if "infill_prefix_only" in results:
        prefix_only = results["infill_prefix_only"]["metrics"]
        lines.append(f"| stdlib_infill, MDLM sees only the prefix | exact_match / edit_similarity | "
                     f"{_format(prefix_only['exact_match'])} / {_format(prefix_only['edit_similarity'])} | | | | |")
    config = results["config"]
    lines += ["", f"MDLM likelihoods: Monte Carlo ELBO with mc_num={config['mc_num']} (rolling windows: "
              f"{config['rolling_mc_num']}), an upper bound on -log p; AR: exact. Evaluated with `--limit` "
              f"({', '.join(f'{t}: {n}' for t, n in config['limits'].items())} documents) to fit a CPU budget.", ""]
    spread = results["estimator"]
    lines += ["| estimator std (nats) at mc_num = | " + " | ".join(map(str, spread["mc_num"])) + " |",
              "| --- | " + " | ".join("---:" for _ in spread["mc_num"]) + " |"]
    for name, values in spread["std"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mdlm-run", default=None, help="MDLM run folder (default: runs/bench/mdlm-small)")
    parser.add_argument("--ar-run", default=None, help="AR run folder (default: runs/bench/ar-small)")
    parser.add_argument("--mc-num", type=int, default=16, help="Monte Carlo samples per loglikelihood request")
    parser.add_argument("--rolling-mc-num", type=int, default=16, help="samples per perplexity window")
    parser.add_argument("--limit-ppl", type=int, default=6)
    parser.add_argument("--limit-next-line", type=int, default=40)
    parser.add_argument("--limit-infill", type=int, default=40)
    parser.add_argument("--spread-requests", type=int, default=2)
    parser.add_argument("--spread-repeats", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="tiny limits: a smoke run")
    add_output_dir_argument(parser)
    args = parser.parse_args(argv)
    check_run_folder("--mdlm-run", args.mdlm_run)
    check_run_folder("--ar-run", args.ar_run)
    from mdlm.eval.bench.common import quick_results_dir

    args.output_dir = quick_results_dir(args.output_dir, args.quick)
    if args.quick:
        args.limit_ppl, args.limit_next_line, args.limit_infill = 1, 4, 4
        args.spread_requests, args.spread_repeats = 1, 4
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from mdlm.eval import MDLMEvalModel, task_manager

    limits = {"stdlib_ppl": args.limit_ppl, "stdlib_next_line": args.limit_next_line,
              "stdlib_infill": args.limit_infill}
    runs = {"mdlm": resolve_run(args.mdlm_run, "mdlm-small"), "ar": resolve_run(args.ar_run, "ar-small")}
    manager = task_manager(include_defaults=False)
    model_args = dict(mc_num=args.mc_num, rolling_mc_num=args.rolling_mc_num, batch_size=32, device="cpu")
    results = {"config": {"runs": {k: str(v) for k, v in runs.items()}, "limits": limits, "mc_num": args.mc_num,
                          "rolling_mc_num": args.rolling_mc_num, "decode": "confidence, temperature 0",
                          "note": "numbers on the first --limit documents of each task (CPU budget)"},
               "models": {}}
    lms = {}
    for kind, run in runs.items():
        print(f"{kind}: {run}", flush=True)
        lms[kind] = MDLMEvalModel(pretrained=str(run), **model_args)
        results["models"][kind] = {"run": str(run), "attention": lms[kind].config.attention,
                                   "tasks": evaluate_tasks(lms[kind], limits, manager)}
    print("mdlm, infill from the prefix only:", flush=True)
    lms["mdlm"].infill_suffix = False
    import lm_eval

    start = time.perf_counter()
    prefix_only = lm_eval.simple_evaluate(model=lms["mdlm"], tasks=["stdlib_infill"], task_manager=manager,
                                         limit=limits["stdlib_infill"])["results"]["stdlib_infill"]
    results["infill_prefix_only"] = {"metrics": {m: prefix_only[f"{m},none"] for m in METRICS["stdlib_infill"]},
                                     "wall_s": round(time.perf_counter() - start, 1)}
    lms["mdlm"].infill_suffix = True
    requests = spread_requests(lms["mdlm"].tokenizer, args.spread_requests, 48, (8, 10))
    results["estimator"] = estimator_spread(lms["mdlm"].model, requests, args.spread_repeats)
    return write_results(args.output_dir, NAME, results, plot, markdown_table)


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.lm_eval", main)
