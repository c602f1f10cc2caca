"""What holds the diffusion RL trainers back: measurements on one SFT model, each changing one thing.

    python -m mdlm.eval.bench.rl_diagnose --sft runs/sft-sudoku --task sudoku --sections spread estimator runs rft
    python -m mdlm.eval.bench.rl_diagnose --report    # redraw results/rl-diagnose.png, print the tables

1. Group spread (no training). GRPO learns only from groups whose rewards differ. For each rollout
   temperature and group size G, the fraction of groups with zero reward spread, and of groups in which some
   but not all draws solve the prompt (the groups whose advantage separates a solve from a miss).
2. The log-prob estimator (no training). For rollouts decoded one token per step (so the trajectory's log-
   likelihood given its order is the sum of the recorded step log-probs), the policy gradient
   sum_i A_i grad log pi(y_i) computed three ways: exactly along the trajectory (each token scored on the
   canvas it was drawn from: what CJ-GRPO does), with d1's one-pass estimate (completion fully masked, prompt
   tokens masked with p = 0.15; several independent mask draws), and with d1's estimate without prompt
   masking. Reported: the cosine of each estimate with the exact gradient and between two d1 draws, and the
   correlation across rollouts of d1's sequence log-prob with the exact one.
3. One-change RL runs (`--runs`): diffu-GRPO at the benchmark's settings and with one change each (lr, G at
   equal rollouts, temperature), each from the same SFT model with the same rollout budget; held-out greedy
   accuracy and the rollout reward's first and last fifth. Controls beside them: rejection-sampling
   finetuning (`train/rl/rft.py`) at the same number of samples and d2-AnyOrder (`train/rl/d2_anyorder.py`)
   from the same SFT model continued with the AS-ARM objective (`train/rl/sft_objectives.py`).
4. Answer shapes (`--sections shapes --trained RUN ...`, no training). A policy can raise its reward by
   answering every prompt the same way: the held-out greedy answers of the SFT model and of each trained
   run, with every number replaced by `n` (countdown's operator pattern), and the share of the commonest
   shape. A trained run whose greedy answers are all one shape has collapsed onto the pattern that is right
   most often, instead of learning which pattern each prompt needs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from mdlm.eval.bench.common import add_output_dir_argument, runs_dir

NAME = "rl-diagnose"


def group_spread(model, tok, task, prompts_data, temperatures, group_sizes, seed: int = 0) -> dict:
    """Per temperature: max(G) draws per prompt (L/2-step confidence decoder, as the RL rollouts); per G,
    the fraction of groups (the first G draws) with zero reward spread and with a mixed solve/miss."""
    from mdlm.decode.config import DecodeConfig
    from mdlm.decode.generate import generate

    prompts, columns = list(prompts_data["prompt"]), {k: list(prompts_data[k]) for k in task.columns}
    length = task.max_completion_length
    out = {}
    for temperature in temperatures:
        rewards, correct = [], []
        for draw in range(max(group_sizes)):
            config = DecodeConfig(steps=length // 2, temperature=temperature, seed=seed * 1000 + draw)
            texts = generate(model, tok, prompts, length, config)
            rewards.append(task.reward(prompts, texts, None, **columns))
            correct.append(task.accuracy(texts, **columns))
        per_g = {}
        for g in group_sizes:
            zero = mixed = 0
            for j in range(len(prompts)):
                r = [rewards[i][j] for i in range(g)]
                c = [correct[i][j] for i in range(g)]
                zero += max(r) == min(r)
                mixed += 0 < sum(c) < g
            per_g[str(g)] = {"zero_spread": zero / len(prompts), "mixed_solve": mixed / len(prompts)}
        out[str(temperature)] = {"groups": per_g, "mean_reward": sum(map(sum, rewards)) / (len(rewards) * len(prompts)),
                                 "solve_rate": sum(map(sum, correct)) / (len(correct) * len(prompts))}
    return out


def estimator_alignment(model, tok, task, prompts_data, generations: int, mask_draws: int, seed: int = 0) -> dict:
    """Section 2 of the module docstring."""
    import torch

    from mdlm.decode.config import DecodeConfig
    from mdlm.train.rl.base import completion_logps, group_advantages, left_padded, rollout, step_logps

    length = task.max_completion_length
    prompts = [p for p in prompts_data["prompt"] for _ in range(generations)]
    columns = {k: [v for v in prompts_data[k] for _ in range(generations)] for k in task.columns}
    ids, mask = left_padded(tok, prompts)
    mask_id = model.config.mask_token_id
    generator = torch.Generator().manual_seed(seed)
    result = rollout(model, ids, mask, length, DecodeConfig(steps=length, temperature=1.0), tok.eos_token_id,
                     generator, record=True)
    completion, completion_mask = result.completion_ids, result.completion_mask.bool()
    texts = tok.batch_decode([[t for t in row if t != tok.eos_token_id] for row in completion.tolist()],
                             skip_special_tokens=True)
    rewards = torch.tensor(task.reward(prompts, texts, None, **columns), dtype=torch.float32)
    advantages = group_advantages(rewards, generations)
    trajectory = result.trajectory
    per_row = lambda x: x[:, :, -length:].permute(1, 0, 2)  # noqa: E731  (S, B, L) -> (B, S, T)
    canvases, revealed = per_row(trajectory.canvases), per_row(trajectory.revealed)
    targets = per_row(torch.stack([trajectory.after(s) for s in range(trajectory.num_steps)]))
    trained = revealed & completion_mask[:, None, :]
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()

    def gradient(objective):
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])

    exact_logps, _ = step_logps(model, ids, mask, canvases, targets, mask_id, 1.0)
    exact_seq = torch.where(trained, exact_logps, torch.zeros(())).sum((1, 2))  # untrained entries may be -inf
    g_exact = gradient((advantages * exact_seq).sum() / len(prompts))
    recorded = torch.where(trained, per_row(trajectory.logprob).float(), torch.zeros(())).sum((1, 2))

    input_ids = torch.cat([ids, completion], 1)
    valid = torch.cat([mask.bool(), torch.ones_like(completion, dtype=torch.bool)], 1)

    def d1(prompt_mask_prob, draw):
        noise_gen = torch.Generator().manual_seed(seed * 100 + draw)
        noise = (torch.rand(ids.shape, generator=noise_gen) < prompt_mask_prob) & mask.bool()
        masked = torch.cat([noise, torch.ones_like(completion, dtype=torch.bool)], 1)
        logps, _ = completion_logps(model, input_ids, valid, masked, length, mask_id)
        seq = torch.where(completion_mask, logps, torch.zeros(())).sum(1)
        return seq, gradient((advantages * seq).sum() / len(prompts))

    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    draws = [d1(0.15, k) for k in range(mask_draws)]
    plain_seq, g_plain = d1(0.0, 0)
    exact_np, d1_np = exact_seq.detach(), draws[0][0].detach()

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))

    return {"rollouts": len(prompts), "generations": generations, "advantage_nonzero": float((advantages != 0).float().mean()),
            "recorded_vs_rescored_max_abs": float((recorded - exact_seq.detach()).abs().max()),
            "cos_d1_exact": [cos(g, g_exact) for _, g in draws],
            "cos_d1_no_prompt_mask_exact": cos(g_plain, g_exact),
            "cos_d1_d1": [cos(draws[i][1], draws[i + 1][1]) for i in range(len(draws) - 1)],
            "corr_seq_logp_d1_exact": corr(d1_np, exact_np), "corr_seq_logp_plain_exact": corr(plain_seq.detach(), exact_np),
            "mean_seq_logp_exact": float(exact_np.mean()), "mean_seq_logp_d1": float(d1_np.mean())}


def answer_shapes(runs: list[str], task, held) -> dict:
    """Section 4: per run, held-out greedy accuracy (the run's own decoder: its algorithm's evaluation
    config when it was trained by mdlm-rl) and the counts of its answers' shapes (numbers as `n`)."""
    import collections
    import re

    import yaml

    from mdlm import MDLMForMaskedLM
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.rl import get_algorithm
    from mdlm.train.tasks import complete, greedy_config

    length = task.max_completion_length
    out = {}
    for run in runs:
        options = Path(run) / "run_options.yaml"
        algorithm = (yaml.safe_load(options.read_text()) or {}).get("script", {}).get("algorithm") \
            if options.is_file() else None
        config = get_algorithm(algorithm)[1].evaluation_config(length) if algorithm else None
        model, tok = MDLMForMaskedLM.from_pretrained(run).eval(), load_tokenizer(run)
        texts = complete(model, tok, list(held["prompt"]), length, config or greedy_config(length))
        correct = task.accuracy(texts, **{k: list(held[k]) for k in task.columns})
        shapes = collections.Counter(re.sub(r"\d+", "n", text.strip()) for text in texts)
        out[run] = {"accuracy": sum(correct) / len(correct), "shapes": dict(shapes.most_common()),
                    "top_shape_share": shapes.most_common(1)[0][1] / len(texts)}
    return out


