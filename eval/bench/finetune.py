"""Finetuning cost per family: SFT and RL step time and peak memory, full finetuning vs LoRA.

    python -m mdlm.eval.bench.finetune                  # results/finetune.json + .png
    python -m mdlm.eval.bench.finetune --quick          # smoke sizes, under results/quick/

Each family (LLaDA, Dream, SDAR: the native modules of `mdlm.families`) is a tiny random model at its
published checkpoint's shape ratios: width, MLP width and vocabulary divided by 32, the published depth and
head layout kept where the width allows (LLaDA-8B, Dream-7B, SDAR-1.7B). Both steps reach the network only
through its trainable denoiser (`mdlm.trainable`), as train/sft.py and the RL trainers do:

- SFT step: the masked-diffusion loss (t-DCE) on a batch of prompt + response rows, backward, AdamW step;
- RL step (diffu-GRPO's update): a rollout of the policy (confidence decoding), old and reference
  log-probabilities of the completion (d1's one-pass estimator), the clipped surrogate with KL, backward,
  AdamW step. The reference is a frozen copy for full finetuning and the adapter-disabled base for LoRA.

Each (family, step, variant, gradient checkpointing or not) is measured in a fresh single-threaded
process: the peak of the bytes held by live tensors (`LiveTensorBytes`: weights and buffers, plus every
storage an operator makes during the first step: gradients, optimizer states, activations, temporaries),
then the median time of the next steps. Batches are equal between variants. (torch's MemTracker cannot
track a model with frozen parameters; a process's resident size is dominated by a fixed floor here.)
Target (issue 25): LoRA peak memory at most 0.5x full finetuning at equal batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

# Published shapes / 32 (width, MLP width, vocabulary); depth kept; heads of the published head size where
# the width allows it. LLaDA-8B: 4096 / 12288 / 32 layers / 32 heads / 126464; Dream-7B (Qwen2.5-7B):
# 3584 / 18944 / 28 / 28 heads, 4 KV / 152064; SDAR-1.7B (Qwen3-1.7B): 2048 / 6144 / 28 / 16 heads, 8 KV /
# 151936, tied embeddings, block 4.
FAMILIES = {
    "llada": dict(d_model=128, n_heads=4, n_kv_heads=4, n_layers=32, mlp_hidden_size=384, embedding_size=3952,
                  vocab_size=3952, max_sequence_length=4096, mask_token_id=3951, eos_token_id=3950,
                  pad_token_id=3950, rope_theta=500000.0, weight_tying=False, block_type="llama",
                  layer_norm_type="rms", activation_type="silu", architectures=["LLaDAModelLM"], model_type="llada"),
    "dream": dict(hidden_size=112, intermediate_size=592, num_hidden_layers=28, num_attention_heads=4,
                  num_key_value_heads=1, vocab_size=4752, max_position_embeddings=4096, mask_token_id=4751,
                  eos_token_id=4750, pad_token_id=4750, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, architectures=["DreamModel"], model_type="Dream"),
    "sdar": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=28, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, vocab_size=4748, max_position_embeddings=4096,
                 mask_token_id=4747, eos_token_id=4746, pad_token_id=4746, rope_theta=1000000.0, rms_norm_eps=1e-6,
                 tie_word_embeddings=True, block_size=4, architectures=["SDARForCausalLM"], model_type="sdar"),
}
# Tokens per step are kept in proportion to the width too (the models are 32x narrower than published, so
# a published-scale batch of a few thousand tokens per device becomes ~100): otherwise activations, which
# grow with tokens x width, would dwarf weights, which grow with width^2, as they never do at full scale.
SIZES = {"full": dict(batch=2, prompt=32, response=32, completion=32, rl_prompt=32, rollout_steps=8, steps=2),
         "quick": dict(batch=2, prompt=16, response=16, completion=8, rl_prompt=8, rollout_steps=2, steps=1)}
# full finetuning (float32 weights, AdamW on all), LoRA on float32 base weights (equal to full in all but
# the adapters), and LoRA on bfloat16 base weights (the recipe on a GPU: sft --lora-r N --dtype bfloat16)
VARIANTS = {"full": dict(lora=False, dtype="float32"), "lora": dict(lora=True, dtype="float32"),
            "lora-bf16": dict(lora=True, dtype="bfloat16")}
LORA_RANK = 16
RESULT_NAME = "finetune"


def trainable(family: str, lora: bool, checkpointing: bool, seed: int = 0, dtype: str = "float32"):
    from mdlm.decode.families import ProfiledDenoiser, get_family
    from mdlm.families import build_native
    from mdlm.trainable import TrainableDenoiser

    fields = FAMILIES[family]
    network = build_native(family, fields, seed=seed).to(getattr(torch, dtype))
    model = TrainableDenoiser(ProfiledDenoiser(network, get_family(family), mask_token_id=fields["mask_token_id"]))
    if lora:
        model.add_lora(LORA_RANK)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model.train()


def optimizer_of(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def sft_step(model, optimizer, batch, generator):
    from mdlm.losses import compute_loss

    out = compute_loss(model, batch["input_ids"], "mdlm", "t-dce", fixed=batch["fixed"], generator=generator)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def rl_step(model, reference, optimizer, prompts, size, generator, beta=0.04, epsilon=0.2):
    """One diffu-GRPO update of the policy (see the module docstring)."""
    from mdlm.decode.config import DecodeConfig
    from mdlm.train.rl.base import completion_logps, rollout

    policy = model.model  # the family network (or its peft model): what the RL trainers hold
    B, T = prompts.shape[0], size["completion"]
    config = DecodeConfig(sampler="confidence", steps=size["rollout_steps"], temperature=1.0)
    valid_prompt = torch.ones_like(prompts, dtype=torch.bool)
    completion = rollout(policy, prompts, valid_prompt, T, config, None, generator).completion_ids
    ids = torch.cat([prompts, completion], 1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    masked = torch.zeros_like(valid)
    masked[:, -T:] = True
    masked[:, :-T] = torch.rand(prompts.shape, generator=generator) < 0.15
    mask_id = model.config.mask_token_id
    with torch.no_grad():
        old, _ = completion_logps(policy, ids, valid, masked, T, mask_id)
        ref, _ = completion_logps(reference, ids, valid, masked, T, mask_id)
    advantages = torch.randn(B, 1, generator=generator)
    logps, _ = completion_logps(policy, ids, valid, masked, T, mask_id)
    ratio = torch.exp(logps - old)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - epsilon, 1 + epsilon) * advantages)
    kl = torch.exp(ref - logps) - (ref - logps) - 1
    (-(surrogate - beta * kl).mean()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def make_inputs(family: str, step: str, size: dict, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    vocab = FAMILIES[family]["vocab_size"] - 3  # ordinary tokens only
    if step == "sft":
        length = size["prompt"] + size["response"]
        ids = torch.randint(0, vocab, (size["batch"], length), generator=generator)
        fixed = torch.zeros_like(ids, dtype=torch.bool)
        fixed[:, : size["prompt"]] = True
        return {"input_ids": ids, "fixed": fixed}
    return torch.randint(0, vocab, (size["batch"], size["rl_prompt"]), generator=generator)


class LiveTensorBytes:
    """The bytes held by live tensor storages, and their peak, over a block: the storages that exist at the
    start (`track`: weights, buffers) plus every one an operator creates inside (gradients, optimizer states,
    activations, temporaries), each counted once until it is freed. What a GPU allocator's allocated-bytes
    counter shows, without its caching or fragmentation, on any device."""

    def __init__(self):
        from torch.utils.weak import WeakIdKeyDictionary

        self.sizes = WeakIdKeyDictionary()
        self.current = self.peak = 0

    def track(self, tensor) -> None:
        import weakref

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        if storage in self.sizes:
            return
        size = storage.nbytes()
        self.sizes[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._freed, size)

    def _freed(self, size: int) -> None:
        self.current -= size

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for tensor in tree_flatten(out)[0]:
                    tracker.track(tensor)
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def measure(family: str, step: str, variant: str, checkpointing: bool, size_name: str) -> dict:
    """One fresh step's peak memory, then the median step time (after a warm-up), in this process (a fresh
    one: `run` starts one per measurement)."""
    from mdlm.train.rl.base import make_reference

    size = SIZES[size_name]
    inputs = make_inputs(family, step, size)
    lora, dtype = VARIANTS[variant]["lora"], VARIANTS[variant]["dtype"]

    def setup():
        model = trainable(family, lora, checkpointing, dtype=dtype)
        reference = make_reference(model.model) if step == "rl" else None
        return model, reference, optimizer_of(model)

    def run_step(model, reference, optimizer, seed):
        generator = torch.Generator().manual_seed(seed)
        if step == "sft":
            sft_step(model, optimizer, inputs, generator)
        else:
            rl_step(model, reference, optimizer, inputs, size, generator)

    model, reference, optimizer = setup()
    memory = LiveTensorBytes()
    for tensor in [*model.parameters(), *model.buffers()] + ([*reference.parameters(), *reference.buffers()]
                                                            if isinstance(reference, torch.nn.Module) else []):
        memory.track(tensor)
    with memory:
        run_step(model, reference, optimizer, 0)  # the first step (optimizer states made): the peak; a warm-up
    peak = memory.peak / 2**20
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    times = []
    for seed in range(1, size["steps"] + 1):
        start = time.perf_counter()
        run_step(model, reference, optimizer, seed)
        times.append(time.perf_counter() - start)
    return {"family": family, "step": step, "variant": variant, "gradient_checkpointing": checkpointing,
            "params": params, "trained_params": trained, "step_s": statistics.median(times), "peak_mib": peak}


def run(size_name: str, families=tuple(FAMILIES)) -> dict:
    from mdlm.eval.bench.common import measure_in_fresh_process

    rows = []
    for family in families:
        for step in ("sft", "rl"):
            for checkpointing in ((False, True) if step == "sft" else (False,)):  # RL: the rollout dominates
                for variant in VARIANTS:
                    row = measure_in_fresh_process("mdlm.eval.bench.finetune", "measure", family, step, variant,
                                                   checkpointing, size_name)
                    rows.append(row)
                    print(f"{family} {step} {variant}{' +ckpt' if checkpointing else ''}: "
                          f"{row['step_s']:.2f} s/step, peak {row['peak_mib']:.0f} MiB", flush=True)
    return summarise(rows, size_name)


def summarise(rows: list[dict], size_name: str) -> dict:
    for row in rows:
        row["peak_vs_full"] = row["peak_mib"] / full_row(rows, row)["peak_mib"]
        row["time_vs_full"] = row["step_s"] / full_row(rows, row)["step_s"]
    return {"size": size_name, "sizes": SIZES[size_name], "lora_rank": LORA_RANK, "variants": VARIANTS,
            "device": "cpu (1 thread per measurement; 2 cores shared with other jobs)", "shapes": FAMILIES,
            "rows": rows, "target": "LoRA peak memory <= 0.5x full finetuning at equal batch",
            "target_met": {f"{r['family']} {r['step']} {r['variant']}{' +ckpt' if r['gradient_checkpointing'] else ''}":
                           r["peak_vs_full"] <= 0.5 for r in rows if r["variant"] != "full"}}


def full_row(rows: list[dict], row: dict, variant: str = "full") -> dict:
    """The row of `variant` measured like `row` (same family, step and checkpointing)."""
    return next(r for r in rows if r["family"] == row["family"] and r["step"] == row["step"]
                and r["gradient_checkpointing"] == row["gradient_checkpointing"] and r["variant"] == variant)


def markdown_table(results: dict) -> str:
    variants = list(results["variants"])
    lines = ["| family | step | grad. ckpt | " + " | ".join(f"{v}: s/step, peak MiB" for v in variants) + " | " +
             " | ".join(f"{v} / full peak" for v in variants[1:]) + " |", "| --- " * (3 + 2 * len(variants) - 1) + "|"]
    rows = results["rows"]
    for full in (r for r in rows if r["variant"] == "full"):
        cells = [full_row(rows, full, v) for v in variants]
        lines.append(f"| {full['family']} | {full['step'].upper()} | {'yes' if full['gradient_checkpointing'] else 'no'} | "
                     + " | ".join(f"{c['step_s']:.2f} s, {c['peak_mib']:.0f}" for c in cells) + " | "
                     + " | ".join(f"{c['peak_vs_full']:.2f}" for c in cells[1:]) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, variants = results["rows"], list(results["variants"])
    fulls = [r for r in rows if r["variant"] == "full"]
    labels = [f"{r['family']}\n{r['step']}{'+ckpt' if r['gradient_checkpointing'] else ''}" for r in fulls]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.8 / len(variants)
    for ax, key, unit in zip(axes, ("peak_mib", "step_s"), ("peak memory (MiB)", "seconds per step")):
        for k, variant in enumerate(variants):
            ax.bar([i + (k - (len(variants) - 1) / 2) * width for i in range(len(fulls))],
                   [full_row(rows, r, variant)[key] for r in fulls], width,
                   label=variant if variant == "full" else f"{variant} (r={results['lora_rank']})")
        ax.set_xticks(list(range(len(fulls))), labels, fontsize=7)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    axes[0].set_title("peak memory of live tensors during the first step", fontsize=9)
    axes[1].set_title("median step time (1 CPU thread)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from mdlm.eval.bench.common import add_output_dir_argument, quick_results_dir, write_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_dir_argument(parser)
    parser.add_argument("--quick", action="store_true", help="smoke sizes (results/quick/)")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--assemble", nargs="+", type=Path, metavar="JSON",
                        help="put together the results of families measured in separate processes")
    args = parser.parse_args(argv)
    if args.assemble:
        import json

        parts = [json.loads(path.read_text()) for path in args.assemble]
        results = summarise([row for part in parts for row in part["rows"]], parts[0]["size"])
    else:
        results = run("quick" if args.quick else "full", tuple(args.families))
    write_results(quick_results_dir(args.output_dir, args.quick), RESULT_NAME, results, plot, markdown_table)


if __name__ == "__main__":
    main()
