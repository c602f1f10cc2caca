"""Benchmark of the categorical draw: this project's float64 sampler against the two usual ways.

  (a) `mdlm.kernels.sample_categorical`: float64 Gumbel-max over row chunks (the torch reference on CPU),
      which also returns log p of the draw (what every sampler but the margin / entropy policies uses);
  (d) the same with `statistics=True`: also the top-1/top-2 log-probabilities and the entropy;
  (b) naive float64 (LLaDA style): a float64 copy of the whole logits plus float64 noise, then argmax;
  (c) plain float32 Gumbel-max: torch.rand noise in float32 added to the logits (the baseline).

For a grid of (rows, vocab) up to 4096 x 50257, each shape runs in a fresh single-threaded process
(OMP_NUM_THREADS=1 for all three) that times the three draws interleaved (median of --repeats) and measures
each one's peak extra resident memory (VmHWM after resetting it through /proc/self/clear_refs, minus the
resident size just before the draw; for (a) with its kept chunk workspace freed first). Times and memory
are reported as ratios to (c) and memory also as a fraction of the float32 logits' size.

Second part (Zheng et al. 2024): 256 unconditional samples from a trained model (--run) with MDLM's
ancestral sampler in its original per-step form, one categorical over the vocabulary plus "stay masked"
(probability 1 - d, d = 1/remaining steps), drawn with (a) and with float32 noise (the same counter hash
truncated to 24 bits, `precision="float32"`), same seeds. Float32 noise cannot lift a token whose
d * p is below ~1e-7 over the mask, so the samples lose their tail: lower unigram entropy and lower
surprisal of the drawn tokens, i.e. a lowered effective temperature.

No GPU here: the Triton kernel's timing is left to a machine with one (the JSON says so).

    python -m mdlm.eval.bench.sampling [--run runs/bench/mdlm-small] [--quick] [--skip-grid|--skip-entropy]
Writes results/sampling.json and results/sampling.png. About 10 minutes on one free CPU core (the grid ~2,
the samples ~8: 256 x 16 tokens, 1024 steps); --quick is a one-minute smoke test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mdlm.eval.bench.common import (add_output_dir_argument, is_finished, measure_in_fresh_process, quick_results_dir,
                                   runs_dir, write_results)

NAME = "sampling"
ROOT = Path(__file__).resolve().parents[2]
METHODS = ("a", "b", "c", "d")
METHOD_LABELS = {"a": "(a) chunked float64 (this)", "b": "(b) naive float64 copy", "c": "(c) float32 Gumbel-max",
                 "d": "(d) (a) with top-1/top-2/entropy"}
CHUNKED_METHODS = ("a", "d")  # the ones with a kept chunk workspace
GRID = [(64, 8192), (64, 50257), (512, 8192), (512, 50257), (4096, 8192), (4096, 50257)]
QUICK_GRID = [(64, 8192), (256, 50257)]
SMALL_SHAPE_ENTRIES = 1 << 21
TIMING_NOTE = ("each shape in a fresh process with OMP_NUM_THREADS=1 and torch.set_num_threads(1) for all three "
               "methods; the methods alternate (a, b, c, a, ...) and the median of the repeats is kept. (a) "
               "reuses its chunk workspace between calls (steady state of a decoding loop); (b) and (c) "
               "allocate theirs per call, as written. Memory: peak extra resident size of one draw, for (a) "
               "with its workspace freed first and at least the workspace's size. Shapes below 2M entries get "
               "proportionally more repeats (the entry's `repeats`).")


# ----------------------------------------------------------------------------------------------------
# The three draws
# ----------------------------------------------------------------------------------------------------

def draw_chunked_float64(logits: torch.Tensor, seed: int) -> torch.Tensor:
    from mdlm.kernels import sample_categorical

    return sample_categorical(logits, seed=seed, backend="torch", statistics=False).tokens


def draw_chunked_float64_with_statistics(logits: torch.Tensor, seed: int) -> torch.Tensor:
    from mdlm.kernels import sample_categorical

    return sample_categorical(logits, seed=seed, backend="torch", statistics=True).tokens


def draw_triton_float64(logits: torch.Tensor, seed: int) -> torch.Tensor:
    from mdlm.kernels import sample_categorical

    return sample_categorical(logits, seed=seed, backend="triton").tokens


def draw_naive_float64(logits: torch.Tensor, seed: int) -> torch.Tensor:
    """LLaDA's add_gumbel_noise idea (float64 copy, float64 uniforms), written with in-place ops."""
    generator = torch.Generator(device=logits.device).manual_seed(seed)
    scores = logits.to(torch.float64)
    noise = torch.rand(scores.shape, dtype=torch.float64, generator=generator, device=logits.device)
    scores.sub_(noise.log_().neg_().log_())  # x + G, G = -log(-log u)
    return scores.argmax(-1)