# Section 3: (name, algorithm, start ("sft" | "asarm"), options). BASE is the benchmark's diffu-GRPO run
# (G 4, batch 8, mu 2, L/2 steps, temperature 1, lr 3e-5); each other run changes one thing.
BASE = {"num_generations": 4, "per_device_train_batch_size": 8, "num_iterations": 2, "diffusion_steps": 12,
        "temperature": 1.0, "learning_rate": 3e-5}
RUNS = [
    ("diffu-grpo (base)", "diffu-grpo", "sft", {}),
    ("no prompt masking", "diffu-grpo", "sft", {"prompt_mask_prob": 0.0}),
    ("lr 1e-4", "diffu-grpo", "sft", {"learning_rate": 1e-4}),
    ("G 8 (same rollouts)", "diffu-grpo", "sft", {"num_generations": 8, "per_device_train_batch_size": 16}),
    ("temperature 1.3", "diffu-grpo", "sft", {"temperature": 1.3}),
    ("mu 1 (one pass per generation)", "diffu-grpo", "sft", {"num_iterations": 1}),
    ("d2-AnyOrder", "d2-anyorder", "asarm", {"diffusion_steps": None}),
    ("cj-grpo", "cj-grpo", "sft", {"diffusion_steps": None}),
    ("d2-AnyOrder lr 1e-4", "d2-anyorder", "asarm", {"diffusion_steps": None, "learning_rate": 1e-4}),
]


