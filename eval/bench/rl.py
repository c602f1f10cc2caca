"""RL benchmark: every RL trainer and its controls at an equal rollout budget, from one SFT start.

    python -m mdlm.eval.bench.rl --task countdown --sft runs/sft-countdown --ar-base runs/ar-small \
        --output-dir results/rl-countdown-v3                          # -> rl.json, rl.png there
    python -m mdlm.eval.bench.rl --task sudoku --sft runs/sft-sudoku --quick    # smoke sizes -> results/quick/

The columns (METHODS), all at R rollouts per run (R / G prompts x G draws), the same train prompts (the
task's train split, seeded by the run seed) and the same held-out prompts, scored by each model's own
greedy decoder:

    sft          the start itself, and best-of-n of it (n draws per prompt, the highest reward kept)
    rft          rejection-sampling finetuning: SFT on its own reward-1 samples among the R
                 (`train/rl/rft.py`), a non-RL baseline that sharpens a policy toward its best-of-n
    ar-grpo      the autoregressive baseline of the same backbone, SFT-ed with the same recipe from the
                 causal pretrained run (`--ar-base`), trained by TRL's own, unmodified GRPOTrainer
                 (`train/rl/ar_control.py`)
    diffu-grpo   d1's one-pass log-prob estimate (Zhao et al. 2025)
    mdpo         MDPO (He et al. 2025)
    cj-grpo      CJ-GRPO (Yang et al. 2025)
    d2-anyorder  the exact trajectory likelihood (Wang et al. 2025), from the SFT model continued with
                 the any-subset AR objective (`train/rl/sft_objectives.py`)

Each (method, seed) is one unit with its own run folder and `record.json` (held-out accuracy before and
after, the rollout reward per generation and the held-out accuracy at every checkpoint, each against
rollouts and training wall time): a killed benchmark resumes where it stopped, and several processes may
share one folder (`--methods` / `--seeds` pick the units). Whoever finds every unit done writes the results;
`--assemble` only assembles. The AS-ARM and AR starts are trained on first use (`starts/` in the folder).

The learning rate of METHOD_OPTIONS was set after a seed-0 pilot scored on the held-out split (there is no
separate validation split), one value for every RL method.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

from mdlm.eval.bench.common import REPO_ROOT, add_output_dir_argument, quick_results_dir, runs_dir, write_results

NAME = "rl"
RL_METHODS = ("diffu-grpo", "mdpo", "cj-grpo", "d2-anyorder")
TRAINED = ("rft", "ar-grpo") + RL_METHODS
METHODS = ("sft",) + TRAINED
DIFFUSION = ("diffu-grpo", "mdpo", "cj-grpo", "d2-anyorder", "rft")
START = {"rft": "sft", "ar-grpo": "ar", "diffu-grpo": "sft", "mdpo": "sft", "cj-grpo": "sft", "d2-anyorder": "asarm"}

# Sizes shared by every method. FULL: R = 3,072 rollouts per run (48 generations of 8 prompts x G 8);
# QUICK is a smoke run.
FULL = dict(seeds=[0, 1, 2], rollouts=3072, batch=64, num_generations=8, eval_examples=512, curve_every=8,
            best_of_n=32)
QUICK = dict(seeds=[0, 1], rollouts=16, batch=8, num_generations=4, eval_examples=8, curve_every=2, best_of_n=2)
# Each method's own choices: passes per generation (mu), rollout decoder, learning rate. RFT: the SFT run on
# the kept samples (its optimizer steps equal diffu-GRPO's updates). One RL learning rate for every method:
# 1e-4, set after the seed-0 pilot at 3e-4 (diffu-GRPO and MDPO lost 4 points of held-out accuracy) and 1e-3
# (both diverged); the round-2 benchmark's sweeps had found 3e-5-1e-4 best.
METHOD_OPTIONS = {
    "diffu-grpo": dict(num_iterations=2, diffusion_steps=8, learning_rate=1e-4),
    "mdpo": dict(num_iterations=1, diffusion_steps=8, sample_train_steps=4, learning_rate=1e-4),
    "cj-grpo": dict(num_iterations=2, learning_rate=1e-4),
    "d2-anyorder": dict(num_iterations=2, learning_rate=1e-4),
    "ar-grpo": dict(num_iterations=2, learning_rate=1e-4),
    "rft": dict(lr=3e-4, batch_size=32, warmup_steps=5),
}
# The AS-ARM continuation of the SFT model (d2-AnyOrder's start): the recipe of docs/rl.md.
ASARM_RECIPE = dict(max_steps=300, lr=5e-4, warmup_steps=20, batch_size=32, ema=0.99)


def mean_se(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return {"mean": mean, "se": se, "n": n}


def pass_at_k(correct: list[list[float]]) -> float:
    return sum(any(c[j] for c in correct) for j in range(len(correct[0]))) / len(correct[0])


def best_of_n(rewards, correct) -> float:
    """Accuracy of the highest-reward sample per prompt (the first on ties)."""
    hits = 0
    for j in range(len(rewards[0])):
        best = max(range(len(rewards)), key=lambda i: rewards[i][j])
        hits += bool(correct[best][j])
    return hits / len(rewards[0])


def sample_many(model, tok, task, held, length: int, n: int, seed: int, batch_size: int = 64):
    """n samples per held-out prompt (L/2-step confidence decoder, temperature 1, the rollout decoder):
    (rewards, correct), each a list of n lists."""
    from mdlm.decode.config import DecodeConfig
    from mdlm.train.tasks import complete

    rewards, correct = [], []
    prompts, columns = list(held["prompt"]), {k: list(held[k]) for k in task.columns}
    for i in range(n):
        config = DecodeConfig(steps=length // 2, temperature=1.0, seed=seed * 1000 + i)
        texts = complete(model, tok, prompts, length, config, batch_size)
        rewards.append(task.reward(prompts, texts, None, **columns))
        correct.append(task.accuracy(texts, **columns))
    return rewards, correct


def fifths(rewards: list[float]) -> tuple[float, float]:
    """The mean rollout reward of the first and of the last fifth of generations (one generation alone is a
    few prompts: too noisy to compare)."""
    fifth = max(1, len(rewards) // 5)
    return sum(rewards[:fifth]) / fifth, sum(rewards[-fifth:]) / fifth


# -- the starts ------------------------------------------------------------------------------------------------

def ensure_start(kind: str, sft: Path, ar_base: Path | None, folder: Path, given: dict | None = None) -> Path:
    """The run a method starts from: the SFT run itself, its AS-ARM continuation, or the AR baseline SFT-ed
    with the SFT run's own recipe (its run_options.yaml) from the causal pretrained `ar_base` (from scratch
    when the SFT run was). Trained once, under `folder/starts/`, and resumed when a benchmark was killed
    while training it; `given` maps a kind to a run to use as it is (--asarm, --ar-sft)."""
    import yaml

    from mdlm.eval.bench.common import is_finished
    from mdlm.train.rl.sft_objectives import finetune_with_objective

    if kind == "sft":
        return sft
    if (given or {}).get(kind):
        return Path(given[kind])
    out = folder / "starts" / kind
    if is_finished(out) or _reached_its_stop(out):
        return out
    resume = {"resume": "latest"} if (out / "checkpoints").is_dir() else {"overwrite": True}
    if kind == "asarm":
        options = {**ASARM_RECIPE, "task": _task_of(sft), "model": str(sft), "output_dir": str(out), **resume}
        return finetune_with_objective(options, "as-arm")
    if ar_base is None:
        raise SystemExit("ar-grpo needs --ar-base: the causal pretrained run of the same backbone (mdlm-pretrain "
                         "--objective ar), which is SFT-ed with the SFT run's own recipe")
    recipe = yaml.safe_load((sft / "run_options.yaml").read_text())
    keep = ("task", "max_steps", "stop_at_step", "batch_size", "lr", "min_lr_ratio", "weight_decay", "warmup_steps",
            "grad_clip", "ema", "seed", "loss", "data", "prompt_column", "response_column", "max_examples")
    options = {k: recipe[k] for k in keep if recipe.get(k) is not None}
    if recipe.get("preset"):
        options.update(preset=recipe["preset"], hidden_size=recipe.get("hidden_size"),
                       num_hidden_layers=recipe.get("num_hidden_layers"))
    else:
        options["model"] = str(ar_base)
    return finetune_with_objective({**options, "output_dir": str(out), "progress": False, **resume}, "ar")


def _reached_its_stop(run: Path) -> bool:
    """A run that ended at its recipe's --stop-at-step (early in a longer schedule, so not "finished")."""
    import yaml

    if not (run / "trainer_state.json").is_file() or not (run / "run_options.yaml").is_file():
        return False
    stop = yaml.safe_load((run / "run_options.yaml").read_text()).get("stop_at_step")
    return stop is not None and json.loads((run / "trainer_state.json").read_text())["step"] >= stop


