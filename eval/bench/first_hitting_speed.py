"""Benchmark: wall time of the first-hitting sampler (Zheng et al. 2024, "Masked Diffusion Models are
Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical Sampling") against the standard
(uncached) ancestral sampler at T = 1024 steps, at L = 128, 256 and 1024.

Both draw from the same distribution (first-hitting exactly, ancestral within its T = 1024 time
discretisation; tests/test_decode_exactness.py checks both against an enumerated one). First-hitting makes L
network calls, each with the LM head at the one position it reveals; the uncached ancestral sampler
evaluates every unfinished row at each of its T steps and draws only the tokens a step reveals.
Speed does not depend on training, so the model is the `small` preset with random weights and its
context raised to the longest L (or a run folder given by --run). One thread (OMP_NUM_THREADS=1 for
both contenders); per length the two samplers run alternately with the same seeds, --repeats times,
and the median time of each gives the ratio.

    python -m mdlm.eval.bench.first_hitting_speed [--run runs/x] [--lengths 128 256 1024] [--repeats 3 3 1]
Writes results/first_hitting_speed.json and .png. About 15 minutes per repeat set on one free core
(L = 1024 dominates: ~1,000 calls of either sampler at 0.25-0.3 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from mdlm.eval.bench.common import add_output_dir_argument, write_results

NAME = "first_hitting_speed"
ANCESTRAL_STEPS = 1024
SAMPLERS = {"first-hitting": dict(sampler="first-hitting"),
            f"ancestral T={ANCESTRAL_STEPS} uncached": dict(sampler="ancestral", steps=ANCESTRAL_STEPS,
                                                            use_cache=False)}


def untrained_model(preset: str, context: int, vocab_size: int = 4096, seed: int = 0):
    """The preset's backbone with random weights (speed does not depend on training)."""
    from mdlm import MDLMConfig, MDLMForMaskedLM

    torch.manual_seed(seed)
    config = MDLMConfig.from_preset(preset, vocab_size=vocab_size, mask_token_id=vocab_size - 1,
                                    max_position_embeddings=context)
    return MDLMForMaskedLM(config).eval()


def load_model(run: Path | None, preset: str, context: int):
    if run is None:
        return untrained_model(preset, context), f"untrained `{preset}` preset (context {context})"
    from mdlm.model import MDLMForMaskedLM

    if not (run / "config.json").is_file():
        raise ValueError(f"--run {run}: not a run folder (no config.json); train one or leave --run out")
    model = MDLMForMaskedLM.from_pretrained(run).eval()
    if model.config.max_position_embeddings < context:
        raise ValueError(f"--run {run} has a context of {model.config.max_position_embeddings} tokens, "
                         f"--lengths asks for {context}; pass shorter --lengths")
    return model, str(run)


def time_decode(model, length: int, batch: int, options: dict, seed: int) -> tuple[float, int]:
    from mdlm.decode import DecodeConfig, decode

    canvas = torch.full((batch, length), model.config.mask_token_id, dtype=torch.long)
    began = time.perf_counter()
    result = decode(model, canvas, DecodeConfig(seed=seed, **options))
    return time.perf_counter() - began, result.nfe


