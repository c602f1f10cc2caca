"""Memory and time of one decoding step with the LM head over all positions vs the active ones only.

    python -m mdlm.eval.bench.lm_head                 # -> results/lm_head.json, results/lm_head.png
    python -m mdlm.eval.bench.lm_head --quick         # smaller shapes, written under results/quick/

The `small` backbone (4 x 256) at a context of L = 1024, batch B, untrained weights (time and memory do
not depend on them), vocabularies of our BPE (4,096) and of LLaDA (126,464). A semi-autoregressive step
needs the logits of its current block only (K = 32 positions): `logits_at` runs the head there, so the
(B, L, V) float32 tensor is never made. Each case runs in a fresh process; peak memory is the resident
high-water mark (VmHWM after a reset through /proc/self/clear_refs) minus the resident size before the
step, and the time the best of the repeats, the two variants interleaved.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mdlm.eval.bench.common import REPO_ROOT, measure_in_fresh_process, quick_results_dir, write_results

NAME = "lm_head"
BLOCK = 32


def measure_in_this_process(vocab: int, length: int, batch: int, repeats: int) -> dict:
    from mdlm import MDLMConfig, MDLMForMaskedLM
    from mdlm.eval.bench.sampling import peak_resident_bytes, resident_bytes

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = MDLMConfig.from_preset("small", vocab_size=vocab, mask_token_id=vocab - 1,
                                    max_position_embeddings=length)
    model = MDLMForMaskedLM(config).eval()
    ids = torch.full((batch, length), vocab - 1)
    ids[:, : length // 2] = torch.randint(0, vocab - 1, (batch, length // 2))  # prompt, then the masks
    active = torch.arange(length // 2, length // 2 + BLOCK).expand(batch, BLOCK)  # the current block
    variants = {"full head": {}, "active positions": {"logits_at": active}}
    out = {name: dict(seconds=float("inf"), peak_extra_bytes=0) for name in variants}
    with torch.no_grad():
        model(ids[:, :8])  # warm up
        for _ in range(repeats):
            for name, kwargs in variants.items():
                Path("/proc/self/clear_refs").write_text("5")
                before = resident_bytes()
                start = time.perf_counter()
                logits = model(ids, **kwargs).logits
                seconds = time.perf_counter() - start
                out[name]["seconds"] = min(out[name]["seconds"], seconds)
                out[name]["peak_extra_bytes"] = max(out[name]["peak_extra_bytes"], peak_resident_bytes() - before)
                out[name]["logits_shape"] = list(logits.shape)
                del logits
    return out


def measure(vocab: int, length: int, batch: int, repeats: int) -> dict:
    return measure_in_fresh_process("mdlm.eval.bench.lm_head", "measure_in_this_process", vocab, length, batch, repeats)


def run(vocabs, length: int, batch: int, repeats: int) -> dict:
    cases = []
    for vocab in vocabs:
        measured = measure(vocab, length, batch, repeats)
        full, active = measured["full head"], measured["active positions"]
        cases.append(dict(vocab=vocab, length=length, batch=batch, block=BLOCK, variants=measured,
                          full_logits_mb=batch * length * vocab * 4 / 2**20,
                          memory_ratio=active["peak_extra_bytes"] / max(full["peak_extra_bytes"], 1),
                          speedup=full["seconds"] / active["seconds"]))
        print(f"V={vocab}: full {full['seconds']:.3f}s {full['peak_extra_bytes'] / 2**20:.0f} MiB, active "
              f"{active['seconds']:.3f}s {active['peak_extra_bytes'] / 2**20:.0f} MiB", flush=True)
    return dict(model="small (4 x 256), untrained", threads=1, repeats=repeats, cases=cases)


def markdown_table(results: dict) -> str:
    lines = [f"One decoding step of the {results['model']} model, {results['threads']} thread, best of "
             f"{results['repeats']}; the head at the {results['cases'][0]['block']} positions of the current block "
             "(`logits_at`) vs all positions.", "",
             "| vocab | B x L | (B, L, V) float32 | full head: time, peak extra | active positions: time, peak extra | "
             "time ratio | memory ratio |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in results["cases"]:
        full, active = c["variants"]["full head"], c["variants"]["active positions"]
        lines.append(f"| {c['vocab']:,} | {c['batch']} x {c['length']} | {c['full_logits_mb']:.0f} MiB | "
                     f"{full['seconds']:.3f} s, {full['peak_extra_bytes'] / 2**20:.0f} MiB | "
                     f"{active['seconds']:.3f} s, {active['peak_extra_bytes'] / 2**20:.0f} MiB | "
                     f"{c['speedup']:.2f}x faster | {c['memory_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    labels = [f"V={c['vocab']:,}" for c in results["cases"]]
    for ax, key, scale, title in ((axes[0], "seconds", 1.0, "time per step (s)"),
                                  (axes[1], "peak_extra_bytes", 2**-20, "peak extra memory (MiB)")):
        for offset, variant in ((-0.2, "full head"), (0.2, "active positions")):
            values = [c["variants"][variant][key] * scale for c in results["cases"]]
            ax.bar([i + offset for i in range(len(values))], values, width=0.4, label=variant)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(title)
        ax.set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocabs", type=int, nargs="+", default=[4096, 126_464])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="V 4096 and 16384, L 256: a smoke test")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.vocabs, args.length, args.repeats = [4096, 16384], 256, 1
    results = run(args.vocabs, args.length, args.batch, args.repeats)
    return write_results(quick_results_dir(args.output_dir, args.quick), NAME, results, plot, markdown_table)


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.lm_head", main)
