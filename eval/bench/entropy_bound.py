"""Benchmark: entropy-bound decoding (Ben-Hamu et al. 2025, arXiv 2505.24857) in mdlm.

    python -m mdlm.eval.bench.entropy_bound                 # both parts, results/entropy_bound.{json,png}
    python -m mdlm.eval.bench.entropy_bound --quick         # a smoke run into results/quick/

(a) DiffusionGemma: on a tiny random `DiffusionGemmaForBlockDiffusion` (built from its config; nothing is
    downloaded), mdlm's uniform-noise decoder (`mdlm.decode.uniform_noise`) against transformers' own
    `generate` on the same prompts with the same seeds: seconds per generated token of each, their ratio
    (repeats interleaved in one process, one thread), whether the tokens are equal, decoder calls (NFE)
    and tokens per decoder call, at a few entropy bounds.
(b) Masked models: on a small MDLM run (`--mdlm-run`, default runs/tiny, trained with
    `accelerate launch train/pretrain.py --config tiny --output-dir runs/tiny`), entropy-bound remasking
    against Fast-dLLM threshold decoding and fixed-step confidence decoding at matched NFE: NFE, seconds
    per sample, generative perplexity (under `--judge-run`, an AR run, when given) and unigram entropy.
    It runs only when `DecodeConfig(remasking="entropy-bound")` exists; otherwise the JSON says so.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from mdlm.eval.bench.common import add_output_dir_argument, quick_results_dir, write_results

NAME = "entropy_bound"


# ----------------------------------------------------------------------------------------------------
# (a) DiffusionGemma: mdlm vs transformers' generate
# ----------------------------------------------------------------------------------------------------

def transformers_generate(model, ids, valid, seed: int, max_new_tokens: int, settings):
    """transformers' own generate with `settings`, drawing from torch's global generator seeded `seed`."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=valid, max_new_tokens=max_new_tokens,
                         max_denoising_steps=settings.max_denoising_steps, t_min=settings.t_min, t_max=settings.t_max,
                         sampler_config=EntropyBoundSamplerConfig(entropy_bound=float(settings.entropy_bound)),
                         stability_threshold=settings.stability_threshold,
                         confidence_threshold=settings.confidence_threshold)
    return out.sequences, out.tokens_per_forward


def mdlm_generate(denoiser, ids, valid, seed: int, max_new_tokens: int, settings):
    from mdlm.decode import DecodeConfig
    from mdlm.decode.canvas import Canvas
    from mdlm.decode.uniform_noise import uniform_noise_decode

    slots = torch.full((ids.shape[0], max_new_tokens), denoiser.mask_token_id)
    canvas = Canvas.of(denoiser, torch.cat([ids, slots], 1), torch.cat([valid, torch.ones_like(slots, dtype=torch.bool)], 1))
    return uniform_noise_decode(denoiser, canvas, DecodeConfig(), generator=torch.Generator().manual_seed(seed),
                                settings=settings)