def _task_of(run: Path) -> str:
    import yaml

    return yaml.safe_load((run / "run_options.yaml").read_text())["task"]


# -- one unit: a method at a seed --------------------------------------------------------------------------------

def run_unit(method: str, seed: int, sizes: dict, options: dict, start: Path, task_name: str, folder: Path) -> dict:
    """Train `method` at `seed` from `start` with `options` (every method's, as METHOD_OPTIONS); returns its
    record, which is also written to `folder/record.json` (a finished unit is read back, not rerun)."""
    done = folder / "record.json"
    if done.exists():
        return json.loads(done.read_text())
    began = time.time()
    if method in RL_METHODS:
        record = _diffusion_rl_unit(method, seed, sizes, options[method], start, task_name, folder)
    elif method == "ar-grpo":
        record = _ar_grpo_unit(seed, sizes, options["ar-grpo"], start, task_name, folder)
    elif method == "rft":
        record = _rft_unit(seed, sizes, options, start, task_name, folder)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(TRAINED)}")
    record.update(method=method, seed=seed, start=str(start), wall_seconds=time.time() - began)
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(record, indent=1))
    return record


def updates_of(sizes: dict, options: dict) -> int:
    """Optimizer steps of a run of R rollouts: R / (rollouts per generation) generations, mu passes each."""
    return sizes["rollouts"] * options["num_iterations"] // sizes["batch"]


