"""Benchmark: any-subset speculative decoding (ASSD) against sequential and plain parallel decoding.

    python -m mdlm.eval.bench.speculative                      # runs/bench/asarm-small, judged by ar-small
    python -m mdlm.eval.bench.speculative --num-samples 8 --draft-sizes 2 4

On an any-subset AR run (`--run`; trained here when absent: `mdlm.train.pretrain` with `--objective as-arm
--init-from runs/bench/mdlm-small` when that run exists, else from scratch), for unconditional generation
and for infilling the middle of held-out standard-library code (test split), it measures per decoder:
network calls per row, tokens per call, wall time and its ratio to sequential decoding (one token per
call in the same order: the same distribution as ASSD), and sample quality: generative perplexity under
the autoregressive judge (`--judge`, default runs/bench/ar-small; skipped when absent) and the mean
unigram entropy of the generated tokens. Decoders: sequential, ASSD with k in `--draft-sizes`, and plain
parallel decoding (conditionally independent draws) at ASSD's number of calls, which shows what
exactness buys. Writes results/speculative.json and results/speculative.png.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from mdlm.decode.loading import load_model
from mdlm.decode.config import ASSD_ORDERS, DecodeConfig
from mdlm.eval.bench.common import add_output_dir_argument, runs_dir, write_results
from mdlm.decode.speculative import assd_decode, parallel_decode, sequential_decode

ROOT = Path(__file__).resolve().parents[2]
NAME = "speculative"


# ----------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------

def ensure_asarm_run(run: Path, init_from: Path, train_steps: int, seq_len: int) -> Path:
    """The any-subset AR run. A benchmark run (under `runs_dir()`) is trained, resumed or reused by
    `mdlm.eval.bench.common.ensure_run`, starting from the MDLM run `init_from` when that exists."""
    from mdlm.eval.bench.common import ensure_run, is_finished

    if run.parent.resolve() != runs_dir().resolve():
        if not (run / "config.json").exists():
            raise ValueError(f"{run} does not exist; train it (python train/pretrain.py --objective as-arm "
                             f"--output-dir {run}) or leave --run at its default to have it trained here")
        return run
    options = dict(objective="as-arm", max_steps=train_steps, seq_len=seq_len,
                   save_every=max(10, train_steps // 5), eval_every=max(10, train_steps // 5))
    if (init_from / "config.json").exists():
        options["init_from"] = str(init_from)
    if not is_finished(run):
        print(f"training {run} for {train_steps} steps from {options.get('init_from', 'scratch')}")
    return ensure_run(run.name, **options)


# ----------------------------------------------------------------------------------------------------
# Canvases
# ----------------------------------------------------------------------------------------------------

def infill_windows(tokenizer, num: int, prefix: int, middle: int, suffix: int, seed: int) -> torch.Tensor:
    """(num, prefix + middle + suffix) token windows of held-out stdlib files, one per file."""
    from mdlm.data import stdlib_texts

    width = prefix + middle + suffix
    g = torch.Generator().manual_seed(seed)
    windows = []
    for text in stdlib_texts("test"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < width:
            continue
        start = int(torch.randint(0, len(ids) - width + 1, (), generator=g))
        windows.append(ids[start:start + width])
        if len(windows) == num:
            break
    if len(windows) < num:
        raise ValueError(f"only {len(windows)} held-out files have {width} tokens; lower --num-samples or the lengths")
    return torch.tensor(windows)


def settings(tokenizer, mask_id: int, args) -> dict:
    """name -> (canvas, reference tokens or None, first scored column)."""
    unconditional = torch.full((args.num_samples, args.length), mask_id)
    windows = infill_windows(tokenizer, args.num_samples, args.prefix, args.middle, args.suffix, args.seed)
    infill = windows.clone()
    infill[:, args.prefix:args.prefix + args.middle] = mask_id
    return {"unconditional": (unconditional, None, 0), "infill": (infill, windows, args.prefix)}


# ----------------------------------------------------------------------------------------------------
# Quality
# ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def generative_perplexity(judge, tokens: torch.Tensor, first_scored: int) -> float:
    """exp(mean NLL) under the autoregressive judge of every token from column max(1, first_scored) on
    (for infilling: the middle and the suffix after it, given the prefix)."""
    logits = judge(tokens).logits[:, :-1].double()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    return math.exp(float(nll[:, max(1, first_scored) - 1:].mean()))


def unigram_entropy(tokens: torch.Tensor) -> float:
    """Mean over rows of the entropy (nats) of the row's token frequencies."""
    values = []
    for row in tokens:
        counts = torch.bincount(row).double()
        p = counts[counts > 0] / row.numel()
        values.append(float(-(p * p.log()).sum()))
    return sum(values) / len(values)


