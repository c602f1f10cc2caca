"""Benchmark: seconds per generated token of the native public families on every cache path.

Per family (LLaDA, Dream, SDAR, MDLM-OWT, BD3-LM as `mdlm.families` modules) a tiny random model at the
published shapes' ratios (width / 16 and depth / 8 of LLaDA-8B, Dream-7B, SDAR-1.7B, width and depth / 4 of
the 110M OpenWebText DiTs; the same vocabulary-to-width, MLP-to-width and query-to-key-head ratios) decodes 256 tokens after a 32-token prompt in blocks of 32,
one token per step, at temperature 0, on one CPU thread:
- no cache: every step runs the whole canvas;
- prefix: Fast-dLLM's approximate prefix cache (bidirectional families);
- dual: Fast-dLLM's dual cache, prefix and suffix kept, refreshed per block (bidirectional families);
- exact block KV: the block-causal families' exact cache (SDAR, BD3-LM);
- threshold: Fast-dLLM's parallel decoding (commit every position with confidence >= 0.9) without a
  cache, and with the family's fastest cache.
Reported: CPU seconds per generated token (process time of the one thread, so that other work on a shared
machine does not count), the speed-up over no cache, the network calls, and for the
approximate caches the fraction of tokens equal to the uncached decode. Target: dual >= 3x no cache on
LLaDA and Dream.

    python -m mdlm.eval.bench.families [--quick] [--output-dir results]
Writes results/families.json and results/families.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from mdlm.eval.bench.common import add_output_dir_argument, quick_results_dir, write_results

NAME = "families"
PROMPT_LENGTH, GEN_LENGTH, BLOCK = 32, 256, 32

# published shapes / (16 in width, 8 in depth); heads keep the query : key-value ratio
SHAPES = {
    "llada": dict(architectures=["LLaDAModelLM"], d_model=256, n_heads=4, n_kv_heads=4, n_layers=4,
                  mlp_hidden_size=768, vocab_size=7904, embedding_size=7904, max_sequence_length=4096,
                  rope_theta=500000.0, rms_norm_eps=1e-5, weight_tying=False),
    "dream": dict(architectures=["DreamModel"], hidden_size=224, num_attention_heads=7, num_key_value_heads=1,
                  num_hidden_layers=4, intermediate_size=1184, vocab_size=9504, max_position_embeddings=4096,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "sdar": dict(architectures=["SDARForCausalLM"], hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=32, num_hidden_layers=4, intermediate_size=384, vocab_size=9496, max_position_embeddings=4096,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, block_size=4),
    # the 110M OpenWebText DiTs / 4 in width and depth
    "mdlm-owt": dict(architectures=["MDLM"], hidden_dim=192, n_heads=3, cond_dim=32, n_blocks=3, vocab_size=12564,
                     model_length=1024),
    "bd3lm": dict(architectures=["BD3LM"], hidden_dim=192, n_heads=3, cond_dim=32, n_blocks=3, vocab_size=12564,
                  model_length=1024, block_size=4),
}
BLOCK_CAUSAL = ("sdar", "bd3lm")
BIDIRECTIONAL_PATHS = ("no cache", "prefix", "dual", "threshold", "threshold + dual")
BLOCK_CAUSAL_PATHS = ("no cache", "exact block KV", "threshold", "threshold + exact block KV")


def widened(shape: dict, factor: int) -> dict:
    """A shape `factor` times wider (hidden, MLP, heads and vocabulary scaled alike: the same ratios)."""
    keys = ("d_model", "mlp_hidden_size", "n_heads", "n_kv_heads", "vocab_size", "embedding_size", "hidden_size",
            "intermediate_size", "num_attention_heads", "num_key_value_heads", "hidden_dim", "cond_dim")
    return {k: v * factor if k in keys else v for k, v in shape.items()}


def tiny_denoiser(family: str, seed: int = 0, sharpness: float = 10.0, widen: int = 1):
    """The family's native module with random weights (scaled up so that the conditionals are not flat),
    the last vocabulary id its mask, wrapped by its profile."""
    from mdlm.decode.families import ProfiledDenoiser, get_family
    from mdlm.families import build_native

    shape = widened(SHAPES[family], widen)
    fields = dict(shape, mask_token_id=shape["vocab_size"] - 1)
    model = build_native(family, fields, seed=seed).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(sharpness)
    return ProfiledDenoiser(model, get_family(family))


def path_configs(family: str) -> dict:
    from mdlm.decode import DecodeConfig

    one_per_step = DecodeConfig(sampler="confidence", temperature=0.0, block_length=BLOCK, use_cache=False)
    threshold = dataclasses.replace(one_per_step, remasking="threshold", threshold=0.9)
    if family in BLOCK_CAUSAL:
        return {"no cache": one_per_step, "exact block KV": dataclasses.replace(one_per_step, use_cache=True),
                "threshold": threshold, "threshold + exact block KV": dataclasses.replace(threshold, use_cache=True)}
    return {"no cache": one_per_step, "prefix": dataclasses.replace(one_per_step, approximate_prefix_cache=True),
            "dual": dataclasses.replace(one_per_step, dual_cache=True), "threshold": threshold,
            "threshold + dual": dataclasses.replace(threshold, dual_cache=True)}


def measure_family(family: str, gen_length: int, repeats: int, widen: int = 1) -> dict:
    from mdlm.decode.registry import decode

    denoiser = tiny_denoiser(family, widen=widen)
    prompt = torch.randint(0, denoiser.mask_token_id, (1, PROMPT_LENGTH), generator=torch.Generator().manual_seed(1))
    canvas = torch.cat([prompt, torch.full((1, gen_length), denoiser.mask_token_id)], 1)
    decode(denoiser, canvas[:, :PROMPT_LENGTH + BLOCK], path_configs(family)["no cache"])  # warm-up
    rows, reference = {}, None
    for path, config in path_configs(family).items():
        times = []
        for _ in range(repeats):
            started = time.process_time()  # CPU time of this one-thread process: robust to a shared machine
            result = decode(denoiser, canvas, config)
            times.append(time.process_time() - started)
        tokens = result.tokens[0, PROMPT_LENGTH:]
        reference = tokens if path == "no cache" else reference
        rows[path] = {"seconds_per_token": min(times) / gen_length, "nfe": result.nfe,
                      "same_tokens_as_no_cache": float((tokens == reference).float().mean())}
    base = rows["no cache"]["seconds_per_token"]
    for row in rows.values():
        row["speedup"] = base / row["seconds_per_token"]
    return {"shape": widened(SHAPES[family], widen), "paths": rows}


def run(gen_length: int = GEN_LENGTH, repeats: int = 1, families=tuple(SHAPES), widen: int = 1) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread measures the work, not the contention
    try:
        families = {family: measure_family(family, gen_length, repeats, widen) for family in families}
    finally:
        torch.set_num_threads(threads)
    return {"config": {"prompt_length": PROMPT_LENGTH, "gen_length": gen_length, "block_length": BLOCK,
                       "temperature": 0.0, "threshold": 0.9, "threads": 1, "repeats": repeats, "widen": widen,
                       "device": "cpu", "torch": torch.__version__},
            "families": families}


def markdown_table(results: dict) -> str:
    lines = ["| family | path | CPU time / token | speed-up | NFE | same tokens as no cache |", "| --- " * 6 + "|"]
    for family, data in results["families"].items():
        for path, row in data["paths"].items():
            lines.append(f"| {family} | {path} | {row['seconds_per_token'] * 1000:.2f} ms | {row['speedup']:.2f}x | "
                         f"{row['nfe']} | {row['same_tokens_as_no_cache']:.0%} |")
    return "\n".join(lines)


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(results["families"])
    paths = list(dict.fromkeys(p for f in families for p in results["families"][f]["paths"]))
    figure, axis = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(paths)
    for k, name in enumerate(paths):
        values = [results["families"][f]["paths"].get(name, {}).get("seconds_per_token", 0) * 1000 for f in families]
        bars = axis.bar([i + k * width for i in range(len(families))], values, width, label=name)
        for bar, family in zip(bars, families):
            row = results["families"][family]["paths"].get(name)
            if row:
                axis.annotate(f"{row['speedup']:.1f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                              ha="center", va="bottom", fontsize=7)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(families))], families)
    axis.set_ylabel("CPU ms per generated token (1 thread)")
    axis.set_title(f"Native families: {results['config']['gen_length']} tokens, block {BLOCK}, temperature 0")
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_output_dir_argument(parser)
    parser.add_argument("--quick", action="store_true", help="64 generated tokens (a smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="timed decodes per path (the fastest counts)")
    parser.add_argument("--families", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--widen", type=int, default=1, help="width (hidden, MLP, heads, vocabulary) times this")
    args = parser.parse_args(argv)
    results = run(gen_length=64 if args.quick else GEN_LENGTH, repeats=args.repeats, families=args.families,
                  widen=args.widen)
    return write_results(quick_results_dir(args.output_dir, args.quick), NAME, results, plot, markdown_table)


if __name__ == "__main__":
    main()