def _rl_argv(method, seed, sizes, options, start, task_name, folder) -> list[str]:
    """The `mdlm-rl` command line of one diffusion RL unit (without --resume / --overwrite)."""
    steps = updates_of(sizes, options)
    save_every = max(1, sizes["curve_every"] * options["num_iterations"])
    argv = ["--algorithm", method, "--task", task_name, "--model", str(start), "--output-dir", str(folder),
            "--seed", str(seed), "--max-steps", str(steps), "--num-generations", str(sizes["num_generations"]),
            "--per-device-train-batch-size", str(sizes["batch"]), "--save-steps", str(save_every),
            "--eval-examples", str(sizes["eval_examples"]), "--no-progress", "--temperature", "1.0"]
    for key, value in options.items():
        if isinstance(value, bool):  # a switch
            argv += ["--" + key.replace("_", "-")] if value else []
        else:
            argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def check_method_options(methods, sizes: dict, options: dict, task_name: str) -> None:
    """Build each diffusion RL method's config from the options its units will run with, before anything is
    trained or evaluated: a bad `--set` stops here in one line, not after the baselines and the starts."""
    from mdlm.train.rl.cli import build_config, build_parser, resolve_options
    from mdlm.train.tasks import get_task

    length = get_task(task_name).max_completion_length
    for method in methods:
        if method not in RL_METHODS:
            continue
        argv = _rl_argv(method, 0, sizes, options[method], Path("start"), task_name, Path("unused"))
        try:
            with warnings.catch_warnings():  # a departure's warning is the unit's to give, when it runs
                warnings.simplefilter("ignore")
                _, config_options, config_cls, _ = resolve_options(vars(build_parser().parse_args(argv)))
                config = build_config(config_cls, Path("unused"), {"max_completion_length": length, **config_options})
                config.decode_config()  # the rollout decoder's own checks
        except (ValueError, TypeError) as error:
            raise SystemExit(f"{method}: {error} (the options of its units: {options[method]}; change them with "
                             f"--set {method}.OPTION=VALUE)") from None