def measure(model, lengths, repeats, batch: int, finished_length=lambda rows: None) -> list[dict]:
    """Per length: median seconds per batch and NFE of each sampler, timed alternately.
    `finished_length(rows so far)` runs after each length (the benchmark writes its results there, so
    that a run stopped during L = 1024 keeps the shorter lengths)."""
    out = []
    for length, count in zip(lengths, repeats):
        seconds = {name: [] for name in SAMPLERS}
        nfe = {}
        for repeat in range(count):
            for name, options in SAMPLERS.items():
                elapsed, nfe[name] = time_decode(model, length, batch, options, seed=repeat)
                seconds[name].append(elapsed)
                print(f"L={length} repeat {repeat}: {name} {elapsed:.2f} s, NFE {nfe[name]}", flush=True)
        samplers = {name: dict(median_seconds=statistics.median(s), seconds=s, nfe=nfe[name],
                               seconds_per_call=statistics.median(s) / nfe[name]) for name, s in seconds.items()}
        fhs, ancestral = (samplers[name]["median_seconds"] for name in SAMPLERS)
        out.append(dict(length=length, repeats=count, samplers=samplers, speedup=ancestral / fhs,
                        nfe_ratio=samplers[list(SAMPLERS)[1]]["nfe"] / samplers["first-hitting"]["nfe"]))
        finished_length(out)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["lengths"]
    labels = [f"L = {r['length']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(SAMPLERS):
        axes[0].bar([j + (i - 0.5) * 0.4 for j in range(len(rows))],
                    [r["samplers"][name]["median_seconds"] for r in rows], 0.4, label=name)
    axes[0].set(yscale="log", ylabel=f"seconds per batch of {results['batch']} (median)")
    axes[0].legend(fontsize=8)
    axes[1].bar(range(len(rows)), [r["speedup"] for r in rows], 0.5, color="tab:green", label="time ratio")
    axes[1].plot(range(len(rows)), [r["nfe_ratio"] for r in rows], "ko--", label="NFE ratio")
    axes[1].axhline(20, color="gray", ls=":", lw=1, label="20x target")
    axes[1].set(ylabel="ancestral / first-hitting")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(range(len(rows)), labels)
    fig.suptitle(f"first-hitting vs uncached ancestral T={ANCESTRAL_STEPS}, {results['model']}, 1 thread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(results: dict) -> str:
    ancestral = list(SAMPLERS)[1]
    lines = [f"First-hitting vs the standard (uncached) ancestral sampler at T = {ANCESTRAL_STEPS}, batch "
             f"{results['batch']}, {results['model']}, {results['threads']} thread, median of the repeats:", "",
             "| L | first-hitting: s, NFE | ancestral: s, NFE | NFE ratio | time ratio | repeats |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["lengths"]:
        f, a = r["samplers"]["first-hitting"], r["samplers"][ancestral]
        lines.append(f"| {r['length']} | {f['median_seconds']:.1f}, {f['nfe']} | {a['median_seconds']:.1f}, "
                     f"{a['nfe']} | {r['nfe_ratio']:.1f} | **{r['speedup']:.1f}x** | {r['repeats']} |")
    missing = [length for length in results.get("asked_lengths", []) if length not in
               {r["length"] for r in results["lengths"]}]
    if missing:
        lines += ["", f"Not measured (the run was stopped before): L = {', '.join(map(str, missing))}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a trained run folder (default: untrained preset)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 1024])
    parser.add_argument("--repeats", type=int, nargs="+", default=[3, 3, 1],
                        help="timed runs of each sampler per length (one number for all, or one per length)")
    parser.add_argument("--batch", type=int, default=2)
    add_output_dir_argument(parser)
    args = parser.parse_args(argv)
    repeats = args.repeats * len(args.lengths) if len(args.repeats) == 1 else args.repeats
    if len(repeats) != len(args.lengths) or min(repeats) < 1:
        raise ValueError(f"--repeats takes one positive count or one per length ({len(args.lengths)}), got {args.repeats}")
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    model, described = load_model(args.run, args.preset, max(args.lengths))
    results = dict(model=described, batch=args.batch, threads=threads, ancestral_steps=ANCESTRAL_STEPS,
                   note="both samplers timed alternately in one process with the same seeds and the same "
                        f"OMP_NUM_THREADS={threads}; CPU wall times on a shared machine",
                   asked_lengths=args.lengths, lengths=[])

    def write(rows):
        results["lengths"] = rows
        return write_results(args.output_dir, NAME, results, plot, markdown_table)

    measure(model, args.lengths, repeats, args.batch, finished_length=write)
    return results


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.first_hitting_speed", main)