def draw_float32(logits: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=logits.device).manual_seed(seed)
    noise = torch.rand(logits.shape, dtype=torch.float32, generator=generator, device=logits.device)
    return noise.log_().neg_().log_().neg_().add_(logits).argmax(-1)


DRAWS = {"a": draw_chunked_float64, "b": draw_naive_float64, "c": draw_float32,
         "d": draw_chunked_float64_with_statistics}


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def timed_draw(draw, logits, seed: int) -> tuple[float, int]:
    """Seconds of one draw and its peak resident memory above the resident size just before it."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size to the current one
    before = resident_bytes()
    start = time.perf_counter()
    draw(logits, seed)
    seconds = time.perf_counter() - start
    return seconds, max(0, peak_resident_bytes() - before)


def measure_in_this_process(rows: int, vocab: int, repeats: int) -> dict:
    """Median time of each method over `repeats` draws, interleaved (a, b, c, a, b, c, ...) so that load
    from other processes hits them alike, and the peak extra resident memory of each (the largest over
    the repeats). (a) keeps its chunk workspace between calls, as a decoding loop uses it; its memory is
    measured on separate draws that start with the workspace freed, so that it counts. Run in a fresh
    process by `measure`."""
    from mdlm.kernels.sampling_reference import _ChunkBuffers

    torch.set_num_threads(1)
    logits = torch.empty(rows, vocab).normal_(generator=torch.Generator().manual_seed(0)).mul_(3.0)
    times = {method: [] for method in METHODS}
    peaks = {method: 0 for method in METHODS}
    for method in METHODS:
        DRAWS[method](logits[:2], 0)  # load libraries, warm the allocator
    for repeat in range(repeats):
        for method in METHODS:
            if method in CHUNKED_METHODS:
                _ChunkBuffers.release()
                _, peak = timed_draw(DRAWS[method], logits, repeats + repeat)
                seconds, _ = timed_draw(DRAWS[method], logits, repeat)
            else:
                seconds, peak = timed_draw(DRAWS[method], logits, repeat)
            times[method].append(seconds)
            peaks[method] = max(peaks[method], peak)
    return {method: dict(seconds=statistics.median(times[method]), all_seconds=times[method],
                         peak_extra_bytes=peaks[method], logits_bytes=logits.numel() * 4) for method in METHODS}


def measure(rows: int, vocab: int, repeats: int) -> dict:
    return measure_in_fresh_process("mdlm.eval.bench.sampling", "measure_in_this_process", rows, vocab, repeats)


def repeats_for(rows: int, vocab: int, repeats: int) -> int:
    """More repeats for shapes below 2M entries, whose draws take milliseconds and are the noisiest."""
    return repeats * max(1, SMALL_SHAPE_ENTRIES // (rows * vocab))


def run_grid(grid, repeats: int) -> list[dict]:
    from mdlm.kernels.sampling_reference import WORKING_BYTES_PER_ELEMENT, rows_per_chunk

    rows_out = []
    for rows, vocab in tqdm(grid, desc="time and memory", unit="shape"):
        count = repeats_for(rows, vocab, repeats)
        measured = measure(rows, vocab, count)
        # Memory freed by an earlier draw and reused is already resident, so the measured peak can miss
        # (a)'s workspace: its size is counted as the least (a) needs.
        workspace = min(rows, rows_per_chunk(vocab)) * vocab * WORKING_BYTES_PER_ELEMENT
        for chunked in CHUNKED_METHODS:
            measured[chunked]["peak_extra_bytes"] = max(measured[chunked]["peak_extra_bytes"], workspace)
        base = measured["c"]
        entry = dict(rows=rows, vocab=vocab, repeats=count, logits_mb=base["logits_bytes"] / 2**20,
                     workspace_mb_a=workspace / 2**20, methods={})
        for method, m in measured.items():
            entry["methods"][method] = dict(
                seconds=m["seconds"], all_seconds=m["all_seconds"], peak_extra_mb=m["peak_extra_bytes"] / 2**20,
                ns_per_entry=m["seconds"] / (rows * vocab) * 1e9,
                time_vs_c=m["seconds"] / base["seconds"],
                memory_vs_c=m["peak_extra_bytes"] / max(base["peak_extra_bytes"], 1),
                memory_vs_logits=m["peak_extra_bytes"] / m["logits_bytes"])
        rows_out.append(entry)
    return rows_out


def measure_on_device(device: str, grid, repeats: int) -> list[dict]:
    """On a GPU: time of the Triton kernel, of the torch reference and of (b), (c) on the device, and their
    peak extra device memory (torch.cuda.max_memory_allocated over the draw). Off CUDA (used by the tests)
    only the torch methods are timed and memory is not measured."""
    cuda = torch.device(device).type == "cuda"
    draws = dict(DRAWS)
    if cuda:
        draws = {"a-triton": draw_triton_float64, **draws}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out = []
    for rows, vocab in grid:
        logits = torch.empty(rows, vocab, device=device).normal_().mul_(3.0)
        entry = dict(rows=rows, vocab=vocab, logits_mb=logits.numel() * 4 / 2**20, methods={})
        for name, draw in draws.items():
            draw(logits[:2], 0)
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            best = math.inf
            for repeat in range(repeats):
                start = time.perf_counter()
                draw(logits, repeat)
                sync()
                best = min(best, time.perf_counter() - start)
            extra = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None
            entry["methods"][name] = dict(seconds=best, peak_extra_mb=extra)
        for m in entry["methods"].values():
            m["time_vs_c"] = m["seconds"] / entry["methods"]["c"]["seconds"]
        out.append(entry)
        del logits
    return out


# ----------------------------------------------------------------------------------------------------
# Entropy of samples from a trained model: float64 vs float32 noise in MDLM's per-step categorical
# ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def ancestral_samples(model, num_samples: int, length: int, steps: int, precision: str, seed: int,
                      batch_rows: int = 64):
    """MDLM's ancestral sampler (linear schedule) with the joint categorical of each step: the vocabulary
    with weights d * p(x0 | x_t) and the mask token with weight 1 - d. The network output of a row is
    reused while the row does not change (RADD cache). Returns tokens and the model's log p of each drawn
    token (at the step it was revealed)."""
    from mdlm.kernels import sample_categorical

    mask_id = model.config.mask_token_id
    tokens = torch.full((num_samples, length), mask_id, dtype=torch.long)
    revealed_logp = torch.zeros(num_samples, length, dtype=torch.float64)
    log_probs = torch.empty(num_samples, length, model.config.vocab_size)
    stale = torch.ones(num_samples, dtype=torch.bool)
    for step in tqdm(range(steps), desc=f"ancestral samples ({precision} noise)", unit="step", leave=False):
        if bool(stale.any()):
            rows = stale.nonzero()[:, 0]
            for chunk in rows.split(batch_rows):
                log_probs[chunk] = torch.log_softmax(model(tokens[chunk]).logits.float(), -1)
            stale.zero_()
        reveal_probability = 1.0 / (steps - step)  # (alpha_s - alpha_t) / (1 - alpha_t)
        masked = tokens == mask_id
        if not bool(masked.any()):
            break
        joint = log_probs[masked] + math.log(reveal_probability)
        joint[:, mask_id] = math.log1p(-reveal_probability) if reveal_probability < 1 else float("-inf")
        draw = sample_categorical(joint, seed=seed * 1_000_003 + step, precision=precision, backend="torch")
        chosen = torch.zeros_like(tokens)
        chosen[masked] = draw.tokens
        newly = masked & (chosen != mask_id)
        tokens[newly] = chosen[newly]
        revealed_logp[newly] = (draw.logprob - math.log(reveal_probability))[(draw.tokens != mask_id)]
        stale |= newly.any(1)
    return tokens, revealed_logp


def unigram_entropy(tokens: torch.Tensor) -> float:
    """Mean over samples of the entropy (nats) of the sample's own token frequencies (Zheng et al.)."""
    counts = torch.zeros(tokens.shape[0], int(tokens.max()) + 1, dtype=torch.float64)
    frequencies = counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=torch.float64)) / tokens.shape[1]
    return float(-(frequencies * frequencies.log()).nansum(1).mean())


