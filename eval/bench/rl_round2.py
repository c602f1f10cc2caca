"""The round-2 RL benchmark, kept runnable for its committed results (results/rl.json, results/rl-long/,
results/rl-countdown/, results/rl-countdown-long/): diffu-GRPO (d1) against MDPO (He et al. 2025) and
CJ-GRPO (Yang et al. 2025) at an equal rollout budget, from one SFT model, each evaluated with four greedy
decoders. The current benchmark, with the controls and d2-AnyOrder as columns, is `mdlm.eval.bench.rl`,
whose `markdown_table` renders these older files through this module's.

    python -m mdlm.eval.bench.rl_round2 --sft runs/sft-sudoku                # -> results/rl.json, results/rl.png
    python -m mdlm.eval.bench.rl_round2 --sft runs/sft-sudoku --quick    # smoke sizes -> results/quick/

Every method starts from the same SFT run, sees the same training prompts (the task's train split, seeded
by the run seed), the same group size G and batch, and the same number of rollouts R; a method with mu
passes per generation (num_iterations) therefore takes R * mu / batch optimizer steps. Per method a short
learning-rate sweep runs at seed 0; the best (held-out greedy accuracy, one token per step) is then run at
every seed. Each final model is evaluated on the held-out split with four greedy decoders (one token per
step; L/2 steps; ascending step sizes + EOSER at floor(log2 L) steps; RCR at L/2 steps), pass@k of the
L/2-step decoder at temperature 1, and the over-denoising rate (right at some step, wrong at the end) of
the L/2-step decoder. Learning curves (held-out greedy accuracy at every checkpoint) are reported against
rollouts and gradient updates. Baselines: the SFT model with each decoder (SFT + RCR among them) and
best-of-n of the SFT model with n = R samples per prompt (the highest-reward one is kept: the verifier
used as the reward). Training metrics (KL, entropy, fraction of zero-spread groups, NFE per rollout,
wall-clock per update) come from each run's metrics.jsonl.

The learning rate is selected on the held-out split (there is no separate validation split): the sweep's
best is an optimistic pick for every method alike.

"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from mdlm.eval.bench.common import REPO_ROOT, add_output_dir_argument, quick_results_dir, runs_dir, write_results
from mdlm.eval.bench.rl import (add_size_arguments, best_of_n, mean_se, pass_at_k,  # noqa: F401  (shared)
                                resolved_sizes, sample_many, updates_of)

NAME = "rl"
METHODS = ("diffu-grpo", "mdpo", "cj-grpo")

# Sizes: FULL is 15 RL runs of R = 160 rollouts (a 3-point lr sweep per method at seed 0, then 2 more
# seeds at the best lr), 3-5 minutes each with their evaluations, plus best-of-160 of the SFT model (about
# 10 minutes): about 45 minutes split over two processes on 2 cores (docs/benchmarks.md); QUICK is a smoke run.
FULL = dict(seeds=[0, 1, 2], rollouts=160, batch=8, num_generations=4, eval_examples=192, pass_k=4,
            best_of_n=None, curve_every=5, lrs={"diffu-grpo": [1e-5, 3e-5, 1e-4], "mdpo": [1e-5, 3e-5, 1e-4],
                                                 "cj-grpo": [1e-5, 3e-5, 1e-4]})
QUICK = dict(seeds=[0, 1], rollouts=16, batch=4, num_generations=2, eval_examples=16, pass_k=2, best_of_n=4,
             curve_every=2, lrs={"diffu-grpo": [3e-5], "mdpo": [3e-5], "cj-grpo": [3e-5]})
# Per method: passes per generation and the rollout decoder (each method's own choice).
METHOD_OPTIONS = {
    "diffu-grpo": dict(num_iterations=2, diffusion_steps=12),
    "mdpo": dict(num_iterations=1, diffusion_steps=12, sample_train_steps=4),
    "cj-grpo": dict(num_iterations=2),
}


def decoders(length: int) -> dict:
    from mdlm.decode.config import DecodeConfig
    from mdlm.decode.unmasking import ascending_num_steps

    return {"one-per-step": (DecodeConfig(steps=length, temperature=0.0), length),
            "half-steps": (DecodeConfig(steps=length // 2, temperature=0.0), length // 2),
            "ass-eoser": (DecodeConfig(schedule="ascending", eoser=True, temperature=0.0), ascending_num_steps(length)),
            "rcr": (DecodeConfig(steps=length // 2, remasking="rcr", temperature=0.0), length // 2)}


def _columns(task, held):
    return {k: list(held[k]) for k in task.columns}


def over_denoising_rate(model, tok, task, held, length: int) -> float:
    """Fraction of held-out prompts whose greedy L/2-step decode had a right x0-hat at some step before the
    last and a wrong final answer."""
    import torch

    from mdlm.decode.config import DecodeConfig
    from mdlm.decode.generate import completion_ids, generate_with_result
    from mdlm.train.rl.mdpo import over_denoised

    prompts, columns = list(held["prompt"]), _columns(task, held)
    config = DecodeConfig(steps=length // 2, temperature=0.0, trace=True, eos_token_id=tok.eos_token_id)
    model.eval()
    with torch.no_grad():
        _, result, generated = generate_with_result(model, tok, prompts, length, config)
    per_step = []
    for step in result.trace:
        ids = completion_ids(step.x0, generated, tok.eos_token_id)
        texts = [tok.decode(row, skip_special_tokens=True) for row in ids]
        per_step.append(torch.tensor(task.accuracy(texts, **columns)) > 0.5)
    ids = completion_ids(result.tokens.cpu(), generated, tok.eos_token_id)
    final = torch.tensor(task.accuracy([tok.decode(r, skip_special_tokens=True) for r in ids], **columns)) > 0.5
    correct = torch.stack(per_step + [final], 1)
    return over_denoised(correct).float().mean().item()


def evaluate_model(model, tok, task, held, length: int, pass_k: int, seed: int) -> dict:
    from mdlm.train.tasks import evaluate

    out = {"decoders": {}}
    for name, (config, nfe) in decoders(length).items():
        result = evaluate(model, tok, task, held, config=config, completion_length=length)
        out["decoders"][name] = {"accuracy": result["accuracy"], "reward": result["reward"], "nfe": nfe}
    _, correct = sample_many(model, tok, task, held, length, pass_k, seed)
    out[f"pass@{pass_k}"] = pass_at_k(correct)
    out["over_denoising_rate"] = over_denoising_rate(model, tok, task, held, length)
    return out


def training_metrics(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]

    def mean(key):
        values = [r[key] for r in rows if key in r]
        return sum(values) / len(values) if values else None

    rolled = [r for r in rows if "reward" in r]  # the optimizer steps that drew a new generation
    fifth = max(1, len(rolled) // 5)  # one generation is a handful of prompts: too noisy to compare alone
    return {"kl_final": rows[-1].get("kl", 0.0), "entropy_mean": mean("entropy"),
            "frac_reward_zero_std": mean("frac_reward_zero_std"), "nfe_per_rollout": mean("nfe_per_rollout"),
            "seconds_per_update": mean("step_time"), "reward_first": rolled[0]["reward"],
            "reward_last": rolled[-1]["reward"], "over_denoising_rate_rollouts": mean("over_denoising_rate"),
            "reward_first_fifth": sum(r["reward"] for r in rolled[:fifth]) / fifth,
            "reward_last_fifth": sum(r["reward"] for r in rolled[-fifth:]) / fifth}


def curve(run: Path, tok, task, held, length: int, rollouts_per_step: float) -> list[dict]:
    from mdlm import MDLMForMaskedLM
    from mdlm.train.tasks import evaluate

    points = []
    for checkpoint in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(checkpoint.name.split("-")[1])
        model = MDLMForMaskedLM.from_pretrained(checkpoint)
        accuracy = evaluate(model, tok, task, held, completion_length=length)["accuracy"]
        points.append({"updates": step, "rollouts": step * rollouts_per_step, "accuracy": accuracy})
    return points


def rl_run(method: str, lr: float, seed: int, sizes: dict, task_name: str, sft: Path, out: Path,
           eval_examples: int) -> tuple[Path, float]:
    from mdlm.train.rl.cli import build_parser, run

    options = METHOD_OPTIONS[method]
    steps = updates_of(sizes, options)
    argv = ["--algorithm", method, "--task", task_name, "--model", str(sft), "--output-dir", str(out),
            "--overwrite", "--seed", str(seed), "--learning-rate", str(lr), "--max-steps", str(steps),
            "--num-generations", str(sizes["num_generations"]), "--per-device-train-batch-size", str(sizes["batch"]),
            "--save-steps", str(sizes["curve_every"]), "--eval-examples", str(eval_examples), "--no-eval-before",
            "--no-progress", "--temperature", "1.0"]
    for key, value in options.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    start = time.time()
    run(vars(build_parser().parse_args(argv)))
    return out, time.time() - start


def summarise(results: dict) -> dict:
    """Means and standard errors over seeds, and the issue's target checks."""
    summary = {}
    for method, block in results["methods"].items():
        seeds = block["seeds"]
        summary[method] = {name: mean_se([s["eval"]["decoders"][name]["accuracy"] for s in seeds])
                           for name in seeds[0]["eval"]["decoders"]}
        summary[method]["pass@k"] = mean_se([s["eval"][f"pass@{results['sizes']['pass_k']}"] for s in seeds])
        summary[method]["over_denoising_rate"] = mean_se([s["eval"]["over_denoising_rate"] for s in seeds])
        for key in ("kl_final", "entropy_mean", "frac_reward_zero_std", "seconds_per_update", "nfe_per_rollout",
                    "reward_first_fifth", "reward_last_fifth"):
            if all(key in s["training"] for s in seeds):  # the fifths are absent from older results
                summary[method][key] = mean_se([s["training"][key] for s in seeds])
    sft = results["sft"]["decoders"]["one-per-step"]["accuracy"]
    checks = {}
    base = summary.get("diffu-grpo", {}).get("one-per-step", {}).get("mean")
    for method in ("mdpo", "cj-grpo"):
        if method in summary:
            gain = summary[method]["one-per-step"]["mean"] - sft
            checks[f"{method}: +10 points over SFT"] = {"gain_points": 100 * gain, "met": gain >= 0.10}
            if base is not None:
                checks[f"{method}: beats diffu-GRPO at equal rollouts"] = {
                    "difference_points": 100 * (summary[method]["one-per-step"]["mean"] - base),
                    "met": summary[method]["one-per-step"]["mean"] > base}
    if "mdpo" in summary and base is not None:
        updates = results["methods"]["diffu-grpo"]["steps"]
        mdpo_curves = [s["curve"] for s in results["methods"]["mdpo"]["seeds"]]
        reached = []
        for points in mdpo_curves:
            hit = [p["updates"] for p in points if p["accuracy"] >= base]
            reached.append(hit[0] if hit else None)
        checks["mdpo: reaches diffu-GRPO's final accuracy in <= 1/3 of its updates"] = {
            "diffu_grpo_updates": updates, "mdpo_updates_per_seed": reached,
            "met": all(r is not None and r <= updates / 3 for r in reached)}
    if "cj-grpo" in summary and base is not None:
        cj, half = summary["cj-grpo"]["ass-eoser"]["mean"], summary["diffu-grpo"]["half-steps"]["mean"]
        checks["cj-grpo ASS at log2 L steps >= diffu-GRPO at L/2 steps"] = {
            "cj_grpo_ass": cj, "diffu_grpo_half": half, "met": cj >= half}
    return {"per_method": summary, "targets": checks}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    sft = results["sft"]["decoders"]["one-per-step"]["accuracy"]
    for method, block in results["methods"].items():
        for i, s in enumerate(block["seeds"]):
            points = [{"updates": 0, "rollouts": 0, "accuracy": sft}] + s["curve"]
            label = f"{method} ({_seeds(len(block['seeds']))})" if i == 0 else None
            kwargs = dict(color=f"C{METHODS.index(method)}", alpha=0.8, label=label)
            axes[0].plot([p["rollouts"] for p in points], [p["accuracy"] for p in points], **kwargs)
            axes[1].plot([p["updates"] for p in points], [p["accuracy"] for p in points], **kwargs)
    for ax, label in zip(axes, ("rollouts", "gradient updates (optimizer steps)")):
        ax.axhline(sft, color="gray", ls="--", lw=1, label="SFT")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out accuracy (greedy, 1 token/step)")
        ax.legend(fontsize=8)
    fig.suptitle(f"RL on {results['task']}: R = "
                 f"{results['sizes']['rollouts']} rollouts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _pm(stat: dict) -> str:
    if stat["n"] < 2 or math.isnan(stat["se"]):
        return f"{100 * stat['mean']:.1f}%"
    return f"{100 * stat['mean']:.1f}% ± {100 * stat['se']:.1f}"


def markdown_table(results: dict) -> str:
    sizes, summary = results["sizes"], results["summary"]["per_method"]
    names = list(results["sft"]["decoders"])
    k = sizes["pass_k"]
    # the training reward's first and last fifth of generations (did the objective itself move?); older
    # results lack it
    trend = bool(summary) and all("reward_last_fifth" in stat for stat in summary.values())
    extra = " |" if trend else ""
    lines = [f"Held-out {results['task']} accuracy ({results['eval_examples']} held-out prompts; mean ± s.e. over "
             f"seeds; R = {sizes['rollouts']} rollouts per run, G = {sizes['num_generations']}, "
             f"batch {sizes['batch']}; SFT start `{results['sft_run']}`):", "",
             "| model | " + " | ".join(f"{n} (NFE {results['sft']['decoders'][n]['nfe']})" for n in names) +
             f" | pass@{k} | over-denoising | KL | entropy | zero-spread groups | s / update |" +
             (" rollout reward, first -> last fifth |" if trend else "") + " lr |",
             "| --- |" + " --- |" * (len(names) + 7) + (" --- |" if trend else "")]
    sft = results["sft"]
    lines.append("| SFT | " + " | ".join(f"{100 * sft['decoders'][n]['accuracy']:.1f}%" for n in names) +
                 f" | {100 * sft[f'pass@{k}']:.1f}% | {100 * sft['over_denoising_rate']:.1f}% | | | | | |" + extra)
    bon = results["best_of_n"]
    lines.append(f"| SFT best-of-{bon['n']} (reward-selected) | {100 * bon['accuracy']:.1f}% |" +
                 " |" * (len(names) + 6) + extra)
    for method, stat in summary.items():
        lr = results["methods"][method]["best_lr"]
        reward = (f" {stat['reward_first_fifth']['mean']:.3f} -> {stat['reward_last_fifth']['mean']:.3f} |"
                  if trend else "")
        lines.append(f"| {method} ({_seeds(stat[names[0]]['n'])}) | " + " | ".join(_pm(stat[n]) for n in names) +
                     f" | {_pm(stat['pass@k'])} | {_pm(stat['over_denoising_rate'])} | {stat['kl_final']['mean']:.4f} | "
                     f"{stat['entropy_mean']['mean']:.2f} | {100 * stat['frac_reward_zero_std']['mean']:.0f}% | "
                     f"{stat['seconds_per_update']['mean']:.1f} |{reward} {lr:g} |")
    lines += ["", "Learning-rate sweep (seed 0, held-out accuracy one token per step): " + "; ".join(
        f"{m}: " + ", ".join(f"{lr} -> {100 * acc:.1f}%" for lr, acc in block["sweep"].items())
        for m, block in results["methods"].items()), "",
        "Targets: " + "; ".join(f"{name}: {'met' if v['met'] else 'not met'}" for name, v in
                                results["summary"]["targets"].items()),
        ""]
    if results.get("seconds"):
        lines.append(f"Wall time {results['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def assemble(folders: list[Path], results_dir: Path) -> dict:
    """One results file from benchmark processes that each ran some methods (one of them the baselines):
    finished methods only; the wall time is the longest process's."""
    parts = [json.loads((Path(f) / "partial.json").read_text()) for f in folders]
    base = next(p for p in parts if "sft" in p)
    results = {**base, "methods": {}, "assembled_from": [str(f) for f in folders]}
    for part in parts:
        for method, block in part["methods"].items():
            if "best_lr" not in block and len(part["sizes"]["lrs"][method]) == 1 and block["seeds"]:
                # a process stopped after the method's last evaluated seed: one lr, no sweep to choose from
                lr = part["sizes"]["lrs"][method][0]
                block = {"best_lr": lr, "sweep": {str(lr): block["seeds"][0]["eval"]["decoders"]["one-per-step"]
                                                  ["accuracy"]},
                         "steps": updates_of(part["sizes"], METHOD_OPTIONS[method]), "seeds": block["seeds"]}
            if "best_lr" in block:
                earlier = results["methods"].get(method)
                results["methods"][method] = block if earlier is None else merge_seeds(method, earlier, block)
    results["sizes"] = {**base["sizes"], "seeds": sorted({record["seed"] for block in results["methods"].values()
                                                           for record in block["seeds"]} | set(base["sizes"]["seeds"]))}
    results["seconds"] = max(p.get("seconds", 0.0) for p in parts)
    results["summary"] = summarise(results)
    return write_results(results_dir, NAME, results, plot, markdown_table)


def merge_seeds(method: str, one: dict, other: dict) -> dict:
    """One method's block from two processes that ran other seeds at the same lr and budget (a method's seeds
    split over processes); the lr sweep kept is the one run at the lowest seed, as a single process does."""
    if one["best_lr"] != other["best_lr"] or one["steps"] != other["steps"]:
        raise ValueError(f"--assemble: the {method} runs differ (lr {one['best_lr']} vs {other['best_lr']}, "
                         f"{one['steps']} vs {other['steps']} updates); only seeds of one setting can be pooled")
    seeds = sorted(one["seeds"] + other["seeds"], key=lambda record: record["seed"])
    numbers = [record["seed"] for record in seeds]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"--assemble: {method} seed(s) {sorted({n for n in numbers if numbers.count(n) > 1})} "
                         "come from more than one process; pass each run folder once")
    first = min((one, other), key=lambda block: min(record["seed"] for record in block["seeds"]))
    return {**first, "seeds": seeds}


def _write_partial(folder: Path, results: dict, method: str, seeds: list) -> None:
    """What has been measured so far, beside the runs (a killed benchmark keeps its numbers)."""
    partial = {**results, "methods": {**results["methods"], method: {"seeds": seeds}}}
    (folder / "partial.json").write_text(json.dumps(partial, indent=1, default=str))


def main(argv=None) -> dict:
    from mdlm.train.rl.cli import load_policy
    from mdlm.train.tasks import get_task

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", type=Path, default=REPO_ROOT / "runs" / "sft-sudoku")
    parser.add_argument("--task", default="sudoku")
    parser.add_argument("--quick", action="store_true", help="smoke sizes, written under results/quick/")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                        help="RL methods to run (none: only the baselines, for a benchmark split over processes)")
    add_size_arguments(parser)
    parser.add_argument("--lrs", type=float, nargs="+", help="one learning-rate sweep for every method")
    parser.add_argument("--curve-every", dest="curve_every", type=int, help="checkpoint (curve point) every N updates")
    parser.add_argument("--pass-k", dest="pass_k", type=int, help="k of pass@k")
    parser.add_argument("--best-of-n", dest="best_of_n", type=int, help="n of the SFT best-of-n (default R)")
    parser.add_argument("--skip-baselines", action="store_true", help="only the RL runs (for a benchmark split "
                        "over processes; put together with --assemble)")
    parser.add_argument("--assemble", type=Path, nargs="+", metavar="RUNS",
                        help="write the results from the partial.json of these benchmark run folders instead")
    add_output_dir_argument(parser)
    args = parser.parse_args(argv)
    if args.assemble:
        return assemble(args.assemble, quick_results_dir(args.output_dir, args.quick))
    sizes = resolved_sizes(args, QUICK if args.quick else FULL, ("curve_every", "pass_k", "best_of_n"))
    if args.lrs:
        sizes["lrs"] = {m: list(args.lrs) for m in METHODS}
    if not (args.sft / "config.json").is_file():
        raise SystemExit(f"--sft {args.sft}: no SFT run there; train one with the recipe of docs/finetuning.md "
                         "(python train/sft.py --task sudoku ... --output-dir runs/sft-sudoku)")
    results_dir = quick_results_dir(args.output_dir, args.quick)
    folder = runs_dir() / ("rl-quick" if args.quick else "rl")
    start = time.time()
    task = get_task(args.task)
    length = task.max_completion_length
    held = task.dataset("test", sizes["eval_examples"])
    model, tok = load_policy(str(args.sft))
    results = {"task": args.task, "sft_run": str(args.sft), "sizes": sizes, "eval_examples": len(held),
               "completion_length": length, "method_options": METHOD_OPTIONS, "methods": {}}
    folder.mkdir(parents=True, exist_ok=True)
    if not args.skip_baselines:
        results["sft"] = evaluate_model(model, tok, task, held, length, sizes["pass_k"], seed=0)
        n = sizes["best_of_n"] or sizes["rollouts"]
        rewards, correct = sample_many(model, tok, task, held, length, n, seed=1)
        results["best_of_n"] = {"n": n, "accuracy": best_of_n(rewards, correct)}
        print(json.dumps({"sft": results["sft"], "best_of_n": results["best_of_n"]}), flush=True)
        (folder / "partial.json").write_text(json.dumps(results, indent=1, default=str))  # kept if stopped
    from mdlm import MDLMForMaskedLM

    for method in args.methods:
        sweep, best = {}, None
        for lr in sizes["lrs"][method]:
            out, seconds = rl_run(method, lr, sizes["seeds"][0], sizes, args.task, args.sft,
                                  folder / f"{method}-lr{lr:g}-seed{sizes['seeds'][0]}", len(held))
            sweep[lr] = json.loads((out / "eval.json").read_text())["after"]["accuracy"]
            if best is None or sweep[lr] > sweep[best[0]]:
                best = (lr, out, seconds)
            print(json.dumps({"method": method, "lr": lr, "accuracy": sweep[lr], "seconds": seconds}), flush=True)
        lr = best[0]
        seeds = []
        options = METHOD_OPTIONS[method]
        steps = updates_of(sizes, options)
        for seed in sizes["seeds"]:
            if seed == sizes["seeds"][0]:
                out, seconds = best[1], best[2]
            else:
                out, seconds = rl_run(method, lr, seed, sizes, args.task, args.sft, folder / f"{method}-lr{lr:g}-seed{seed}",
                                      len(held))
            policy = MDLMForMaskedLM.from_pretrained(out)
            record = {"seed": seed, "seconds": seconds, "eval": evaluate_model(policy, tok, task, held, length,
                                                                               sizes["pass_k"], seed),
                      "training": training_metrics(out),
                      "curve": curve(out, tok, task, held, length, sizes["batch"] / options["num_iterations"])}
            final = {"updates": steps, "rollouts": sizes["rollouts"],
                     "accuracy": record["eval"]["decoders"]["one-per-step"]["accuracy"]}
            if not record["curve"] or record["curve"][-1]["updates"] != steps:
                record["curve"].append(final)
            seeds.append(record)
            _write_partial(folder, results, method, seeds)
            print(json.dumps({"method": method, "seed": seed, "eval": record["eval"]}), flush=True)
        results["methods"][method] = {"best_lr": lr, "sweep": {str(k): v for k, v in sweep.items()}, "steps": steps,
                                      "seeds": seeds}
        (folder / "partial.json").write_text(json.dumps(results, indent=1, default=str))
    results["seconds"] = time.time() - start
    (folder / "partial.json").write_text(json.dumps(results, indent=1, default=str))  # with the wall time
    if args.skip_baselines:
        print(f"RL runs only: put the results together with --assemble {folder} ...", flush=True)
        return results
    results["summary"] = summarise(results)
    return write_results(results_dir, NAME, results, plot, markdown_table)


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.rl_round2", main)
