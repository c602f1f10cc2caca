"""Benchmark: the decoders of `mdlm.decode` on a trained `small` MDLM, judged by an autoregressive baseline.

    python -m mdlm.eval.bench.decoding                     # runs/bench/mdlm-small, judged by runs/bench/ar-small
    python -m mdlm.eval.bench.decoding --length 128 --num-samples 16 --mdlm-run runs/x --ar-run runs/y

Both runs are trained with `mdlm.train.pretrain` (the `small` preset, `eval/bench/common.py`'s budget) when
absent. For each sampler and step count, on unconditional samples of `--length` tokens, it measures wall
time per sample, network calls (NFE), generative perplexity under the AR judge, the mean unigram entropy of the
samples (low perplexity with low entropy is the float32 trap) and n-gram Jensen-Shannon divergences
between the samples and held-out text (perplexity plus entropy alone can be gamed: Franca & Tong 2026,
"Hacking Generative Perplexity"); held-out text itself is scored in the same run as the reference and the
divergence between two disjoint held-out sets is the noise floor. It also reports
- first-hitting against the ancestral sampler: speed ratios at the same batch, against the standard
  (uncached) sampler at T = 1024 and against the step count whose quality matches first-hitting;
- NFE of the ancestral sampler with and without the RADD cache at T = 1000 for L = 256 (identical tokens);
- ascending step size (ASS, with and without EOSER) against uniform steps at equal NFE.
Writes results/decoding.json and results/decoding.png.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from mdlm.decode.loading import load_model
from mdlm.decode import DecodeConfig, decode
from mdlm.eval.bench.common import add_output_dir_argument, write_results
from mdlm.eval.bench.speculative import generative_perplexity, unigram_entropy

ROOT = Path(__file__).resolve().parents[2]
NAME = "decoding"


# ----------------------------------------------------------------------------------------------------
# Runs and data
# ----------------------------------------------------------------------------------------------------

def resolve_run(path: str | None, name: str) -> Path:
    """The benchmark's own run `name` (trained or resumed on demand by `common.ensure_run`) when no
    path is given, else the given run folder."""
    if path is None:
        from mdlm.eval.bench.common import ensure_run

        return ensure_run(name)
    run = Path(path)
    if not (run / "config.json").is_file():
        raise SystemExit(f"{run} is not a run folder (no config.json); train it with mdlm-pretrain or leave the "
                         f"flag out to use (and train if needed) runs/bench/{name}")
    return run


def heldout_blocks(tokenizer, length: int, count: int, documents: int = 300) -> torch.Tensor:
    """(count, length) packed blocks of the validation split's first `documents` files (joined by EOS, as
    in training), spread evenly over them."""
    from mdlm.data import packed_split

    blocks = packed_split("stdlib", "validation", tokenizer, length, limit=documents)
    if len(blocks) < count:
        raise ValueError(f"the validation split has {len(blocks)} blocks of {length} tokens, {count} needed")
    step = len(blocks) // count  # spread over the split rather than the first few files
    return torch.stack([blocks[i * step]["input_ids"] for i in range(count)]).long()


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------

def ngram_distribution(tokens: torch.Tensor, n: int) -> Counter:
    counts = Counter()
    for row in tokens.tolist():
        counts.update(tuple(row[i:i + n]) for i in range(len(row) - n + 1))
    return counts


def jensen_shannon(a: Counter, b: Counter) -> float:
    """JS divergence (nats, in [0, ln 2]) between two empirical distributions."""
    total_a, total_b = sum(a.values()), sum(b.values())
    value = 0.0
    for key in set(a) | set(b):
        p, q = a.get(key, 0) / total_a, b.get(key, 0) / total_b
        m = 0.5 * (p + q)
        if p:
            value += 0.5 * p * math.log(p / m)
        if q:
            value += 0.5 * q * math.log(q / m)
    return value


class Judge:
    """Scores token sequences: AR generative perplexity, unigram entropy, n-gram JS to held-out text."""

    def __init__(self, judge_model, judge_tokenizer, sample_tokenizer, reference: torch.Tensor):
        self.model, self.judge_tokenizer, self.sample_tokenizer = judge_model, judge_tokenizer, sample_tokenizer
        self.same_vocabulary = judge_tokenizer.get_vocab() == sample_tokenizer.get_vocab()
        self.reference = {n: ngram_distribution(reference, n) for n in (1, 2)}

    def perplexity(self, tokens: torch.Tensor) -> float | None:
        if self.model is None:
            return None
        if self.same_vocabulary:
            return generative_perplexity(self.model, tokens, 1)
        # Different tokenizers: re-tokenize each sample's text for the judge, pooling the NLL.
        nll, count = 0.0, 0
        for row in tokens.tolist():
            ids = self.judge_tokenizer(self.sample_tokenizer.decode(row), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ids[: self.model.config.max_position_embeddings]])
            if ids.shape[1] < 2:
                continue
            nll += math.log(generative_perplexity(self.model, ids, 1)) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
        return math.exp(nll / max(1, count))

    def score(self, tokens: torch.Tensor) -> dict:
        return {"gen_ppl": self.perplexity(tokens), "unigram_entropy": unigram_entropy(tokens),
                "js_unigram": jensen_shannon(ngram_distribution(tokens, 1), self.reference[1]),
                "js_bigram": jensen_shannon(ngram_distribution(tokens, 2), self.reference[2])}


# ----------------------------------------------------------------------------------------------------
# The measurement
# ----------------------------------------------------------------------------------------------------

def sample(model, config: DecodeConfig, num: int, length: int, batch: int):
    """Unconditional samples (num, length), total NFE over the batches and wall seconds."""
    mask_id = model.config.mask_token_id
    tokens, nfe, seconds = [], 0, 0.0
    for start in range(0, num, batch):
        rows = min(batch, num - start)
        canvas = torch.full((rows, length), mask_id, dtype=torch.long)
        began = time.perf_counter()
        result = decode(model, canvas, replace(config, seed=(config.seed or 0) + start))
        seconds += time.perf_counter() - began
        tokens.append(result.tokens)
        nfe += result.nfe
    return torch.cat(tokens), nfe / math.ceil(num / batch), seconds


def sampler_grid(length: int, eos_id: int) -> list[tuple[str, DecodeConfig]]:
    ass_steps = max(1, length.bit_length() - 1)
    grid = [("first-hitting", DecodeConfig(sampler="first-hitting"))]
    grid += [(f"ancestral T={t}", DecodeConfig(sampler="ancestral", steps=t)) for t in (16, 64, 256, 1024)]
    grid += [(f"confidence T={t}", DecodeConfig(sampler="confidence", steps=t))
             for t in sorted({ass_steps, 16, 32, length})]
    grid += [
        (f"random-order T={length}", DecodeConfig(sampler="confidence", remasking="random", steps=length)),
        (f"ascending (ASS) T={ass_steps}", DecodeConfig(sampler="confidence", schedule="ascending")),
        (f"ascending+EOSER T={ass_steps}", DecodeConfig(sampler="confidence", schedule="ascending", eoser=True,
                                                        eos_token_id=eos_id)),
        (f"uniform+EOSER T={ass_steps}", DecodeConfig(sampler="confidence", steps=ass_steps, eoser=True,
                                                      eos_token_id=eos_id)),
        ("threshold 0.9", DecodeConfig(sampler="confidence", remasking="threshold", threshold=0.9)),
    ]
    return grid


def radd_cache_nfe(model, length: int, steps: int, seeds: int) -> dict:
    """Ancestral sampler at T = steps with and without the RADD cache: NFE and identical tokens (B = 1)."""
    mask_id = model.config.mask_token_id
    cached, uncached, identical, times = [], [], True, [0.0, 0.0]
    for seed in range(seeds):
        canvas = torch.full((1, length), mask_id, dtype=torch.long)
        runs = []
        for k, use_cache in enumerate((True, False)):
            began = time.perf_counter()
            runs.append(decode(model, canvas, DecodeConfig(sampler="ancestral", steps=steps, use_cache=use_cache,
                                                           seed=seed)))
            times[k] += time.perf_counter() - began
        cached.append(runs[0].nfe)
        uncached.append(runs[1].nfe)
        identical &= bool(torch.equal(runs[0].tokens, runs[1].tokens))
    expected = steps * (1 - (1 - 1 / steps) ** length)
    return {"length": length, "steps": steps, "seeds": seeds, "nfe_cached": sum(cached) / seeds,
            "nfe_uncached": sum(uncached) / seeds, "nfe_expected_cached": expected,
            "nfe_reduction": sum(uncached) / sum(cached), "identical_tokens": identical,
            "seconds_cached": times[0] / seeds, "seconds_uncached": times[1] / seeds}


def speed_comparison(model, length: int, batch: int, matched_steps: int) -> dict:
    """Wall time per sample at the same batch: first-hitting vs the standard (uncached) ancestral sampler at
    T = 1024 and vs the cached ancestral sampler at the step count whose quality matches first-hitting."""
    configs = {"first-hitting": DecodeConfig(sampler="first-hitting"),
               "ancestral T=1024 uncached": DecodeConfig(sampler="ancestral", steps=1024, use_cache=False),
               f"ancestral T={matched_steps} cached": DecodeConfig(sampler="ancestral", steps=matched_steps)}
    out = {}
    for name, config in configs.items():
        _, nfe, seconds = sample(model, replace(config, seed=0), batch, length, batch)
        out[name] = {"seconds_per_sample": seconds / batch, "nfe": nfe}
    fhs = out["first-hitting"]["seconds_per_sample"]
    return {"batch": batch, "timings": out,
            "speedup_vs_standard_T1024": out["ancestral T=1024 uncached"]["seconds_per_sample"] / fhs,
            "speedup_vs_matched_cached": out[f"ancestral T={matched_steps} cached"]["seconds_per_sample"] / fhs,
            "matched_steps": matched_steps}


def matching_steps(rows: dict, tolerance: float) -> int:
    """The smallest ancestral T whose generative perplexity is within `tolerance` (relative) of
    first-hitting's (the largest T measured when none is)."""
    target = rows["first-hitting"]["gen_ppl"]
    ancestral = sorted((int(k.split("=")[1]), v) for k, v in rows.items() if k.startswith("ancestral T="))
    if target is None:
        return ancestral[-1][0]
    for steps, row in ancestral:
        if abs(row["gen_ppl"] - target) <= tolerance * target:
            return steps
    return ancestral[-1][0]


