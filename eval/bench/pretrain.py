"""Benchmark: masked diffusion (MDLM, t-DCE) against its autoregressive baseline, same backbone.

    python -m mdlm.eval.bench.pretrain            # trains runs/bench/{mdlm,ar}-small if absent (~20 min each)
    python -m mdlm.eval.bench.pretrain --quick    # tiny models, a smoke test in a minute

Both runs use the same preset, token budget, data order and recipe (eval/bench/common.py BENCH_TRAINING);
only the objective and the attention pattern differ. Reported:
- training throughput (tokens/s) of each and their ratio, measured here by alternating timed optimizer
  steps of the two models in one process (the machine is shared, so timings of the two runs taken at
  different times are not comparable; the runs' own logged tokens/s are reported beside, for context);
- final validation negative ELBO of the MDLM (t-DCE, averaged over `--elbo-repeats` mask draws) and NLL of
  the AR model, both in nats/token on the same validation blocks, with the perplexity (bound) exp(nats);
- the validation curves of both runs against training tokens.
Writes results/pretrain.json and results/pretrain.png.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from mdlm.eval.bench.common import add_output_dir_argument, REPO_ROOT, bench_options, ensure_run, runs_dir, write_results

QUICK_TRAINING = dict(config="tiny", seq_len=64, batch_size=8, max_steps=60, warmup_steps=6, lr=3e-3,
                      eval_every=20, save_every=60, max_documents=30)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@torch.no_grad()
def final_validation(run: Path, objective: str, blocks: int, repeats: int, seed: int = 0) -> dict:
    """Validation nats/token of a saved run on the first `blocks` evenly spread validation blocks: the
    exact NLL for AR, the t-DCE estimate of the negative ELBO averaged over `repeats` mask draws for MDLM."""
    import yaml

    from mdlm import MDLMForMaskedLM
    from mdlm.data import packed_split
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.trainer import objective_loss_fn

    options = yaml.safe_load((run / "run_options.yaml").read_text())
    model = MDLMForMaskedLM.from_pretrained(run).eval()
    tokenizer = load_tokenizer(str(run))
    data = packed_split(options["dataset"], "validation", tokenizer, options["seq_len"], options["text_column"])
    indices = [i * len(data) // min(blocks, len(data)) for i in range(min(blocks, len(data)))]
    loss_fn = objective_loss_fn(objective, options["loss"])
    generator = torch.Generator().manual_seed(seed)
    estimates, total, count = [], 0.0, 0
    for _ in range(repeats if objective == "mdlm" else 1):
        repeat_total, repeat_count = 0.0, 0
        for start in range(0, len(indices), 16):
            rows = data[indices[start:start + 16]]
            batch = {"input_ids": rows["input_ids"]}
            if not bool(rows["attention_mask"].all()):
                batch["attention_mask"] = rows["attention_mask"]
            out = loss_fn(model, batch, generator, 0)
            repeat_total += out.sum_nll.item()
            repeat_count += int(out.num_tokens)
        estimates.append(repeat_total / repeat_count)
        total, count = total + repeat_total, count + repeat_count
    nats = total / count
    spread = statistics.stdev(estimates) / math.sqrt(len(estimates)) if len(estimates) > 1 else 0.0
    return {"nats_per_token": nats, "stderr": spread, "perplexity": math.exp(nats), "tokens": count}


def unigram_cross_entropy(run: Path) -> float:
    """Nats/token on the validation split of a model that ignores context: the train split's token
    frequencies (add-1/2 smoothed). A reference level: a model below it uses context."""
    import yaml

    from mdlm.data import packed_split
    from mdlm.tokenizer import load_tokenizer

    options = yaml.safe_load((run / "run_options.yaml").read_text())
    tokenizer = load_tokenizer(str(run))

    def counts(split: str) -> torch.Tensor:
        rows = packed_split(options["dataset"], split, tokenizer, options["seq_len"], options["text_column"],
                            options["max_documents"] if split == "train" else None)[:]
        return torch.bincount(rows["input_ids"][rows["attention_mask"].bool()], minlength=len(tokenizer)).double()

    train, validation = counts("train") + 0.5, counts("validation")
    return float(-(validation * (train / train.sum()).log()).sum() / validation.sum())


def measure_throughput(options: dict, steps: int = 6, seed: int = 0) -> dict:
    """Training tokens/s of the MDLM and the AR model, timed alternately step by step in this process."""
    from mdlm import MDLMConfig, MDLMForMaskedLM
    from mdlm.train.trainer import objective_loss_fn

    vocab = 4096 if options["config"] != "tiny" else 512
    batch, length = options["batch_size"], options["seq_len"]
    torch.manual_seed(seed)
    ids = torch.randint(0, vocab - 4, (batch, length))
    setups = {}
    for objective in ("mdlm", "ar"):
        torch.manual_seed(seed)
        config = MDLMConfig.from_preset(options["config"], vocab_size=vocab, mask_token_id=vocab - 1,
                                        attention="causal" if objective == "ar" else "bidirectional")
        model = MDLMForMaskedLM(config).train()
        setups[objective] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4),
                             objective_loss_fn(objective, "t-dce"), torch.Generator().manual_seed(seed))
    seconds = {objective: [] for objective in setups}
    for step in range(steps + 1):  # step 0 warms up
        for objective, (model, optimizer, loss_fn, generator) in setups.items():
            start = time.perf_counter()
            loss_fn(model, {"input_ids": ids}, generator, step).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step:
                seconds[objective].append(time.perf_counter() - start)
    tokens_per_s = {o: batch * length / statistics.median(s) for o, s in seconds.items()}
    return {"tokens_per_s": tokens_per_s, "ratio_mdlm_to_ar": tokens_per_s["mdlm"] / tokens_per_s["ar"],
            "steps": steps, "batch": batch, "seq_len": length, "threads": torch.get_num_threads()}


def run_summary(run: Path) -> dict:
    rows = read_metrics(run)
    logged = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    curve = [(r["tokens"], r["val_nats_per_token"]) for r in rows if "val_nats_per_token" in r]
    return {"run": str(run.relative_to(REPO_ROOT)) if run.is_relative_to(REPO_ROOT) else str(run),
            "training_tokens": rows[-1]["tokens"], "logged_tokens_per_s_median": statistics.median(logged),
            "curve": curve}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    labels = {"mdlm": "MDLM (negative ELBO)", "ar": "AR (NLL)"}
    for objective in ("mdlm", "ar"):
        tokens, nats = zip(*results[objective]["curve"])
        curves.plot(tokens, nats, "o-", label=labels[objective])
    curves.axhline(results["unigram_nats_per_token"], color="gray", linestyle="--", label="unigram (no context)")
    curves.set_xlabel("training tokens")
    curves.set_ylabel("validation nats / token")
    curves.set_title(f"{results['options']['config']} backbone, same data and budget")
    curves.legend()
    curves.grid(alpha=0.3)
    speed = results["throughput"]["tokens_per_s"]
    bars.bar(["MDLM", "AR"], [speed["mdlm"], speed["ar"]], color=["C0", "C1"])
    bars.set_ylabel("training tokens / s (alternating steps)")
    bars.set_title(f"MDLM / AR = {results['throughput']['ratio_mdlm_to_ar']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(results: dict) -> str:
    t = results["throughput"]
    lines = ["| model | validation nats/token | perplexity (bound) | training tokens/s | training tokens |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for objective, label in (("mdlm", "MDLM, t-DCE (negative ELBO)"), ("ar", "AR baseline (exact NLL)")):
        r = results[objective]
        final = r["final"]
        error = f" ± {final['stderr']:.3f}" if final["stderr"] else ""
        lines.append(f"| {label} | {final['nats_per_token']:.3f}{error} | {final['perplexity']:.1f} | "
                     f"{t['tokens_per_s'][objective]:.0f} | {r['training_tokens']:,} |")
    lines.append(f"| unigram frequencies (no context) | {results['unigram_nats_per_token']:.3f} | "
                 f"{math.exp(results['unigram_nats_per_token']):.1f} | | |")
    o = results["options"]
    lines += ["", f"Throughput ratio MDLM / AR: **{t['ratio_mdlm_to_ar']:.2f}** (timed alternately in one process; "
              f"batch {t['batch']} x {t['seq_len']}). Both: `{o['config']}` preset, {o['max_steps']} steps of "
              f"{o['batch_size']} x {o['seq_len']} tokens on the stdlib corpus. Likelihood gap: "
              f"{results['gap_nats']:+.3f} nats/token (perplexity ratio {results['perplexity_ratio']:.2f}; "
              "at GPT-2 scale on OpenWebText the literature reports about 23 vs 17.5)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_dir_argument(parser)
    parser.add_argument("--quick", action="store_true", help="tiny runs in runs/bench/quick-* (a smoke test)")
    parser.add_argument("--validation-blocks", type=int, default=128)
    parser.add_argument("--elbo-repeats", type=int, default=8)
    parser.add_argument("--throughput-steps", type=int, default=6)
    parser.add_argument("--max-steps", type=int, help="override the runs' training steps (when they are trained)")
    parser.add_argument("--reuse-validation", action="store_true",
                        help="keep the final validation numbers of the existing results file (same runs)")
    args = parser.parse_args(argv)

    overrides = dict(QUICK_TRAINING) if args.quick else {}
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    prefix = "quick-" if args.quick else ""
    runs = {objective: ensure_run(f"{prefix}{objective}-small", objective=objective, progress=False, **overrides)
            for objective in ("mdlm", "ar")}
    options = {k: v for k, v in bench_options("mdlm-small", **overrides).items() if k != "output_dir"}
    results = {"options": options, "runs_dir": str(runs_dir())}
    name = "pretrain-quick" if args.quick else "pretrain"
    previous = args.output_dir / f"{name}.json"
    previous = json.loads(previous.read_text()) if args.reuse_validation and previous.exists() else {}
    for objective, run in runs.items():
        summary = run_summary(run)
        if previous.get(objective, {}).get("training_tokens") == summary["training_tokens"]:
            results[objective] = {**summary, "final": previous[objective]["final"]}
            continue
        print(f"final validation of {run} ...", flush=True)
        results[objective] = {**summary, "final": final_validation(
            run, objective, args.validation_blocks, args.elbo_repeats)}
    results["unigram_nats_per_token"] = unigram_cross_entropy(runs["mdlm"])
    print("timing alternating training steps ...", flush=True)
    results["throughput"] = measure_throughput(options, steps=args.throughput_steps)
    mdlm, ar = results["mdlm"]["final"], results["ar"]["final"]
    results["gap_nats"] = mdlm["nats_per_token"] - ar["nats_per_token"]
    results["perplexity_ratio"] = mdlm["perplexity"] / ar["perplexity"]
    results["literature"] = {"mdlm_perplexity_bound": 23.0, "ar_perplexity": 17.5,
                             "setting": "GPT-2 small scale, OpenWebText (MDLM / SEDD papers)"}
    return write_results(args.output_dir, name, results, plot, markdown_table)


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.pretrain", main)