def _diffusion_rl_unit(method, seed, sizes, options, start, task_name, folder) -> dict:
    from mdlm import MDLMForMaskedLM
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.rl import get_algorithm
    from mdlm.train.rl.cli import build_parser, run
    from mdlm.train.tasks import evaluate, get_task

    steps = updates_of(sizes, options)
    argv = _rl_argv(method, seed, sizes, options, start, task_name, folder)
    argv += ["--resume"] if (folder / "trainer_state.json").exists() or any(folder.glob("checkpoint-*")) \
        else ["--overwrite"]
    run(vars(build_parser().parse_args(argv)))
    evaluation = json.loads((folder / "eval.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    mu = options["num_iterations"]
    drawn = lambda step: math.ceil(step / mu) * sizes["batch"]  # noqa: E731  rollouts drawn by the end of `step`
    elapsed, seconds_at = 0.0, {}
    for r in rows:
        elapsed += r.get("step_time", 0.0)
        seconds_at[r["step"]] = elapsed
    rolled = [r for r in rows if "reward" in r]
    reward_curve = [{"rollouts": drawn(r["step"]), "seconds": seconds_at[r["step"]], "reward": r["reward"]}
                    for r in rolled]
    task = get_task(task_name)
    held = task.dataset("test", sizes["eval_examples"])
    _, trainer_cls = get_algorithm(method)
    tok = load_tokenizer(str(start))
    length = task.max_completion_length
    accuracy_curve = []
    for checkpoint in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(checkpoint.name.split("-")[1])
        if step == steps:
            continue  # the final model: eval.json's "after"
        policy = MDLMForMaskedLM.from_pretrained(checkpoint)
        accuracy = evaluate(policy, tok, task, held, trainer_cls.evaluation_config(length), completion_length=length)
        accuracy_curve.append({"rollouts": drawn(step), "seconds": seconds_at.get(step, 0.0),
                               "accuracy": accuracy["accuracy"]})
    accuracy_curve.append({"rollouts": sizes["rollouts"], "seconds": elapsed, "accuracy": evaluation["after"]["accuracy"]})
    first, last = fifths([r["reward"] for r in rolled])
    mean = lambda key: sum(r.get(key, 0.0) for r in rows) / len(rows)  # noqa: E731
    return {"accuracy_before": evaluation["before"]["accuracy"], "accuracy_after": evaluation["after"]["accuracy"],
            "updates": steps, "train_seconds": elapsed, "reward_curve": reward_curve, "accuracy_curve": accuracy_curve,
            "reward_first_fifth": first, "reward_last_fifth": last, "kl_final": rows[-1].get("kl", 0.0),
            "zero_spread_groups": mean("frac_reward_zero_std"), "seconds_per_update": mean("step_time"),
            "options": options}


def _ar_grpo_unit(seed, sizes, options, start, task_name, folder) -> dict:
    from mdlm.train.rl.ar_control import run_ar_grpo

    result = run_ar_grpo(str(start), task_name, str(folder), rollouts=sizes["rollouts"],
                         num_generations=sizes["num_generations"], batch=sizes["batch"],
                         num_iterations=options["num_iterations"], learning_rate=options["learning_rate"],
                         seed=seed, eval_examples=sizes["eval_examples"])
    final = {"rollouts": sizes["rollouts"], "seconds": result["train_seconds"], "accuracy": result["accuracy_after"]}
    return {**result, "accuracy_curve": [final], "reward_first_fifth": result["rollout_reward_first_fifth"],
            "reward_last_fifth": result["rollout_reward_last_fifth"], "options": options}


def _rft_unit(seed, sizes, every_options, start, task_name, folder) -> dict:
    from mdlm import MDLMForMaskedLM
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.rl.rft import rejection_sampling_finetune
    from mdlm.train.tasks import evaluate, get_task

    options = every_options["rft"]
    # as many optimizer steps as diffu-GRPO takes from the same rollouts
    steps = updates_of(sizes, every_options["diffu-grpo"])
    began = time.time()
    result = rejection_sampling_finetune(str(start), task_name, str(folder / "sft"), sizes["rollouts"],
                                         sizes["num_generations"], seed=seed,
                                         sft_options={**options, "max_steps": steps, "eval_every": steps,
                                                      "save_every": steps, "progress": False})
    seconds = time.time() - began
    task = get_task(task_name)
    held = task.dataset("test", sizes["eval_examples"])
    tok = load_tokenizer(str(start))
    before = evaluate(MDLMForMaskedLM.from_pretrained(start), tok, task, held)["accuracy"]
    after = before if result["run"] is None else \
        evaluate(MDLMForMaskedLM.from_pretrained(result["run"]), tok, task, held)["accuracy"]
    return {"accuracy_before": before, "accuracy_after": after, "updates": steps, "train_seconds": seconds,
            "kept": result["kept"], "samples": result["samples"], "reward_curve": [],
            "accuracy_curve": [{"rollouts": sizes["rollouts"], "seconds": seconds, "accuracy": after}],
            "options": {**options, "max_steps": steps}}


# -- results -----------------------------------------------------------------------------------------------------

def summarise(results: dict) -> dict:
    """Per method: held-out accuracy after, the gain over its own start (mean ± s.e. over seeds), the rollout
    reward's first and last fifth; and the issue's target checks."""
    per_method = {}
    for method, records in results["units"].items():
        gains = [r["accuracy_after"] - r["accuracy_before"] for r in records]
        stat = {"start": mean_se([r["accuracy_before"] for r in records]),
                "after": mean_se([r["accuracy_after"] for r in records]), "gain": mean_se(gains),
                "minutes_per_seed": sum(r["wall_seconds"] for r in records) / len(records) / 60}
        for key in ("reward_first_fifth", "reward_last_fifth", "kl_final", "zero_spread_groups", "seconds_per_update"):
            if all(key in r for r in records):
                stat[key] = mean_se([r[key] for r in records])
        per_method[method] = stat
    targets = {}

    def ten_points(method):
        stat = per_method.get(method)
        if stat is None or stat["gain"]["n"] < 3:
            return None
        gain, se = stat["gain"]["mean"], stat["gain"]["se"]
        return {"gain_points": 100 * gain, "se_points": 100 * se, "met": gain >= 0.10 and gain > 3 * se}

    for method in ("mdpo", "cj-grpo"):
        if ten_points(method) is not None:
            targets[f"{method}: +10 points over its SFT start, gain > 3 s.e."] = ten_points(method)
        elif method in per_method:  # fewer than the 3 seeds the target is stated for
            targets[f"{method}: +10 points over its SFT start, gain > 3 s.e."] = {
                "met": None, "seeds": per_method[method]["gain"]["n"]}
    diffusion = {m: ten_points(m) for m in RL_METHODS if ten_points(m) is not None}
    if diffusion:
        targets["some diffusion RL method: +10 points, gain > 3 s.e."] = {
            "met": any(v["met"] for v in diffusion.values()),
            "methods": [m for m, v in diffusion.items() if v["met"]]}
    return {"per_method": per_method, "targets": targets}


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _pm(stat: dict, scale: float = 100, digits: int = 1, sign: bool = False) -> str:
    value = f"{scale * stat['mean']:{'+' if sign else ''}.{digits}f}"
    if stat["n"] < 2 or math.isnan(stat["se"]):
        return value
    return f"{value} ± {scale * stat['se']:.{digits}f}"


LABELS = {"rft": "RFT (control)", "ar-grpo": "AR + TRL GRPOTrainer (control)", "diffu-grpo": "diffu-GRPO",
          "mdpo": "MDPO", "cj-grpo": "CJ-GRPO", "d2-anyorder": "d2-AnyOrder (exact likelihood)"}


def markdown_table(results: dict) -> str:
    if results.get("format") != 3:  # the round-2 benchmark's files
        from mdlm.eval.bench.rl_round2 import markdown_table as round2_table

        return round2_table(results)
    sizes, summary = results["sizes"], results["summary"]["per_method"]
    lines = [f"Held-out {results['task']} accuracy ({results['eval_examples']} held-out prompts, each model's own "
             f"greedy decoder; mean ± s.e. over seeds; R = {sizes['rollouts']} rollouts per run, G = "
             f"{sizes['num_generations']}, {sizes['batch']} rollouts per generation; SFT start "
             f"`{results['sft_run']}`):", "",
             "| method | start | held-out after | gain over its start (points) | gain / s.e. | rollout reward, first "
             "-> last fifth | KL (last) | zero-spread groups | s / update | min / seed | lr |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines.append(f"| SFT | | {100 * results['sft']['accuracy']:.1f}% | | | | | | | | |")
    bon = results["best_of_n"]
    lines.append(f"| SFT best-of-{bon['n']} (reward-selected) | | {100 * bon['accuracy']:.1f}% | | | | | | | | |")
    for method in TRAINED:
        if method not in summary:
            continue
        stat = summary[method]
        gain = stat["gain"]
        ratio = gain["mean"] / gain["se"] if gain["n"] > 1 and gain["se"] > 0 else float("nan")
        reward = (f"{stat['reward_first_fifth']['mean']:.3f} -> {stat['reward_last_fifth']['mean']:.3f}"
                  if "reward_first_fifth" in stat else "")
        cells = [f"{LABELS[method]} ({_seeds(stat['after']['n'])})", f"{100 * stat['start']['mean']:.1f}%",
                 _pm(stat["after"]) + "%", _pm(gain, sign=True), "" if math.isnan(ratio) else f"{ratio:.1f}", reward,
                 f"{stat['kl_final']['mean']:.3f}" if "kl_final" in stat else "",
                 f"{100 * stat['zero_spread_groups']['mean']:.0f}%" if "zero_spread_groups" in stat else "",
                 f"{stat['seconds_per_update']['mean']:.2f}" if "seconds_per_update" in stat else "",
                 f"{stat['minutes_per_seed']:.1f}", f"{_lr(results, method):g}"]
        lines.append("| " + " | ".join(cells) + " |")
    if results.get("one_change"):
        lines += ["", "One-change runs (seed 0, same sizes; each changes the named option of its method):", "",
                  "| method | change | held-out before -> after | curve (rollouts: accuracy) | rollout reward, first -> "
                  "last fifth | KL (last) |", "| --- | --- | --- | --- | --- | --- |"]
        for r in results["one_change"]:
            curve = ", ".join(f"{p['rollouts']:g}: {100 * p['accuracy']:.1f}" for p in r["accuracy_curve"])
            change = ", ".join(f"{k} {v}" for k, v in r["change"].items()) or "none"
            lines.append(f"| {LABELS[r['method']]} | {change} | {100 * r['accuracy_before']:.1f}% -> "
                         f"{100 * r['accuracy_after']:.1f}% | {curve} | {r.get('reward_first_fifth', 0):.3f} -> "
                         f"{r.get('reward_last_fifth', 0):.3f} | {r.get('kl_final', 0):.3f} |")
    if results.get("not_finished"):
        lines += ["", "Not finished (not in the table): " + ", ".join(results["not_finished"]) + "."]
    lines += ["", "Targets: " + ("; ".join(f"{name}: " + ("met" if v["met"] else "not met" if v["met"] is not None
                                                         else f"not checked ({_seeds(v['seeds'])})")
                                           for name, v in results["summary"]["targets"].items()) or "none checked"), ""]
    return "\n".join(lines) + "\n"


def _lr(results: dict, method: str) -> float:
    """The learning rate the method's runs used (each record keeps its options)."""
    options = results["units"][method][0].get("options") or results["method_options"][method]
    return options.get("learning_rate", options.get("lr"))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    sft = results["sft"]["accuracy"]
    for i, method in enumerate(TRAINED):
        for j, record in enumerate(results["units"].get(method, [])):
            kwargs = dict(color=f"C{i}", alpha=0.8, lw=1.2, label=LABELS[method] if j == 0 else None)
            points = [{"rollouts": 0, "seconds": 0.0, "accuracy": record["accuracy_before"]}] + record["accuracy_curve"]
            for ax, key in ((axes[0][0], "rollouts"), (axes[0][1], "seconds")):
                ax.plot([p[key] / (60 if key == "seconds" else 1) for p in points], [100 * p["accuracy"] for p in points],
                        marker="o", ms=2.5, **kwargs)
            curve = record["reward_curve"]
            window = max(1, len(curve) // 8)
            smooth = [sum(p["reward"] for p in curve[max(0, k - window + 1):k + 1]) / len(curve[max(0, k - window + 1):k + 1])
                      for k in range(len(curve))]
            for ax, key in ((axes[1][0], "rollouts"), (axes[1][1], "seconds")):
                ax.plot([p[key] / (60 if key == "seconds" else 1) for p in curve], smooth, **kwargs)
    for ax in axes[0]:
        ax.axhline(100 * sft, color="gray", ls="--", lw=1, label="SFT start")
        ax.set_ylabel("held-out accuracy, % (own greedy decoder)")
    for ax in axes[1]:
        ax.set_ylabel("rollout reward (running mean)")
    for ax in (axes[0][0], axes[1][0]):
        ax.set_xlabel("rollouts")
    for ax in (axes[0][1], axes[1][1]):
        ax.set_xlabel("training wall time, minutes (one core)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"RL on {results['task']}: R = {results['sizes']['rollouts']} rollouts per run, "
                 f"{len(results['sizes']['seeds'])} seeds (one line each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def baselines(sft: Path, task_name: str, sizes: dict, folder: Path) -> dict:
    """The SFT start's held-out greedy accuracy and its reward-selected best-of-n (cached in the folder)."""
    from mdlm.train.rl.cli import load_policy
    from mdlm.train.tasks import evaluate, get_task

    done = folder / "baselines.json"
    if done.exists():
        return json.loads(done.read_text())
    task = get_task(task_name)
    held = task.dataset("test", sizes["eval_examples"])
    model, tok = load_policy(str(sft))
    length = task.max_completion_length
    out = {"sft": {"accuracy": evaluate(model, tok, task, held, completion_length=length)["accuracy"]}}
    rewards, correct = sample_many(model, tok, task, held, length, sizes["best_of_n"], seed=1)
    out["best_of_n"] = {"n": sizes["best_of_n"], "accuracy": best_of_n(rewards, correct),
                        "pass_at_n": pass_at_k(correct)}
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(out, indent=1))
    return out


def assemble(folder: Path, sizes: dict, options: dict, task_name: str, sft: Path, results_dir: Path,
             methods, one_change=(), require_all: bool = True) -> dict | None:
    """The results from the finished units in `folder`, when every seed of `methods` and of every method begun
    there (by another process sharing the folder) is done; else None. Without `require_all` (--assemble),
    from whatever is finished, each method with the seeds it has (the missing units are named)."""
    base = folder / "baselines.json"
    methods = [m for m in TRAINED if m in methods or any(folder.glob(f"{m}-seed*"))]
    # a seed another process runs (--seeds split over processes) counts too
    begun = {int(path.name.rsplit("-seed", 1)[1]) for m in methods for path in folder.glob(f"{m}-seed*")
             if path.name.rsplit("-seed", 1)[1].isdigit()}
    sizes = {**sizes, "seeds": sorted(set(sizes["seeds"]) | begun)}
    units = {m: [json.loads((folder / f"{m}-seed{s}" / "record.json").read_text()) for s in sizes["seeds"]
                 if (folder / f"{m}-seed{s}" / "record.json").exists()] for m in methods}
    missing = [f"{m} seed {s}" for m in methods for s in sizes["seeds"]
               if not (folder / f"{m}-seed{s}" / "record.json").exists()]
    if not require_all and base.exists() and any(units.values()):
        if missing:
            print(f"--assemble: without {', '.join(missing)} (not finished)", flush=True)
    elif missing or not base.exists():
        print(f"{len(missing)} unit(s) to go ({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''})"
              + ("" if base.exists() else "; the baselines are not measured yet"), flush=True)
        return None
    results = {"format": 3, "task": task_name, "sft_run": str(sft), "sizes": sizes,
               "eval_examples": sizes["eval_examples"], "method_options": options,
               **json.loads(base.read_text()), "units": {m: r for m, r in units.items() if r}}
    results["summary"] = summarise(results)
    results["one_change"] = [one_change_record(Path(unit), options) for unit in one_change]
    results["not_finished"] = missing
    return write_results(results_dir, NAME, results, plot, markdown_table)


def one_change_record(unit: Path, options: dict) -> dict:
    """A finished unit run elsewhere with `--set` (its record), with the options that differ from the
    benchmark's own."""
    record = json.loads((unit / "record.json").read_text())
    own = options[record["method"]]
    record["change"] = {k: v for k, v in record.get("options", {}).items() if own.get(k) != v}
    record["unit"] = str(unit)
    return {k: v for k, v in record.items() if k != "reward_curve"}


def add_size_arguments(parser) -> None:
    """The size flags every RL benchmark shares (resolved by `resolved_sizes`)."""
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--rollouts", type=int, help="override R, the rollouts per run")
    parser.add_argument("--batch", type=int, help="override the rollouts per generation (prompts x G)")
    parser.add_argument("--num-generations", dest="num_generations", type=int, help="override G, rollouts per prompt")
    parser.add_argument("--eval-examples", dest="eval_examples", type=int, help="override the held-out prompts")


def resolved_sizes(args, defaults: dict, extra: tuple[str, ...] = ()) -> dict:
    """`defaults` with the size flags given (those of `add_size_arguments` and the benchmark's `extra` ones),
    checked: each generation must hold whole groups."""
    sizes = dict(defaults)
    for key in ("seeds", "rollouts", "batch", "num_generations", "eval_examples") + extra:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if sizes["batch"] % sizes["num_generations"] or sizes["num_generations"] < 2:
        raise SystemExit(f"--batch {sizes['batch']} must be a multiple of --num-generations {sizes['num_generations']} "
                         "(at least 2): each generation holds whole groups")
    return sizes


def method_options(overrides: list[str]) -> dict:
    """METHOD_OPTIONS with `METHOD.OPTION=VALUE` items applied (a number where the value reads as one)."""
    options = {method: dict(values) for method, values in METHOD_OPTIONS.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        method, dot, option = key.partition(".")
        if not (sep and dot and method in METHOD_OPTIONS and option):
            raise SystemExit(f"--set {item}: expected METHOD.OPTION=VALUE with METHOD one of "
                             f"{', '.join(METHOD_OPTIONS)} (e.g. diffu-grpo.learning_rate=1e-3)")
        options[method][option] = _number_or_text(value)
    return options


def _number_or_text(value: str):
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", type=Path, default=REPO_ROOT / "runs" / "sft-countdown")
    parser.add_argument("--task", default=None, help="default: the SFT run's task")
    parser.add_argument("--ar-base", dest="ar_base", type=Path, default=None,
                        help="the causal pretrained run the AR control is SFT-ed from (when --sft was SFT-ed from a "
                             "pretrained run); an --sft trained from scratch gives an AR trained from scratch")
    parser.add_argument("--asarm", type=Path, default=None, help="d2-AnyOrder's start as it is (default: the SFT "
                        "run continued with the as-arm objective, trained on first use)")
    parser.add_argument("--ar-sft", dest="ar_sft", type=Path, default=None,
                        help="the AR control's start as it is (default: trained on first use, see --ar-base)")
    parser.add_argument("--quick", action="store_true", help="smoke sizes, written under results/quick/")
    parser.add_argument("--methods", nargs="*", default=list(TRAINED), choices=TRAINED,
                        help="the trained columns to run (this process's share of the units)")
    add_size_arguments(parser)
    parser.add_argument("--curve-every", dest="curve_every", type=int, help="a curve point every N generations")
    parser.add_argument("--best-of-n", dest="best_of_n", type=int, help="n of the SFT best-of-n")
    parser.add_argument("--run-folder", dest="run_folder", type=Path,
                        help="where the units live (default: $MDLM_BENCH_RUNS/rl-TASK)")
    parser.add_argument("--assemble", action="store_true",
                        help="only write the results from the finished units of the run folder")
    parser.add_argument("--one-change", dest="one_change", nargs="*", type=Path, default=[], metavar="UNIT",
                        help="finished unit folders of one-change runs (--set, another --run-folder) to list beside")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="METHOD.OPTION=VALUE",
                        help="change one of a method's options (e.g. diffu-grpo.learning_rate=1e-3): a one-change "
                             "run; use its own --run-folder")
    add_output_dir_argument(parser)
    args = parser.parse_args(argv)
    options = method_options(args.overrides)
    sizes = resolved_sizes(args, QUICK if args.quick else FULL, ("curve_every", "best_of_n"))
    if not (args.sft / "config.json").is_file():
        raise SystemExit(f"--sft {args.sft}: no SFT run there; train one with the recipe of docs/finetuning.md "
                         "(python train/sft.py --task countdown ... --output-dir runs/sft-countdown)")
    task_name = args.task or _task_of(args.sft)
    results_dir = quick_results_dir(args.output_dir, args.quick)
    folder = args.run_folder or runs_dir() / (f"rl-{task_name}" + ("-quick" if args.quick else ""))
    if not args.assemble:
        check_method_options(args.methods, sizes, options, task_name)
        baselines(args.sft, task_name, sizes, folder)
        for method in args.methods:
            start = ensure_start(START[method], args.sft, args.ar_base, folder, {"asarm": args.asarm, "ar": args.ar_sft})
            for seed in sizes["seeds"]:
                record = run_unit(method, seed, sizes, options, start, task_name, folder / f"{method}-seed{seed}")
                print(json.dumps({k: record[k] for k in ("method", "seed", "accuracy_before", "accuracy_after",
                                                         "wall_seconds")}), flush=True)
    return assemble(folder, sizes, options, task_name, args.sft, results_dir, () if args.assemble else args.methods,
                    args.one_change, require_all=not args.assemble)


if __name__ == "__main__":
    from mdlm.decode.cli_errors import run_main

    run_main("mdlm.eval.bench.rl", main)