def one_change_run(name, algorithm, start, changes, rollouts, task_name, starts, folder, eval_examples, seed=0,
                   known_before=None):
    """One RL run of section 3 through mdlm-rl (resumable: a finished run is read back). `known_before`: the
    start's held-out accuracy measured by an earlier run (the evaluation before RL is then skipped)."""
    from mdlm.train.rl.cli import build_parser, run

    options = {**BASE, **changes}
    steps = rollouts * options["num_iterations"] // options["per_device_train_batch_size"]
    if folder.joinpath("eval.json").exists() and "after" in json.loads(folder.joinpath("eval.json").read_text()):
        pass  # done before: read back
    else:
        argv = ["--algorithm", algorithm, "--task", task_name, "--model", str(starts[start]), "--output-dir",
                str(folder), "--overwrite", "--seed", str(seed), "--max-steps", str(steps), "--save-steps",
                str(steps), "--eval-examples", str(eval_examples), "--no-progress"]
        argv += ["--no-eval-before"] if known_before is not None else []
        for key, value in options.items():
            if value is not None:
                argv += ["--" + key.replace("_", "-"), str(value)]
        run(vars(build_parser().parse_args(argv)))
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rolled = [r for r in rows if "reward" in r]
    fifth = max(1, len(rolled) // 5)
    evaluation = json.loads((folder / "eval.json").read_text())
    mean = lambda key: sum(r.get(key, 0.0) for r in rolled) / len(rolled)  # noqa: E731
    return {"algorithm": algorithm, "start": start, "options": options, "updates": steps,
            "accuracy_before": evaluation.get("before", {}).get("accuracy", known_before),
            "accuracy_after": evaluation["after"]["accuracy"], "reward_after": evaluation["after"]["reward"],
            "rollout_reward_first_fifth": sum(r["reward"] for r in rolled[:fifth]) / fifth,
            "rollout_reward_last_fifth": sum(r["reward"] for r in rolled[-fifth:]) / fifth,
            "zero_spread_groups": mean("frac_reward_zero_std"), "kl_last": rows[-1].get("kl"),
            "seconds_per_update": mean("step_time")}


def markdown_table(results: dict) -> str:
    """The tables of docs/rl.md (`python -m mdlm.eval.bench.report`) from results/rl-diagnose.json."""
    lines = [f"Group spread of `{results['sft_run']}` on {results['task']} train prompts (no training; L/2-step "
             "rollout decoder): fraction of groups with zero reward spread / with a mixed solve and miss:", "",
             "| temperature | solve rate | G 4 | G 8 | G 16 |", "| --- | --- | --- | --- | --- |"]
    for temperature, block in results.get("group_spread", {}).items():
        cells = [f"{100 * g['zero_spread']:.0f}% / {100 * g['mixed_solve']:.0f}%" for g in block["groups"].values()]
        lines.append(f"| {temperature} | {100 * block['solve_rate']:.1f}% | " + " | ".join(cells) + " |")
    est = results.get("estimator")
    if est:
        lines += ["", f"Policy-gradient estimates on {est['rollouts']} rollouts ({est['generations']} per prompt, one token "
                  "per step at temperature 1), against the exact gradient along the trajectory:", "",
                  "| estimate | cosine with the exact gradient | sequence log-prob: correlation with the exact one |",
                  "| --- | --- | --- |",
                  "| d1 one-pass, prompt masked p = 0.15 (3 mask draws) | " +
                  ", ".join(f"{c:.2f}" for c in est["cos_d1_exact"]) + f" | {est['corr_seq_logp_d1_exact']:.2f} |",
                  f"| d1 one-pass, prompt not masked | {est['cos_d1_no_prompt_mask_exact']:.2f} | "
                  f"{est['corr_seq_logp_plain_exact']:.2f} |",
                  "| d1, one mask draw against another | " + ", ".join(f"{c:.2f}" for c in est["cos_d1_d1"]) + " | |",
                  "", f"Mean sequence log-prob of the same completions: exact {est['mean_seq_logp_exact']:.2f}, d1's "
                  f"estimate {est['mean_seq_logp_d1']:.2f} nats."]
    runs = results.get("runs", {})
    if runs:
        lines += ["", f"One-change runs ({results['task']}, R = {results.get('rollouts', 320)} rollouts each, seed 0 unless "
                  f"the name says; held-out greedy accuracy on {results.get('eval_examples', 192)} prompts):", "",
                  "| run | start | updates | held-out before -> after | rollout reward, first -> last fifth | "
                  "zero-spread groups | KL (last) | s / update |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in runs.items():
            before = "" if r["accuracy_before"] is None else f"{100 * r['accuracy_before']:.1f}% -> "
            lines.append(f"| {name} | {r['start']} | {r['updates']} | {before}{100 * r['accuracy_after']:.1f}% | "
                         f"{r['rollout_reward_first_fifth']:.3f} -> {r['rollout_reward_last_fifth']:.3f} | "
                         f"{100 * r['zero_spread_groups']:.0f}% | {r['kl_last'] or 0:.4f} | {r['seconds_per_update']:.1f} |")
    pooled = {}
    for name, r in runs.items():
        pooled.setdefault(r.get("change", name), []).append(r)
    multi = {name: rs for name, rs in pooled.items() if len(rs) > 1 and all(r["accuracy_before"] is not None for r in rs)}
    if multi:
        lines += ["", "Seeds pooled (paired gain in held-out points, mean ± s.e.; rollout-reward rise, mean):", ""]
        for name, rs in multi.items():
            gains = [100 * (r["accuracy_after"] - r["accuracy_before"]) for r in rs]
            mean = sum(gains) / len(gains)
            se = math.sqrt(sum((g - mean) ** 2 for g in gains) / (len(gains) - 1) / len(gains))
            rise = sum(r["rollout_reward_last_fifth"] - r["rollout_reward_first_fifth"] for r in rs) / len(rs)
            lines.append(f"- {name}: {len(rs)} seeds, {mean:+.1f} ± {se:.1f} points "
                         f"({', '.join(f'{g:+.1f}' for g in gains)}); rollout reward {rise:+.3f}")
    shapes = results.get("answer_shapes")
    if shapes:
        lines += ["", f"Held-out greedy answers by shape (numbers as `n`; {results.get('eval_examples', 192)} prompts):", "",
                  "| run | held-out accuracy | commonest shape: share | next shapes |", "| --- | --- | --- | --- |"]
        for run, r in shapes.items():
            top = list(r["shapes"].items())
            lines.append(f"| `{run}` | {100 * r['accuracy']:.1f}% | `{top[0][0]}`: {100 * r['top_shape_share']:.0f}% | " +
                         ", ".join(f"`{shape}` {count}" for shape, count in top[1:4]) + " |")
    rft = results.get("rft")
    if rft:
        lines += ["", f"Rejection-sampling finetuning: {rft['samples']} samples, {rft['kept']} distinct reward-1 pairs "
                  f"kept, SFT on them: held-out {100 * rft.get('accuracy_after', float('nan')):.1f}%."]
    ar = results.get("ar_control")
    if ar:
        lines += ["", f"Autoregressive control (`{ar['sft_run']}`, {ar['trainer']}, {ar['updates']} updates): held-out "
                  f"{100 * ar['accuracy_before']:.1f}% -> {100 * ar['accuracy_after']:.1f}%, rollout reward "
                  f"{ar['rollout_reward_first_fifth']:.3f} -> {ar['rollout_reward_last_fifth']:.3f}, zero-spread groups "
                  f"{100 * ar['zero_spread_groups']:.0f}%."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for i, (temperature, block) in enumerate(results.get("group_spread", {}).items()):
        sizes = [int(g) for g in block["groups"]]
        axes[0].plot(sizes, [g["zero_spread"] for g in block["groups"].values()], "o-", color=f"C{i}",
                     label=f"zero spread, T={temperature}")
        axes[0].plot(sizes, [g["mixed_solve"] for g in block["groups"].values()], "s--", color=f"C{i}",
                     label=f"mixed solve/miss, T={temperature}")
    axes[0].set_xlabel("group size G")
    axes[0].set_ylabel("fraction of groups")
    axes[0].legend(fontsize=7)
    est = results.get("estimator")
    if est:
        names = [f"d1 draw {k}" for k in range(len(est["cos_d1_exact"]))] + ["d1, no prompt mask"]
        values = est["cos_d1_exact"] + [est["cos_d1_no_prompt_mask_exact"]]
        axes[1].bar(names, values, color=["C3"] * len(est["cos_d1_exact"]) + ["C2"])
        axes[1].set_ylabel("cosine with the exact policy gradient")
        axes[1].tick_params(axis="x", labelsize=7, rotation=20)
    runs = dict(results.get("runs", {}))
    if results.get("ar_control"):
        runs["AR + TRL GRPOTrainer (control)"] = {**results["ar_control"], "start": "ar"}
    if results.get("rft", {}).get("accuracy_after") is not None:
        runs["RFT (control)"] = {"accuracy_after": results["rft"]["accuracy_after"], "accuracy_before":
                                 next((r["accuracy_before"] for r in runs.values() if r.get("start") == "sft"), None)}
    if runs:
        names = list(runs)
        axes[2].barh(names, [100 * r["accuracy_after"] for r in runs.values()], color="C0")
        for name, r in runs.items():
            if r["accuracy_before"] is not None:
                axes[2].plot([100 * r["accuracy_before"]] * 2, [names.index(name) - 0.4, names.index(name) + 0.4], "k-")
        axes[2].set_xlabel("held-out accuracy after RL, % (black: its start)")
        axes[2].tick_params(axis="y", labelsize=7)
    fig.suptitle(f"What holds RL back on {results['task']} ({results['sft_run']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    import torch

    from mdlm import MDLMForMaskedLM
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.tasks import get_task

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", default="runs/sft-sudoku")
    parser.add_argument("--task", default="sudoku")
    parser.add_argument("--prompts", type=int, default=48, help="train prompts of the group-spread measurement")
    add_output_dir_argument(parser)
    parser.add_argument("--sections", nargs="+", default=["spread", "estimator"],
                        choices=["spread", "estimator", "runs", "rft", "shapes"])
    parser.add_argument("--trained", nargs="*", default=[], help="trained run folders of section 4 (shapes)")
    parser.add_argument("--asarm", default="runs/sft-sudoku-asarm", help="the SFT model continued as an AS-ARM")
    parser.add_argument("--rollouts", type=int, default=320, help="rollouts per RL run (section 3)")
    parser.add_argument("--eval-examples", type=int, default=192)
    parser.add_argument("--only", nargs="*", help="names of section-3 runs to do (default all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the section-3 runs (names get ' seed N')")
    parser.add_argument("--report", action="store_true", help="only redraw the tables and the plot from the JSON")
    args = parser.parse_args(argv)
    out_path = Path(args.output_dir) / f"{NAME}.json"
    if args.report:
        results = json.loads(out_path.read_text())
        ar_path = out_path.with_name(f"{out_path.stem}-ar.json")  # the AR control ran in its own process
        if ar_path.exists():
            results["ar_control"] = json.loads(ar_path.read_text())
            out_path.write_text(json.dumps(results, indent=1))
        plot(results, out_path.with_suffix(".png"))
        print(markdown_table(results))
        return
    torch.manual_seed(0)
    task = get_task(args.task)
    model, tok = MDLMForMaskedLM.from_pretrained(args.sft), load_tokenizer(args.sft)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.update(task=args.task, sft_run=args.sft, eval_examples=args.eval_examples)
    if "runs" in args.sections:
        results["rollouts"] = args.rollouts
    start = time.time()
    if "spread" in args.sections:
        with torch.no_grad():
            results["group_spread"] = group_spread(model, tok, task, task.dataset("train", args.prompts, 7),
                                                   [0.7, 1.0, 1.3], [4, 8, 16])
        print(json.dumps(results["group_spread"], indent=1), flush=True)
    if "estimator" in args.sections:
        results["estimator"] = estimator_alignment(model, tok, task, task.dataset("train", 8, 11), 4, 3)
        print(json.dumps(results["estimator"], indent=1), flush=True)
    if "shapes" in args.sections:
        with torch.no_grad():
            results["answer_shapes"] = answer_shapes([args.sft] + list(args.trained), task,
                                                     task.dataset("test", args.eval_examples))
        print(json.dumps({run: {k: v for k, v in r.items() if k != "shapes"} for run, r in
                          results["answer_shapes"].items()}, indent=1), flush=True)
    if "runs" in args.sections:
        starts = {"sft": args.sft, "asarm": args.asarm}
        results.setdefault("runs", {})
        for name, algorithm, start_model, changes in RUNS:
            if args.only and name not in args.only:
                continue
            key = name if args.seed == 0 else f"{name} seed {args.seed}"
            folder = runs_dir() / NAME / (name.split(" (")[0].replace(" ", "-").lower() +
                                          (f"-seed{args.seed}" if args.seed else ""))
            began = time.time()
            known = [r["accuracy_before"] for r in results["runs"].values()
                     if r["start"] == start_model and r["accuracy_before"] is not None]
            results["runs"][key] = one_change_run(name, algorithm, start_model, changes, args.rollouts, args.task,
                                                  starts, folder, args.eval_examples, seed=args.seed,
                                                  known_before=known[0] if known else None)
            results["runs"][key].update(wall_seconds=time.time() - began, seed=args.seed, change=name)
            print(key, json.dumps(results["runs"][key]), flush=True)
            out_path.write_text(json.dumps(results, indent=1))
    if "rft" in args.sections:
        from mdlm.train.rl.rft import rejection_sampling_finetune
        from mdlm.train.tasks import evaluate

        began = time.time()
        rft = rejection_sampling_finetune(args.sft, args.task, str(runs_dir() / NAME / "rft"), args.rollouts, 4,
                                          sft_options={"max_steps": 100, "lr": 1e-4, "batch_size": 16,
                                                       "warmup_steps": 10})
        if rft["run"]:
            held = task.dataset("test", args.eval_examples)
            tuned = MDLMForMaskedLM.from_pretrained(rft["run"])
            rft["accuracy_after"] = evaluate(tuned, tok, task, held)["accuracy"]
        rft["wall_seconds"] = time.time() - began
        results["rft"] = rft
        print("rft", json.dumps(rft), flush=True)
    results["wall_seconds_" + "_".join(args.sections)] = time.time() - start
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