def run(args) -> dict:
    torch.manual_seed(0)
    mdlm_run = resolve_run(args.mdlm_run, "mdlm-small")
    ar_run = None if args.no_judge else resolve_run(args.ar_run, "ar-small")
    model, tokenizer = load_model(mdlm_run)
    judge_model, judge_tokenizer = load_model(ar_run) if ar_run else (None, tokenizer)
    length = min(args.length, model.config.max_position_embeddings)
    reference_blocks = heldout_blocks(tokenizer, length, 2 * args.num_samples)
    reference, second_reference = reference_blocks[: args.num_samples], reference_blocks[args.num_samples:]
    judge = Judge(judge_model, judge_tokenizer, tokenizer, reference)

    rows = {"held-out text": {**judge.score(second_reference), "nfe": None, "seconds_per_sample": None}}
    from tqdm import tqdm

    for name, config in tqdm(sampler_grid(length, tokenizer.eos_token_id), desc="samplers"):
        tokens, nfe, seconds = sample(model, replace(config, seed=args.seed), args.num_samples, length,
                                      args.batch_size)
        rows[name] = {**judge.score(tokens), "nfe": nfe, "seconds_per_sample": seconds / args.num_samples}
        tqdm.write(f"{name}: {rows[name]}")
    matched = matching_steps(rows, args.quality_tolerance)
    speed = speed_comparison(model, length, args.speed_batch, matched)
    radd_length = min(256, model.config.max_position_embeddings)
    radd = radd_cache_nfe(model, radd_length, 1000, args.radd_seeds)
    ass_steps = max(1, length.bit_length() - 1)
    ascending = {key: rows[key] for key in (f"confidence T={ass_steps}", f"ascending (ASS) T={ass_steps}",
                                            f"uniform+EOSER T={ass_steps}", f"ascending+EOSER T={ass_steps}")}
    return {
        "settings": {"mdlm_run": str(mdlm_run), "ar_run": str(ar_run) if ar_run else None, "length": length,
                     "quality_tolerance": args.quality_tolerance,
                     "num_samples": args.num_samples, "batch_size": args.batch_size, "seed": args.seed,
                     "temperature": 1.0, "reference": "stdlib validation split, packed blocks",
                     "note": "CPU wall times on a shared machine; L = 128 and 8 samples per sampler bound the "
                             "cost (the RADD-cache check uses L = 256)",
                     "torch_threads": torch.get_num_threads()},
        "samplers": rows,
        "first_hitting_speed": speed,
        "radd_cache": radd,
        "ascending_vs_uniform": ascending,
        "noise_floor": {"js_unigram": rows["held-out text"]["js_unigram"],
                        "js_bigram": rows["held-out text"]["js_bigram"]},
    }


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------

