"""Benchmark: schema scaffolding (S3) against plain generation on the signatures task.

    python -m mdlm.eval.bench.schema                          # finetunes runs/bench/mdlm-small first
    python -m mdlm.eval.bench.schema --num-examples 32 --tokens-per-step 1

1. The `small` MDLM benchmark run (`ensure_run("mdlm-small")`, trained on demand) is finetuned with
   `train/sft.py` on the signatures task's train split (function source -> JSON signature) into
   `runs/bench/sft-signatures` (reused when finished, resumed when interrupted).
2. On held-out functions (the corpus's `test` split, never seen in training) the same finetuned model
   answers with the same decoder (confidence sampler, low-confidence remasking, temperature 0) and the
   same step budget (`--tokens-per-step` tokens revealed per network call):
   - plain: prompt + a masked canvas as long as the S3 skeleton, cut at EOS, then `json.loads`;
   - s3: `generate_json` (fixed keys and punctuation, adaptive slots, constrained number/choice slots);
   - s3-unconstrained: the scaffold alone, without token constraints (ablation).
3. Per method: structural adherence (parses and validates against the schema), field-level exact match
   (an output that does not validate scores 0 on every field), hallucination (string values -- the name
   and argument names -- that do not occur in the prompt, over all string values produced), network
   calls (NFE) and wall time per example.
Writes results/schema.json and results/schema.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jsonschema
import torch
from tqdm.auto import tqdm

from mdlm.decode.loading import load_model
from mdlm.decode.config import DecodeConfig
from mdlm.train.tasks.signatures import FIELDS, PROMPT_CUE, SIGNATURE_SCHEMA, build_examples, field_matches
from mdlm.eval.bench.common import add_output_dir_argument, write_results

ROOT = Path(__file__).resolve().parents[2]
NAME = "schema"
METHODS = ("plain", "s3", "s3-unconstrained")
SFT_RUN = "sft-signatures"


def ensure_sft_run(base: Path, output_dir: Path, steps: int, batch_size: int, lr: float, seq_len: int,
                   reuse_unfinished: bool = False) -> Path:
    """The finetuned run: reused when finished (or, with `reuse_unfinished`, when it has saved a model at
    all), resumed when interrupted, else trained now."""
    from mdlm.eval.bench.common import is_finished
    from mdlm.train.sft import finetune

    if is_finished(output_dir) or (reuse_unfinished and (output_dir / "model.safetensors").is_file()):
        return output_dir
    options = dict(init_from=str(base), task="signatures", output_dir=str(output_dir), max_steps=steps,
                   batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 10), seq_len=seq_len, ema=0.99,
                   eval_every=max(25, steps // 4), save_every=max(25, steps // 8), eval_batches=4)
    if (output_dir / "checkpoints").is_dir():
        options["resume"] = "latest"
    elif output_dir.exists():
        options["overwrite"] = True
    return finetune(options)


def string_values(value) -> list[str]:
    if not isinstance(value, dict):
        return []
    strings = [value["name"]] if isinstance(value.get("name"), str) else []
    return strings + [a for a in value.get("args", []) if isinstance(a, str)] if isinstance(value.get("args"), list) \
        else strings


def _validates(value) -> bool:
    return jsonschema.Draft202012Validator(SIGNATURE_SCHEMA).is_valid(value)


def run_plain(model, tokenizer, prompt: str, length: int, config: DecodeConfig, tokens_per_step: int):
    from dataclasses import replace

    from mdlm.decode.generate import generate_with_result

    config = replace(config, steps=max(1, -(-length // tokens_per_step)))
    texts, result, _ = generate_with_result(model, tokenizer, [prompt], length, config)
    try:
        value = json.loads(texts[0])
    except json.JSONDecodeError:
        value = None
    return value, result.nfe


def run_s3(model, tokenizer, prompt: str, scaffold, config: DecodeConfig, tokens_per_step: int, constrain: bool):
    from mdlm.decode.schema import SchemaFitError, generate_json

    try:
        out = generate_json(model, tokenizer, prompt, SIGNATURE_SCHEMA, config, scaffold=scaffold,
                            tokens_per_step=tokens_per_step, constrain=constrain)
        return out.value, out.nfe, out.rounds
    except SchemaFitError as error:
        return None, error.result.nfe, error.result.rounds


def skeleton_tokens(scaffold) -> int:
    """Tokens of the first-round S3 canvas after the prompt (fixed text + slot masks)."""
    return len(scaffold.render(scaffold.initial_states(), {})[0])


def held_out_examples(tokenizer, scaffold, context: int, seq_len: int, num_examples: int):
    """Test-split functions whose prompt + skeleton fit the context, spread evenly over the split."""
    examples = build_examples("test", tokenizer, seq_len)
    room = context - skeleton_tokens(scaffold)
    lengths = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    examples = [e for e, ids in zip(examples, lengths) if len(ids) <= room]
    step = max(1, len(examples) // num_examples)
    return examples[::step][:num_examples]


def evaluate(model, tokenizer, examples, methods, tokens_per_step: int, slot_tokens: int) -> dict:
    from mdlm.decode.schema import Scaffold

    scaffold = Scaffold(SIGNATURE_SCHEMA, tokenizer, slot_tokens)
    config = DecodeConfig(sampler="confidence", remasking="low-confidence", temperature=0.0)
    skeleton_length = skeleton_tokens(scaffold)
    rows = {m: [] for m in methods}
    for example in tqdm(examples, desc=f"{tokens_per_step} token(s)/step", dynamic_ncols=True):
        source = example.prompt[: -len(PROMPT_CUE)]
        for method in methods:
            began = time.perf_counter()
            if method == "plain":
                (value, nfe), rounds = run_plain(model, tokenizer, example.prompt, skeleton_length, config,
                                                 tokens_per_step), 1
            else:
                value, nfe, rounds = run_s3(model, tokenizer, example.prompt, scaffold, config, tokens_per_step,
                                    constrain=method == "s3")
            seconds = time.perf_counter() - began
            valid = value is not None and _validates(value)
            matches = field_matches(value if valid else None, example.answer)
            strings = string_values(value) if valid else []
            rows[method].append(dict(valid=valid, matches=matches, strings=len(strings),
                                     hallucinated=sum(s not in source for s in strings), nfe=nfe, rounds=rounds,
                                     seconds=seconds,
                                     source=example.source))
    return {m: summarize(r) for m, r in rows.items()}


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    strings = sum(r["strings"] for r in rows)
    per_field = {f: sum(r["matches"][f] for r in rows) / n for f in FIELDS}
    return dict(examples=n, structural_adherence=sum(r["valid"] for r in rows) / n,
                field_exact_match=sum(per_field.values()) / len(FIELDS), per_field=per_field,
                all_fields_exact=sum(all(r["matches"].values()) for r in rows) / n,
                hallucination=(sum(r["hallucinated"] for r in rows) / strings) if strings else None,
                string_values=strings, nfe=sum(r["nfe"] for r in rows) / n,
                rounds=sum(r["rounds"] for r in rows) / n,
                seconds=sum(r["seconds"] for r in rows) / n)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = results["budgets"]
    metrics = [("structural_adherence", "structural adherence"), ("field_exact_match", "field exact match"),
               ("hallucination", "hallucination (lower is better)"), ("nfe", "network calls / example")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6))
    width = 0.8 / max(1, len(results["methods"]))
    for ax, (key, title) in zip(axes, metrics):
        for i, method in enumerate(results["methods"]):
            xs = [j + i * width for j in range(len(budgets))]
            ys = [budgets[b][method][key] or 0.0 for b in budgets]
            ax.bar(xs, ys, width, label=method)
        ax.set_xticks([j + width * (len(results["methods"]) - 1) / 2 for j in range(len(budgets))])
        ax.set_xticklabels([f"{b} tok/step" for b in budgets])
        ax.set_title(title, fontsize=10)
        if key != "nfe":
            ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown_table(results: dict) -> str:
    planned = results.get("sft_planned_steps", results["sft_steps"])
    stopped = f" (of {planned} planned: stopped early on the shared machine)" if planned != results["sft_steps"] else ""
    lines = [f"Signatures task (function source -> JSON), `{results['run']}` finetuned for {results['sft_steps']} "
             f"SFT steps{stopped}, {results['num_examples']} held-out functions (test split); confidence sampler, "
             "temperature 0; plain generation decodes a masked canvas as long as the S3 skeleton. "
             "Field match counts invalid outputs as 0; hallucination = string values not in the prompt.", "",
             "| tokens/step | method | structural adherence | field exact match | all fields exact | "
             "hallucination | NFE | s / example |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for budget, by_method in results["budgets"].items():
        for method in results["methods"]:
            r = by_method[method]
            lines.append(f"| {budget} | {method} | {_pct(r['structural_adherence'])} | {_pct(r['field_exact_match'])} | "
                         f"{_pct(r['all_fields_exact'])} | {_pct(r['hallucination'])} | {r['nfe']:.1f} | "
                         f"{r['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    from mdlm.eval.bench.common import runs_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, default=None, help="run to finetune (default: the mdlm-small bench run)")
    p.add_argument("--sft-run", type=Path, default=runs_dir() / SFT_RUN)
    p.add_argument("--sft-steps", type=int, default=400)
    p.add_argument("--sft-batch-size", type=int, default=8)
    p.add_argument("--sft-lr", type=float, default=1e-3)
    p.add_argument("--reuse-unfinished", action="store_true",
                   help="evaluate --sft-run as it was last saved, even if its training did not finish")
    p.add_argument("--seq-len", type=int, default=192, help="longest SFT example (prompt + JSON + EOS), tokens")
    p.add_argument("--num-examples", type=int, default=40, help="held-out functions to evaluate")
    p.add_argument("--tokens-per-step", type=int, nargs="+", default=[1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--slot-tokens", type=int, default=8, help="B_f: the initial string slot length")
    add_output_dir_argument(p)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.base is None:
        from mdlm.eval.bench.common import ensure_run

        args.base = ensure_run("mdlm-small")
    run = ensure_sft_run(args.base, args.sft_run, args.sft_steps, args.sft_batch_size, args.sft_lr, args.seq_len,
                         args.reuse_unfinished)
    trained_steps = json.loads((run / "trainer_state.json").read_text())["step"]
    model, tokenizer = load_model(run)
    from mdlm.decode.schema import Scaffold

    scaffold = Scaffold(SIGNATURE_SCHEMA, tokenizer, args.slot_tokens)
    examples = held_out_examples(tokenizer, scaffold, model.config.max_position_embeddings, args.seq_len,
                                 args.num_examples)
    results = dict(run=str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), base=str(args.base),
                   sft_steps=trained_steps, sft_planned_steps=args.sft_steps, num_examples=len(examples), slot_tokens=args.slot_tokens,
                   methods=args.methods, threads=torch.get_num_threads(), budgets={})
    for tokens_per_step in args.tokens_per_step:
        results["budgets"][str(tokens_per_step)] = evaluate(model, tokenizer, examples, args.methods,
                                                            tokens_per_step, args.slot_tokens)
    return write_results(args.output_dir, NAME, results, plot, markdown_table)


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.schema", main)