def entropy_experiment(run: Path, num_samples: int, length: int, steps: int, seed: int) -> dict:
    if not (run / "config.json").exists() or ((run / "trainer_state.json").exists() and not is_finished(run)):
        return dict(skipped=f"no finished trained run at {run} (train it with train/pretrain.py or "
                            "mdlm.eval.bench.common.ensure_run('mdlm-small'), then rerun with --skip-grid)")
    from mdlm.model import MDLMForMaskedLM

    model = MDLMForMaskedLM.from_pretrained(run).eval()
    if length > model.config.max_position_embeddings:
        raise ValueError(f"--entropy-length {length} exceeds the model's context {model.config.max_position_embeddings}")
    out = dict(run=str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
               num_samples=num_samples, length=length, steps=steps, temperature=1.0, methods={})
    for method, precision in (("a", "float64"), ("c", "float32")):
        start = time.perf_counter()
        tokens, logp = ancestral_samples(model, num_samples, length, steps, precision, seed)
        out["methods"][method] = dict(
            precision=precision, unigram_entropy=unigram_entropy(tokens),
            pooled_unigram_entropy=unigram_entropy(tokens.reshape(1, -1)),  # all samples' tokens together
            mean_surprisal=float(-logp.mean()),  # nats per token under the model; lower = colder
            distinct_tokens=int(tokens.unique().numel()), seconds=time.perf_counter() - start)
        print(f"entropy with {METHOD_LABELS[method]}: {out['methods'][method]}")
    return out


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------