def diffusion_gemma_part(args) -> dict:
    from mdlm.decode.canvas import pad_rows
    from mdlm.decode.diffusion_gemma import DiffusionGemmaDenoiser, tiny_diffusion_gemma

    model = tiny_diffusion_gemma(args.vocab_size, args.canvas_length, hidden_size=args.hidden_size, layers=args.layers,
                                 sharpness=args.sharpness, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    denoiser = DiffusionGemmaDenoiser(model)
    generator = torch.Generator().manual_seed(args.seed)
    lengths = [4 + 3 * i for i in range(args.batch_size)]  # prompts of different lengths, left-padded
    prompts = [torch.randint(3, args.vocab_size, (n,), generator=generator).tolist() for n in lengths]
    ids, valid = pad_rows(prompts, 0, "left")
    tokens = args.batch_size * args.max_new_tokens
    rows = {}
    for bound in args.entropy_bounds:
        settings = replace(denoiser.settings, entropy_bound=bound, eos_token_ids=(), pad_token_id=0)
        seconds = {"mdlm": [], "transformers": []}
        equal, tokens_per_forward, nfe = True, None, None
        for repeat in range(args.repeats + 1):  # repeat 0 warms both up (imports, allocator) and is not timed
            seed = args.seed + repeat
            spent = {}
            for who in (("transformers", "mdlm") if repeat % 2 else ("mdlm", "transformers")):  # alternate the order
                began = time.perf_counter()
                if who == "transformers":
                    reference, reference_tpf = transformers_generate(model, ids, valid, seed, args.max_new_tokens,
                                                                     settings)
                else:
                    result = mdlm_generate(denoiser, ids, valid, seed, args.max_new_tokens, settings)
                spent[who] = time.perf_counter() - began
            spent_reference, spent_mdlm = spent["transformers"], spent["mdlm"]
            equal &= torch.equal(result.tokens, reference)
            if repeat:
                seconds["transformers"].append(spent_reference)
                seconds["mdlm"].append(spent_mdlm)
            tokens_per_forward, nfe = result.stats["tokens_per_forward"], result.nfe
            assert torch.allclose(torch.tensor(tokens_per_forward), reference_tpf.float()), "tokens per forward differ"
        median = {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}
        rows[f"{bound:g}"] = {
            "entropy_bound": bound, "tokens_equal": bool(equal), "nfe": nfe,
            "tokens_per_forward": sum(tokens_per_forward) / len(tokens_per_forward),
            "ms_per_token_mdlm": 1000 * median["mdlm"] / tokens, "ms_per_token_transformers": 1000 * median["transformers"] / tokens,
            "ratio_mdlm_over_transformers": median["mdlm"] / median["transformers"],
            "seconds_mdlm": seconds["mdlm"], "seconds_transformers": seconds["transformers"]}
        print(f"entropy bound {bound:g}: mdlm {rows[f'{bound:g}']['ms_per_token_mdlm']:.2f} ms/token, transformers "
              f"{rows[f'{bound:g}']['ms_per_token_transformers']:.2f} ms/token, equal tokens {equal}", flush=True)
    config = model.config.text_config
    return {"model": {"vocab_size": args.vocab_size, "hidden_size": config.hidden_size, "layers": config.num_hidden_layers,
                      "canvas_length": args.canvas_length, "parameters": sum(p.numel() for p in model.parameters())},
            "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
            "settings": {k: v for k, v in vars(replace(denoiser.settings, eos_token_ids=())).items()
                         if k not in ("eos_token_ids", "entropy_bound")},
            "bounds": rows}


# ----------------------------------------------------------------------------------------------------
# (b) masked models: entropy-bound vs threshold vs fixed steps at matched NFE
# ----------------------------------------------------------------------------------------------------

def entropy_bound_available() -> bool:
    from mdlm.decode.config import REMASKING_POLICIES

    return "entropy-bound" in REMASKING_POLICIES


def unconditional(model, config, num: int, length: int, batch: int, mask_id: int):
    """Samples (num, length), mean NFE per batch and seconds per sample."""
    from mdlm.decode import decode

    tokens, nfe, seconds = [], [], 0.0
    for start in range(0, num, batch):
        canvas = torch.full((min(batch, num - start), length), mask_id, dtype=torch.long)
        began = time.perf_counter()
        result = decode(model, canvas, replace(config, seed=start))
        seconds += time.perf_counter() - began
        tokens.append(result.tokens)
        nfe.append(result.nfe)
    return torch.cat(tokens), sum(nfe) / len(nfe), seconds / num


def matched_threshold(model, nfe_target: float, num, length, batch, mask_id) -> tuple[float, dict]:
    """The Fast-dLLM threshold whose NFE comes nearest `nfe_target` (bisection on log tau: a higher tau
    commits fewer tokens per step, so more steps; a weak model's confidences sit far below 0.1)."""
    from mdlm.decode import DecodeConfig

    low, high, best = math.log(1e-4), math.log(0.999), None
    for _ in range(8):
        tau = math.exp((low + high) / 2)
        out = unconditional(model, DecodeConfig(remasking="threshold", threshold=tau, temperature=1.0), num, length,
                            batch, mask_id)
        if best is None or abs(out[1] - nfe_target) < abs(best[1][1] - nfe_target):
            best = (tau, out)
        low, high = (math.log(tau), high) if out[1] < nfe_target else (low, math.log(tau))
    return best


def masked_part(args) -> dict:
    if not entropy_bound_available():
        return {"skipped": "DecodeConfig(remasking='entropy-bound') does not exist in this checkout (the house "
                           "sampler helper's issue); only the DiffusionGemma part was measured"}
    from mdlm.decode import DecodeConfig
    from mdlm.decode.loading import load_model
    from mdlm.eval.bench.speculative import generative_perplexity, unigram_entropy

    model, tokenizer = load_model(args.mdlm_run)
    judge = load_model(args.judge_run)[0] if args.judge_run else None
    mask_id, length, num, batch = model.config.mask_token_id, args.length, args.num_samples, args.sample_batch
    rows = {}

    def record(name, config, out):
        tokens, nfe, seconds = out
        rows[name] = {"nfe": nfe, "seconds_per_sample": seconds, "unigram_entropy": unigram_entropy(tokens),
                      "gen_ppl": generative_perplexity(judge, tokens, 1) if judge is not None else None,
                      "config": {k: v for k, v in vars(config).items() if k != "step_callback"}}
        print(f"{name}: NFE {nfe:.1f}, {seconds:.3f} s/sample", flush=True)

    from mdlm.eval.bench.decoding import heldout_blocks

    heldout = heldout_blocks(tokenizer, length, num)  # real text: what the samples' statistics should resemble
    rows["held-out text"] = {"nfe": None, "seconds_per_sample": None, "unigram_entropy": unigram_entropy(heldout),
                             "gen_ppl": generative_perplexity(judge, heldout, 1) if judge is not None else None,
                             "config": None}
    for gamma in args.masked_bounds:
        config = DecodeConfig(remasking="entropy-bound", entropy_bound=gamma, temperature=1.0)
        out = unconditional(model, config, num, length, batch, mask_id)
        record(f"entropy-bound {gamma:g}", config, out)
        tau, matched = matched_threshold(model, out[1], num, length, batch, mask_id)
        record(f"threshold {tau:.3f} (matched to {gamma:g})",
               DecodeConfig(remasking="threshold", threshold=tau, temperature=1.0), matched)
        steps = max(1, round(out[1]))
        fixed = DecodeConfig(steps=steps, temperature=1.0)
        record(f"fixed {steps} steps (matched to {gamma:g})", fixed, unconditional(model, fixed, num, length, batch, mask_id))
    return {"run": str(args.mdlm_run), "judge": args.judge_run, "length": length, "num_samples": num, "rows": rows}


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------

def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masked = results["masked"].get("rows")
    fig, axes = plt.subplots(1, 2 if masked else 1, figsize=(11 if masked else 6, 4), squeeze=False)
    dg = results["diffusion_gemma"]["bounds"]
    names = list(dg)
    x = range(len(names))
    ax = axes[0][0]
    ax.bar([i - 0.2 for i in x], [dg[n]["ms_per_token_transformers"] for n in names], 0.4, label="transformers generate")
    ax.bar([i + 0.2 for i in x], [dg[n]["ms_per_token_mdlm"] for n in names], 0.4, label="mdlm uniform-noise")
    ax.set_xticks(list(x), [f"bound {n}" for n in names])
    ax.set_ylabel("ms per generated token")
    ax.set_title("tiny DiffusionGemma (same seeds, same tokens)")
    ax.legend()
    if masked:
        ax = axes[0][1]
        for kind, marker in (("entropy-bound", "o"), ("threshold", "s"), ("fixed", "^")):
            points = [row for name, row in masked.items() if name.startswith(kind)]
            ys = [r["gen_ppl"] if r["gen_ppl"] is not None else r["unigram_entropy"] for r in points]
            ax.plot([r["nfe"] for r in points], ys, marker=marker, label=kind)
            for r, y in zip(points, ys):  # gen. PPL alone rewards repetition: the unigram entropy beside it
                ax.annotate(f"H={r['unigram_entropy']:.2f}", (r["nfe"], y), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        reference = masked.get("held-out text")
        if reference and reference["gen_ppl"] is not None:
            ax.axhline(reference["gen_ppl"], color="gray", linestyle="--",
                       label=f"held-out text (H={reference['unigram_entropy']:.2f})")
        ax.set_xlabel("NFE")
        ax.set_ylabel("gen. PPL" if results["masked"].get("judge") else "unigram entropy")
        ax.set_title("masked MDLM at matched NFE (H: unigram entropy, nats)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(results: dict) -> str:
    dg = results["diffusion_gemma"]
    m = dg["model"]
    lines = [f"Tiny random DiffusionGemma ({m['parameters'] / 1e6:.2f}M parameters, vocabulary {m['vocab_size']}, "
             f"canvas {m['canvas_length']}), batch {dg['batch_size']} prompts of different lengths, "
             f"{dg['max_new_tokens']} new tokens, {dg['settings']['max_denoising_steps']} steps at most per canvas; "
             "one CPU thread, median of the repeats.", "",
             "| entropy bound | tokens equal | NFE | tokens / forward | ms / token mdlm | ms / token transformers | ratio |",
             "| ---: | :---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in dg["bounds"].items():
        lines.append(f"| {name} | {'yes' if row['tokens_equal'] else 'NO'} | {row['nfe']} | {row['tokens_per_forward']:.2f} | "
                     f"{row['ms_per_token_mdlm']:.2f} | {row['ms_per_token_transformers']:.2f} | "
                     f"{row['ratio_mdlm_over_transformers']:.2f} |")
    masked = results["masked"]
    if "skipped" in masked:
        lines += ["", f"Masked models: skipped: {masked['skipped']}."]
    else:
        lines += ["", f"Masked MDLM `{masked['run']}`, {masked['num_samples']} unconditional samples of "
                      f"{masked['length']} tokens:", "",
                  "| decoder | NFE | s / sample | gen. PPL | unigram entropy |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, row in masked["rows"].items():
            ppl = "–" if row["gen_ppl"] is None else f"{row['gen_ppl']:.1f}"
            nfe = "–" if row["nfe"] is None else f"{row['nfe']:.1f}"
            seconds = "–" if row["seconds_per_sample"] is None else f"{row['seconds_per_sample']:.3f}"
            lines.append(f"| {name} | {nfe} | {seconds} | {ppl} | {row['unigram_entropy']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, written to results/quick/")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--canvas-length", type=int, default=32)
    parser.add_argument("--sharpness", type=float, default=20.0, help="scale of the random weights (entropy spread)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--entropy-bounds", type=float, nargs="+", default=[0.1, 1.0, 4.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mdlm-run", default="runs/tiny")
    parser.add_argument("--judge-run", default=None, help="an AR run scoring the masked samples (gen. PPL; default "
                        "runs/tiny-ar when it exists: accelerate launch train/pretrain.py --config tiny --objective ar "
                        "--attention causal --output-dir runs/tiny-ar)")
    parser.add_argument("--masked-bounds", type=float, nargs="+", default=[2.0, 5.0, 10.0, 20.0],
                        help="gamma in nats (a tiny run's positions carry 4-5 nats each: below that, one token per step)")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--sample-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on shared cores)")
    add_output_dir_argument(parser)
    args = parser.parse_args(argv)
    if args.judge_run is None and Path("runs/tiny-ar/config.json").is_file():
        args.judge_run = "runs/tiny-ar"
    if args.quick:
        args.vocab_size, args.canvas_length, args.max_new_tokens, args.repeats = 512, 8, 16, 1
        args.entropy_bounds, args.masked_bounds, args.num_samples, args.length = [0.1, 1.0], [5.0], 4, 32
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    results = {"diffusion_gemma": diffusion_gemma_part(args), "masked": masked_part(args)}
    results["minutes"] = round((time.perf_counter() - began) / 60, 1)
    write_results(quick_results_dir(args.output_dir, args.quick), NAME, results, plot, markdown_table)
    return 0


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    raise SystemExit(run_main("bench entropy_bound", main))