def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in results["samplers"].items() if v["nfe"]}
    families = {"ancestral": "tab:blue", "confidence": "tab:orange", "first-hitting": "tab:green",
                "random-order": "tab:olive", "ascending": "tab:red", "uniform+EOSER": "tab:purple",
                "threshold": "tab:brown"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, row in rows.items():
        colour = next((c for f, c in families.items() if name.startswith(f)), "gray")
        for ax, key in zip(axes, ("gen_ppl", "unigram_entropy", "js_bigram")):
            if row[key] is not None:
                ax.scatter(row["nfe"], row[key], color=colour)
                ax.annotate(name, (row["nfe"], row[key]), fontsize=6)
    reference = results["samplers"]["held-out text"]
    for ax, key, label in zip(axes, ("gen_ppl", "unigram_entropy", "js_bigram"),
                              ("generative perplexity (AR judge)", "unigram entropy (nats)",
                               "bigram JS divergence to held-out text")):
        if reference[key] is not None:
            ax.axhline(reference[key], color="black", linestyle="--", linewidth=1, label="held-out text")
        ax.set(xscale="log", xlabel="network calls (NFE) per sample batch", ylabel=label)
        ax.legend(fontsize=7)
    fig.suptitle(f"decoders on {_short(results['settings']['mdlm_run'])} (L = {results['settings']['length']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(path: str | None) -> str | None:
    """A run path relative to the repository when it lies inside it."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def _fmt(value, spec=".3g"):
    return "–" if value is None else format(value, spec)


def markdown_table(results: dict) -> str:
    s = results["settings"]
    lines = [f"Unconditional samples of L = {s['length']} tokens ({s['num_samples']} per sampler, temperature 1) "
             f"from `{_short(s['mdlm_run'])}`, judged by `{_short(s['ar_run'])}`. NFE: network calls per batch "
             f"of {s['batch_size']}; {s['note']}.", "",
             "| sampler | NFE | s / sample | gen. PPL | unigram entropy | JS unigram | JS bigram |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in results["samplers"].items():
        lines.append(f"| {name} | {_fmt(row['nfe'], '.0f')} | {_fmt(row['seconds_per_sample'], '.3f')} | "
                     f"{_fmt(row['gen_ppl'], '.1f')} | {_fmt(row['unigram_entropy'], '.2f')} | "
                     f"{_fmt(row['js_unigram'], '.3f')} | {_fmt(row['js_bigram'], '.3f')} |")
    speed, radd = results["first_hitting_speed"], results["radd_cache"]
    tolerance = s.get("quality_tolerance", 0.05)
    rows = results["samplers"]
    target, matched = rows["first-hitting"]["gen_ppl"], rows.get(f"ancestral T={speed['matched_steps']}", {})
    if target is not None and matched.get("gen_ppl") is not None and \
            abs(matched["gen_ppl"] - target) <= tolerance * target:
        which = f"the smallest step count whose perplexity is within {tolerance:.0%} of first-hitting's"
    else:
        which = f"the largest measured (no step count came within {tolerance:.0%} of first-hitting's perplexity)"
    lines += ["",
              f"First-hitting vs ancestral (batch {speed['batch']}): {speed['speedup_vs_standard_T1024']:.1f}x "
              f"faster than the standard (uncached) ancestral sampler at T = 1024 and "
              f"{speed['speedup_vs_matched_cached']:.1f}x faster than the RADD-cached one at T = "
              f"{speed['matched_steps']}, {which}.",
              f"RADD cache, ancestral T = {radd['steps']}, L = {radd['length']}: NFE {radd['nfe_uncached']:.0f} -> "
              f"{radd['nfe_cached']:.0f} (expected {radd['nfe_expected_cached']:.0f}), "
              f"{radd['nfe_reduction']:.1f}x fewer calls, identical tokens: {radd['identical_tokens']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mdlm-run", default=None, help="default: runs/bench/mdlm-small (trained when absent)")
    parser.add_argument("--ar-run", default=None, help="the AR judge; default: runs/bench/ar-small (trained when absent)")
    parser.add_argument("--no-judge", action="store_true", help="skip the AR judge (no generative perplexity)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--speed-batch", type=int, default=2)
    parser.add_argument("--radd-seeds", type=int, default=1)
    parser.add_argument("--quality-tolerance", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    add_output_dir_argument(parser)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    results = run(args)
    results["settings"]["total_minutes"] = round((time.perf_counter() - began) / 60, 1)
    write_results(args.output_dir, NAME, results, plot, markdown_table)
    return 0


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.decoding", main)