def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = results["grid"]
    labels = [f"{g['rows']}x{g['vocab']}" for g in grid]
    entropy = results.get("entropy", {}).get("methods")
    fig, axes = plt.subplots(1, 3 if entropy else 2, figsize=(17 if entropy else 12, 4.2))
    width = 0.2
    for i, method in enumerate(METHODS):
        xs = [j + (i - 1.5) * width for j in range(len(grid))]
        axes[0].bar(xs, [g["methods"][method]["time_vs_c"] for g in grid], width, label=METHOD_LABELS[method])
        axes[1].bar(xs, [g["methods"][method]["memory_vs_logits"] for g in grid], width, label=METHOD_LABELS[method])
    axes[0].axhline(1.5, color="gray", ls="--", lw=1, label="1.5x target for (a)")
    axes[0].set_ylabel("time / time of (c)")
    axes[1].axhline(0.25, color="gray", ls="--", lw=1, label="1/4 target for (a)")
    axes[1].set_ylabel("peak extra memory / float32 logits size")
    axes[1].set_yscale("log")
    for ax in axes[:2]:
        ax.set_xticks(range(len(grid)), labels, rotation=30)
        ax.set_xlabel("rows x vocab")
        ax.legend(fontsize=8)
    if entropy:
        metrics = [("pooled_unigram_entropy", "pooled unigram entropy"), ("mean_surprisal", "mean surprisal")]
        for i, method in enumerate(entropy):
            values = [entropy[method].get(key, float("nan")) for key, _ in metrics]
            axes[2].bar([j + (i - 0.5) * 0.4 for j in range(len(metrics))], values, 0.4, label=METHOD_LABELS[method],
                        color=f"C{METHODS.index(method)}")
            low = min(values) if i == 0 else min(low, *values)
        axes[2].set_ylim(bottom=max(0.0, low - 0.5))  # the differences are small: do not start at 0
        axes[2].set_xticks(range(len(metrics)), [label for _, label in metrics])
        axes[2].set_ylabel("nats")
        axes[2].set_title(f"{results['entropy']['num_samples']} samples, {results['entropy']['steps']} steps, T=1",
                          fontsize=9)
        axes[2].legend(fontsize=8)
    fig.suptitle(f"Categorical draw on CPU ({results['threads']} thread): time and memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table lines: first column left-aligned, the others (numbers) right-aligned."""
    lines = ["| " + " | ".join(headers) + " |", "| --- |" + " ---: |" * (len(headers) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown_table(results: dict) -> str:
    lines = _table(
        ["rows x vocab", "logits (MB)", "(a) time vs (c)", "(d) time vs (c)", "(b) time vs (c)",
         "(a) peak extra / logits", "(b) peak extra / logits", "(c) peak extra / logits", "(c) ms"],
        [[f"{g['rows']} x {g['vocab']}", f"{g['logits_mb']:.0f}", f"{g['methods']['a']['time_vs_c']:.2f}",
          f"{g['methods']['d']['time_vs_c']:.2f}" if "d" in g["methods"] else "",
          f"{g['methods']['b']['time_vs_c']:.2f}", f"{g['methods']['a']['memory_vs_logits']:.3f}",
          f"{g['methods']['b']['memory_vs_logits']:.2f}", f"{g['methods']['c']['memory_vs_logits']:.2f}",
          f"{g['methods']['c']['seconds'] * 1e3:.0f}"] for g in results["grid"]])
    entropy = results.get("entropy", {})
    if "methods" in entropy:
        lines += ["", f"Samples from `{entropy['run']}` ({entropy['num_samples']} x {entropy['length']} tokens, "
                      f"{entropy['steps']} ancestral steps, temperature 1):", ""]
        lines += _table(
            ["noise", "unigram entropy per sample (nats)", "pooled unigram entropy (nats)",
             "mean surprisal (nats/token)", "distinct tokens"],
            [[METHOD_LABELS[method], f"{e['unigram_entropy']:.3f}", f"{e.get('pooled_unigram_entropy', math.nan):.3f}",
              f"{e['mean_surprisal']:.3f}", str(e["distinct_tokens"])] for method, e in entropy["methods"].items()])
    elif "skipped" in entropy:
        lines += ["", f"Entropy of model samples: skipped ({entropy['skipped']})."]
    if results.get("gpu_grid"):
        lines += ["", "On the GPU (time vs (c) on the device; peak extra device memory in MB):", ""]
        lines += _table(
            ["rows x vocab", "Triton kernel", "(a) torch", "(b)", "Triton MB", "(b) MB", "(c) MB"],
            [[f"{g['rows']} x {g['vocab']}"] + [f"{g['methods'][m]['time_vs_c']:.2f}" for m in ("a-triton", "a", "b")]
             + [f"{g['methods'][m]['peak_extra_mb']:.1f}" for m in ("a-triton", "b", "c")] for g in results["gpu_grid"]])
    lines += ["", f"_{results['gpu']}_"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=runs_dir() / "mdlm-small", help="trained MDLM run")
    p.add_argument("--repeats", type=int, default=5, help="timed draws per configuration (the median is kept)")
    p.add_argument("--entropy-samples", type=int, default=256)
    p.add_argument("--entropy-length", type=int, default=16, help="tokens per sample")
    p.add_argument("--entropy-steps", type=int, default=1024,
                   help="ancestral steps: float32 noise only hurts when the per-step reveal probability is small")
    p.add_argument("--skip-grid", action="store_true", help="keep the grid of an existing results file")
    p.add_argument("--skip-entropy", action="store_true", help="keep the entropy part of an existing results file")
    p.add_argument("--quick", action="store_true", help="a tiny grid and 16 samples (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    add_output_dir_argument(p)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    args.output_dir = quick_results_dir(args.output_dir, args.quick)
    given_run = args.run != build_parser().get_default("run")  # the default one is reported as skipped if absent
    if given_run and not args.skip_entropy and not (args.run / "config.json").is_file():
        raise ValueError(f"--run {args.run}: not a run folder (no config.json); train it (python train/pretrain.py) "
                         "or pass a finished run")
    path = args.output_dir / f"{NAME}.json"
    if args.skip_grid and path.exists():
        results = json.loads(path.read_text())
    else:
        grid = QUICK_GRID if args.quick else GRID
        results = dict(threads=1, repeats=args.repeats, methods=METHOD_LABELS, timing=TIMING_NOTE,
                       grid=run_grid(grid, 1 if args.quick else args.repeats))
    if torch.cuda.is_available():
        results["gpu_grid"] = measure_on_device("cuda", QUICK_GRID if args.quick else GRID, args.repeats)
        results["gpu"] = f"GPU timings ({torch.cuda.get_device_name()}) are in gpu_grid."
    else:
        results.pop("gpu_grid", None)
        results["gpu"] = ("No GPU in the session that produced these numbers: the Triton kernel "
                          "(kernels/sampling_triton.py) was checked token for token under TRITON_INTERPRET=1 "
                          "and compiled for sm_90; its GPU timing is left to a machine with one "
                          "(this benchmark then adds gpu_grid).")
    previous = json.loads(path.read_text()) if path.exists() else {}
    if args.skip_entropy and "entropy" in previous:
        results["entropy"] = previous["entropy"]
    else:
        samples = 16 if args.quick else args.entropy_samples
        results["entropy"] = entropy_experiment(args.run, samples, args.entropy_length, args.entropy_steps, args.seed)
    return write_results(args.output_dir, NAME, results, plot, markdown_table)


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.sampling", main)