# ----------------------------------------------------------------------------------------------------
# The measurement
# ----------------------------------------------------------------------------------------------------

class Tally:
    """What one decoder produced over the chunks of a setting."""

    def __init__(self, name: str, k: int):
        self.name, self.k = name, k
        self.tokens, self.calls, self.accepted, self.drafted, self.seconds = [], [], 0, 0, 0.0

    def add(self, result, seconds: float) -> None:
        self.tokens.append(result.tokens)
        self.calls += result.stats["calls_per_row"]
        self.accepted += result.stats.get("accepted", 0)
        self.drafted += result.stats.get("drafted", 0)
        self.seconds += seconds


def timed_decode(decoder, model, chunk, config: DecodeConfig, seed: int, repeats: int):
    """(result, fastest seconds) of `repeats` runs with the same seed (so the same tokens)."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        result = decoder(model, chunk, config, generator=torch.Generator().manual_seed(seed))
        times.append(time.perf_counter() - began)
    return result, min(times)


def measure(model, judge, canvas, reference, first_scored, args) -> list[dict]:
    """Every decoder on every chunk of `batch_size` rows, the decoders interleaved chunk by chunk so that
    the load of other jobs on a shared machine falls on all of them alike. Parallel decoding gets the
    number of calls ASSD (same k) needed on the same chunk."""
    generated = canvas == model.config.mask_token_id
    width = int(generated.sum(1).max())
    base = dict(seed=args.seed, temperature=args.temperature, order=args.order, sampler="assd")
    sequential_decode(model, canvas[:1], DecodeConfig(**base))  # warm-up (allocator, threads)
    sequential = Tally("sequential", 1)
    assd = {k: Tally("assd", k) for k in args.draft_sizes}
    parallel = {k: Tally("parallel", k) for k in args.draft_sizes}
    for index, start in enumerate(range(0, canvas.shape[0], args.batch_size)):
        chunk, seed = canvas[start:start + args.batch_size], args.seed * 100_003 + index
        sequential.add(*timed_decode(sequential_decode, model, chunk, DecodeConfig(**base), seed, args.repeats))
        for k in args.draft_sizes:
            result, seconds = timed_decode(assd_decode, model, chunk, DecodeConfig(**base, draft_size=k), seed,
                                           args.repeats)
            assd[k].add(result, seconds)
            steps = max(1, round(sum(result.stats["calls_per_row"]) / chunk.shape[0]))
            parallel[k].add(*timed_decode(parallel_decode, model, chunk, DecodeConfig(**base, steps=steps), seed,
                                          args.repeats))

    def row(tally: Tally) -> dict:
        tokens = torch.cat(tally.tokens)
        mean_calls = sum(tally.calls) / len(tally.calls)
        return dict(decoder=tally.name, k=tally.k, calls_per_row=mean_calls, tokens_per_call=width / mean_calls,
                    acceptance_rate=tally.accepted / tally.drafted if tally.drafted else None, seconds=tally.seconds,
                    gen_ppl=None if judge is None else generative_perplexity(judge, tokens, first_scored),
                    unigram_entropy=unigram_entropy(tokens[generated].view(canvas.shape[0], -1)))

    rows = [row(sequential)] + [row(t) for k in args.draft_sizes for t in (assd[k], parallel[k])]
    for r in rows:
        r["speedup_vs_sequential"] = rows[0]["seconds"] / r["seconds"]
    if reference is not None:
        rows.append(dict(decoder="data", k=None, calls_per_row=None, tokens_per_call=None, acceptance_rate=None,
                         seconds=None, speedup_vs_sequential=None,
                         gen_ppl=None if judge is None else generative_perplexity(judge, reference, first_scored),
                         unigram_entropy=unigram_entropy(reference[generated].view(canvas.shape[0], -1))))
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for (name, rows), color in zip(results["settings"].items(), ("tab:blue", "tab:orange", "tab:green")):
        assd = [r for r in rows if r["decoder"] == "assd"]
        ks = [r["k"] for r in assd]
        axes[0].plot(ks, [r["tokens_per_call"] for r in assd], "o-", color=color, label=name)
        axes[1].plot(ks, [r["speedup_vs_sequential"] for r in assd], "o-", color=color, label=name)
        if all(r["gen_ppl"] is not None for r in rows if r["decoder"] != "data"):
            for decoder, style in (("assd", "o-"), ("parallel", "s--")):
                chosen = [r for r in rows if r["decoder"] == decoder]
                axes[2].plot([r["k"] for r in chosen], [r["gen_ppl"] for r in chosen], style, color=color,
                             label=f"{name} {decoder}")
            axes[2].axhline(rows[0]["gen_ppl"], color=color, lw=0.8, ls=":")
    axes[2].set_yscale("log")
    axes[0].axhline(1.5, color="gray", lw=0.8, ls=":")
    axes[0].set(xlabel="draft size k", ylabel="tokens per network call", title="ASSD tokens per call")
    axes[1].set(xlabel="draft size k", ylabel="x faster than sequential", title="ASSD wall-time speed-up")
    axes[2].set(xlabel="draft size k (parallel: same calls)", ylabel="generative perplexity (AR judge)",
                title="quality (dotted: sequential)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def markdown_table(results: dict) -> str:
    lines = [f"Any-subset speculative decoding on `{results['run']}` ({results['num_samples']} rows in batches of "
             f"{results['batch_size']}, {results['threads']} CPU threads, "
             f"temperature {results['temperature']}, order {results['order']}; judge `{results['judge']}`). "
             "Sequential decoding samples the same distribution as ASSD; parallel decoding uses ASSD's number "
             "of calls with conditionally independent tokens.", "",
             "| setting | decoder | k | calls/row | tokens/call | acceptance | wall s | speed-up | gen. PPL | unigram H |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, rows in results["settings"].items():
        for r in rows:
            lines.append(f"| {name} | {r['decoder']} | {_fmt(r['k'], 'd')} | {_fmt(r['calls_per_row'], '.1f')} | "
                         f"{_fmt(r['tokens_per_call'], '.2f')} | {_fmt(r['acceptance_rate'], '.2f')} | "
                         f"{_fmt(r['seconds'], '.2f')} | {_fmt(r['speedup_vs_sequential'], '.2f')}x | "
                         f"{_fmt(r['gen_ppl'], '.1f')} | {_fmt(r['unigram_entropy'], '.2f')} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=runs_dir() / "asarm-small", help="any-subset AR run")
    p.add_argument("--init-from", type=Path, default=runs_dir() / "mdlm-small",
                   help="MDLM run to start the AS-ARM training from when --run is absent")
    p.add_argument("--judge", type=Path, default=runs_dir() / "ar-small", help="autoregressive judge run")
    p.add_argument("--train-steps", type=int, default=150, help="steps when --run must be trained")
    p.add_argument("--train-seq-len", type=int, default=128)
    p.add_argument("--draft-sizes", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--num-samples", type=int, default=24, help="rows per setting")
    p.add_argument("--batch-size", type=int, default=1,
                   help="rows decoded together (1: per-sequence latency, where speculative decoding helps)")
    p.add_argument("--length", type=int, default=64, help="tokens of unconditional generation")
    p.add_argument("--prefix", type=int, default=48, help="infilling: tokens of given prefix")
    p.add_argument("--middle", type=int, default=32, help="infilling: tokens to generate")
    p.add_argument("--suffix", type=int, default=32, help="infilling: tokens of given suffix")
    p.add_argument("--repeats", type=int, default=2, help="timing repeats per batch (the fastest is kept)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--order", default="left-to-right", choices=ASSD_ORDERS)
    p.add_argument("--seed", type=int, default=0)
    add_output_dir_argument(p)
    return p


def _shown(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    run = ensure_asarm_run(args.run, args.init_from, args.train_steps, args.train_seq_len)
    model, tokenizer = load_model(run)
    from mdlm.eval.bench.common import is_finished

    judge = None
    judge_ready = (args.judge / "config.json").exists() and (
        is_finished(args.judge) or not (args.judge / "trainer_state.json").exists())
    if judge_ready:
        judge = load_model(args.judge)[0]
        if judge.config.attention != "causal":
            print(f"warning: the judge {args.judge} is not autoregressive (attention={judge.config.attention})")
        if judge.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"the judge {args.judge} has another vocabulary ({judge.config.vocab_size} vs "
                             f"{model.config.vocab_size}); train both runs with the same tokenizer")
    else:
        print(f"no finished judge run at {args.judge}: generative perplexity is skipped")
    results = dict(run=_shown(args.run), judge=None if judge is None else _shown(args.judge),
                   num_samples=args.num_samples, batch_size=args.batch_size, temperature=args.temperature,
                   order=args.order, threads=torch.get_num_threads(),
                   settings={})
    for name, (canvas, reference, first_scored) in settings(tokenizer, model.config.mask_token_id, args).items():
        print(f"{name}: {canvas.shape[0]} rows x {canvas.shape[1]} tokens")
        results["settings"][name] = measure(model, judge, canvas, reference, first_scored, args)
    return write_results(args.output_dir, NAME, results, plot, markdown_table)


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.speculative", main)
