"""RL finetuning of a masked diffusion LM on a verifiable task (the `mdlm-rl` command, `train/rl.py`).

    accelerate launch train/rl.py --algorithm diffu-grpo --task sudoku --model runs/sft-sudoku \
        --output-dir runs/rl-sudoku
    mdlm-rl --algorithm mdpo --task sudoku --model runs/sft-sudoku --sample-train-steps 4
    mdlm-rl --algorithm cj-grpo --task sudoku --model runs/sft-sudoku     # ascending schedule + EOSER
    mdlm-rl --algorithm diffu-grpo --task countdown --model runs/sft-countdown --config-file rl.yaml
    torchrun --nproc_per_node 2 train/rl.py ...          # two processes train one model (gloo on CPU)

Options are layered: the algorithm's config defaults < a YAML file (`--config-file`; any field of the
algorithm's config, i.e. every TRL GRPOConfig field, plus the options below) < the command line. The
run folder gets run_options.yaml, metrics.jsonl (one line per logging step, flushed as written),
reward_curve.png, TRL checkpoints (checkpoint-N, every `save_steps`), and at the end the model and
tokenizer (safetensors; loads with AutoModelForMaskedLM, works in mdlm-generate / mdlm-eval) and
eval.json: the held-out accuracy before and after RL (greedy confidence decoding), then
trainer_state.json with `"finished": true`. `--resume` continues a killed run from its last complete
checkpoint; a finished run is not trained again. The folder is held for the whole run with pretraining's
guarantees (`train/run_folder.py`: the lock, atomic writes, tampered checkpoints refused unread; see
docs/reliability.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import yaml

from mdlm.train.run_folder import (METRICS_FILE, OPTIONS_FILE, STATE_FILE, MetricsLog, RunFolder, atomic_write_text,
                                   quiet_transformers_progress, read_state, refuse_pickled, save_errors_named,
                                   write_state)

CURVE_FILE = "reward_curve.png"
EVAL_FILE = "eval.json"
CHECKPOINT_DONE = "checkpoint_complete"  # written last into a checkpoint folder
ROLLOUT_RNG_FILE = "rollout_rng_{}.pt"  # per process
# The run folder (train/run_folder.py) with RL's files: what an overwritten run's clearing removes, and what
# marks a folder as holding a run (a checkpoint, the final model, or the evaluation before training).
RUN_FILES = (STATE_FILE, OPTIONS_FILE, METRICS_FILE, CURVE_FILE, EVAL_FILE, "checkpoint-*")
SAVED_FILES = (STATE_FILE, "checkpoint-*", "model.safetensors", EVAL_FILE)

# Options of this script (not of the trainer's config), with their defaults.
SCRIPT_OPTIONS = {"algorithm": "diffu-grpo", "task": None, "model": None, "output_dir": None, "resume": False,
                  "train_examples": 2000, "eval_examples": None, "eval_before": True, "config_file": None,
                  "overwrite": False, "progress": True, "family": None, "trust_remote_code": False,
                  "lora_r": None, "lora_alpha": None, "lora_target": None}
# Command-line shortcuts for the config fields people change most (all others: --config-file).
CONFIG_FLAGS = {"num_generations": int, "per_device_train_batch_size": int, "gradient_accumulation_steps": int,
                "max_steps": int, "learning_rate": float, "beta": float, "epsilon": float, "num_iterations": int,
                "max_completion_length": int, "temperature": float, "diffusion_steps": int, "block_length": int,
                "remasking": str, "unmasking_schedule": str, "logging_steps": int, "save_steps": int,
                "seed": int, "report_to": str, "prompt_mask_prob": float, "sample_train_steps": int,
                "positive_advantages_only": "bool"}
# Ranges of the options (as `train/options.py` declares them). Three of the zeros refused here meant a
# default elsewhere, so each error says which: HINTS.
RANGES = {**{name: {"at_least": 1} for name in ("max_steps", "diffusion_steps", "train_examples", "eval_examples",
                                                "per_device_train_batch_size", "gradient_accumulation_steps",
                                                "num_iterations", "max_completion_length", "block_length",
                                                "logging_steps", "save_steps", "sample_train_steps")},
          "learning_rate": {"above": 0}, "beta": {"at_least": 0}, "epsilon": {"at_least": 0},
          "seed": {"at_least": 0}, "prompt_mask_prob": {"at_least": 0, "below": 1}}
HINTS = {"max_steps": " (TRL reads 0 or less as 'train num_train_epochs epochs'); pass the optimizer steps to train",
         "diffusion_steps": " (0 would fall back to max_completion_length // 2 denoising steps); pass the steps "
                            "of a rollout, or leave it unset for that default",
         "train_examples": " (0 would mean all of them); pass how many train prompts to use",
         "eval_examples": "; pass how many held-out prompts to score, or leave it unset for all of them"}
# --report-to integrations and the module each needs.
INTEGRATIONS = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow", "comet_ml": "comet_ml",
                "trackio": "trackio", "swanlab": "swanlab", "clearml": "clearml", "neptune": "neptune"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--algorithm", help="diffu-grpo (default) | mdpo | cj-grpo | d2-anyorder")
    parser.add_argument("--task", help="sudoku | countdown | signatures")
    parser.add_argument("--model", help="the model to finetune: a run folder (e.g. runs/sft-sudoku) or a public "
                        "diffusion LM's folder or hub name (LLaDA, Dream, SDAR, ...)")
    parser.add_argument("--family", help="the --model's family (default: detected from its config)")
    parser.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true",
                        help="run the modeling code shipped with a --model of a family without a native implementation")
    parser.add_argument("--lora-r", dest="lora_r", type=int, help="LoRA rank: train adapters only; the reference "
                        "policy is the base with the adapter off (no second copy)")
    parser.add_argument("--lora-alpha", dest="lora_alpha", type=float, help="LoRA scale numerator (default 2 x rank)")
    parser.add_argument("--lora-target", dest="lora_target", help="comma-separated linear layer names LoRA adapts, "
                        "or all-linear (default: the family's attention and MLP projections)")
    parser.add_argument("--output-dir", dest="output_dir", help="default runs/rl-<task>")
    parser.add_argument("--config-file", dest="config_file", help="YAML of options (any config field)")
    parser.add_argument("--train-examples", dest="train_examples", type=int, help="train prompts (default 2000)")
    parser.add_argument("--eval-examples", dest="eval_examples", type=int, help="held-out prompts (default all)")
    parser.add_argument("--no-eval-before", dest="eval_before", action="store_false",
                        help="skip the held-out evaluation before training")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --output-dir")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    for name, kind in CONFIG_FLAGS.items():
        if kind == "bool":  # a switch: --positive-advantages-only
            parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true")
        else:
            parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)
    return parser


def resolve_options(given: dict) -> tuple[dict, dict, type, type]:
    """(script options, config options, config class, trainer class) from the YAML file and the CLI."""
    from mdlm.train.rl import get_algorithm

    from mdlm.train.options import read_config_file

    options = {}
    if given.get("config_file"):
        options = read_config_file(given["config_file"])
    options = {str(k).replace("-", "_"): v for k, v in {**options, **given}.items()}
    script = {k: options.pop(k, default) for k, default in SCRIPT_OPTIONS.items()}
    config_cls, trainer_cls = get_algorithm(script["algorithm"])
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}: neither an option of train/rl.py ({sorted(SCRIPT_OPTIONS)}) "
                         f"nor a field of {config_cls.__name__}")
    if not script["task"]:
        from mdlm.train.tasks import TASKS

        raise ValueError(f"--task is required; choose one of {', '.join(TASKS)}")
    if not script["model"]:
        raise ValueError("--model is required: the run folder to finetune (e.g. runs/sft-sudoku from train/sft.py)")
    script["output_dir"] = script["output_dir"] or f"runs/rl-{script['task']}"
    check_options(script, options, config_cls)
    return script, options, config_cls, trainer_cls


def annotation_name(annotation) -> str:
    """"int", "float | None", ... for a dataclass field's annotation; "" where it is not one plain type."""
    import types
    import typing

    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    args = typing.get_args(annotation)
    plain = [a for a in args if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if len(plain) == 1 and isinstance(plain[0], type):
            return plain[0].__name__ + (" | None" if len(plain) < len(args) else "")
    return ""


def check_options(script: dict, options: dict, config_cls: type) -> None:
    """Types (a YAML file can give any) and ranges of the options, and the integrations --report-to needs,
    before anything is loaded; each error names the option and the fix."""
    import importlib.util

    from mdlm.train.options import flag_of, range_error, type_error

    kinds = {f.name: annotation_name(f.type) for f in dataclasses.fields(config_cls)}
    kinds.update(train_examples="int", eval_examples="int | None")
    for name, value in {**options, "train_examples": script["train_examples"],
                        "eval_examples": script["eval_examples"]}.items():
        problem = type_error(flag_of(name), value, kinds[name]) if kinds.get(name) else None
        if problem is None and name in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = range_error(flag_of(name), value, RANGES[name])
            problem = problem and problem + HINTS.get(name, "")
        if problem:
            raise ValueError(problem)
    report_to = options.get("report_to") or []
    for integration in [report_to] if isinstance(report_to, str) else report_to:
        module = INTEGRATIONS.get(integration)
        if module and importlib.util.find_spec(module) is None:
            raise ValueError(f"--report-to {integration}: {module} is not installed; `pip install {module}`, or "
                             "--report-to none (the metrics are in metrics.jsonl and reward_curve.png either way)")


def build_config(config_cls: type, folder: Path, options: dict):
    """The algorithm's config; TRL's complaint about the rollout batch is restated with the flags to change."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # TrainingArguments' deprecation notice for a field the config pins
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
            return config_cls(output_dir=str(folder), use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                              **options)
    except ValueError as error:
        if "divisible by num_generations" not in str(error):
            raise
        defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
        size, accum, group = (options.get(k, defaults[k]) for k in ("per_device_train_batch_size",
                                                                     "gradient_accumulation_steps", "num_generations"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        raise ValueError(f"--per-device-train-batch-size {size} x {world} process(es) x --gradient-accumulation-steps "
                         f"{accum} = {size * world * accum} completions per rollout batch, not a multiple of "
                         f"--num-generations {group} (each prompt gets a group of {group}); pass "
                         f"--per-device-train-batch-size {group}, or a --num-generations that divides "
                         f"{size * world * accum}") from None


def check_not_autoregressive(run: str) -> None:
    """RL here trains masked diffusion runs (rollouts unmask in any order); an autoregressive run of this
    stack is refused, as mdlm-generate refuses it, rather than trained through the wrong objective."""
    try:
        config = json.loads((Path(run) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # missing or unreadable: the loader names it
    if isinstance(config, dict) and (config.get("objective") == "ar" or config.get("attention") == "causal"):
        raise ValueError(f"--model {run} is an autoregressive run (causal attention, next-token objective); RL here "
                         "finetunes masked diffusion runs: pass a run of mdlm-pretrain --objective mdlm or "
                         "train/sft.py")


def load_policy(run: str, family: str | None = None, trust_remote_code: bool = False, lora_r: int | None = None,
                lora_alpha: float | None = None, lora_target: str | None = None):
    """(model, tokenizer) of the model to finetune, through the one loader (`mdlm.decode.loading`): a run of
    this stack or any family's checkpoint. The trainers reach it through its trainable denoiser
    (`mdlm.trainable.training_logits`: the family's convention and logit shift). With `lora_r`, the model
    is a peft model whose adapters alone train."""
    from mdlm.decode.loading import load_denoiser
    from mdlm.trainable import add_lora, bind

    if Path(run).exists() and not (Path(run) / "config.json").is_file():
        raise ValueError(f"--model {run}: not a run folder (expected config.json and weights as train/sft.py "
                         "or train/pretrain.py save them)")
    denoiser, tokenizer, profile = load_denoiser(run, family=family, trust_remote_code=trust_remote_code)
    if denoiser.mask_token_id is None:
        raise ValueError("the model has no mask token (config.mask_token_id is None): RL here finetunes masked "
                         "diffusion models; pass a run trained by train/pretrain.py or train/sft.py")
    model = denoiser.model
    model.config.mask_token_id = int(denoiser.mask_token_id)  # what the trainers read
    if not hasattr(model, "add_model_tags"):  # a native module (mdlm.families) is no PreTrainedModel; TRL tags it
        model.add_model_tags = lambda tags: None
    bind(model, denoiser)  # rollouts and log-probs use the loader's denoiser (its stop and banned tokens)
    if lora_r is not None:
        model = add_lora(model, lora_r, lora_alpha, lora_target, family=profile)
    return model, tokenizer


class RunLog(MetricsLog):
    """metrics.jsonl (`train/run_folder.py`: appended and flushed per record, so a kill loses nothing
    written) and the reward curve."""

    def plot(self, title: str) -> None:
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.records if "reward" in r]
        if not rows:
            return
        steps = [r["step"] for r in rows]
        fig, ax = plt.subplots(figsize=(5.5, 3.3))
        mean = [r["reward"] for r in rows]
        std = [r.get("reward_std", 0.0) for r in rows]
        ax.plot(steps, mean, label="reward (mean over rollouts)")
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        if any("accuracy" in r for r in rows):
            ax.plot(steps, [r.get("accuracy", float("nan")) for r in rows], label="accuracy (rollouts)")
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        tmp = self.folder / (CURVE_FILE + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, self.folder / CURVE_FILE)  # a kill mid-write leaves the previous curve


def progress_callback(log: RunLog, title: str, show: bool):
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                if args.max_steps <= 0:  # TRL's default: epochs over the train prompts, often a day of steps
                    print(f"no --max-steps: TRL trains num_train_epochs={args.num_train_epochs:g} epochs of the "
                          f"train prompts, {state.max_steps} optimizer steps; pass --max-steps to train fewer",
                          file=sys.stderr, flush=True)
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=title, disable=not show,
                                dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "train_runtime" in logs:
                return
            record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            log.append(record)
            log.plot(title)
            if self.bar is not None:
                shown = {"reward": record.get("reward"), "std": record.get("reward_std"), "kl": record.get("kl"),
                         "acc": record.get("accuracy")}
                self.bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None})

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return Progress()


def _checkpoints(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint: one whose save finished (a kill mid-save leaves no marker)."""
    complete = [p for p in _checkpoints(folder) if (p / CHECKPOINT_DONE).is_file()]
    return complete[-1] if complete else None


def drop_incomplete_checkpoints(folder: Path) -> list[Path]:
    """On resume: remove the checkpoints newer than the last complete one (a killed save's leftovers,
    which TRL would otherwise write into, mixing two saves)."""
    latest = latest_checkpoint(folder)
    newest_ok = int(latest.name.split("-", 1)[1]) if latest is not None else -1
    dropped = [p for p in _checkpoints(folder) if int(p.name.split("-", 1)[1]) > newest_ok]
    import shutil

    for path in dropped:
        shutil.rmtree(path)
    return dropped


def resumable(trainer_cls: type) -> type:
    """`trainer_cls` whose checkpoints also hold the rollout RNG (each process's), so that a resumed run
    draws the same rollouts as one that was never stopped, and end with a marker file written last, so
    `--resume` never picks a half-written checkpoint."""

    class Resumable(trainer_cls):
        def _save_checkpoint(self, model, trial):
            import torch

            checkpoint = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            with save_errors_named(checkpoint), quiet_transformers_progress():
                super()._save_checkpoint(model, trial)
            checkpoint.mkdir(parents=True, exist_ok=True)
            rng = checkpoint / ROLLOUT_RNG_FILE.format(self.accelerator.process_index)
            torch.save(self.rollout_generator.get_state(), rng)
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                atomic_write_text(checkpoint / CHECKPOINT_DONE, f"step {self.state.global_step}\n")

        def _save(self, output_dir=None, state_dict=None):
            # A native family (not a transformers model) is saved by transformers as its plain state dict
            # with safetensors' save_file, which refuses one tensor under two names: the tied embedding and
            # head of SDAR. Each tensor is written once; loading back (non-strict) keeps the tie.
            from transformers import PreTrainedModel

            from mdlm.trainable import is_lora

            model = self.accelerator.unwrap_model(self.model)
            if state_dict is None and not isinstance(model, PreTrainedModel) and not is_lora(model):
                state_dict, seen = {}, set()
                for name, tensor in model.state_dict().items():
                    if tensor.numel() == 0 or tensor.data_ptr() not in seen:
                        seen.add(tensor.data_ptr())
                        state_dict[name] = tensor
            super()._save(output_dir, state_dict=state_dict)

        def load_rollout_rng(self, checkpoint: Path) -> None:
            import torch

            rng = checkpoint / ROLLOUT_RNG_FILE.format(self.accelerator.process_index)
            if not rng.is_file():
                saved = len(list(checkpoint.glob(ROLLOUT_RNG_FILE.format("*"))))
                raise FileNotFoundError(f"{checkpoint} has no {rng.name}: the run was saved by {saved} process(es), "
                                        f"this is {self.accelerator.num_processes}; resume with {saved}")
            self.rollout_generator.set_state(torch.load(rng, weights_only=True))

    Resumable.__name__ = Resumable.__qualname__ = trainer_cls.__name__
    return Resumable


def run(given: dict) -> Path:
    """One RL run; returns its folder. The folder is held for the whole run (`train/run_folder.py`: one run
    at a time, nothing mixed, atomic writes, tampered checkpoints refused); a `--resume` of a finished run
    finishes without training, and one killed after its final checkpoint saves that checkpoint's model."""
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_pt_utils import safe_globals

    from mdlm.train.rl.base import check_fits_context
    from mdlm.train.tasks import evaluate, get_task

    script, options, config_cls, trainer_cls = resolve_options(given)
    task = get_task(script["task"])
    folder = Path(script["output_dir"])
    is_main = int(os.environ.get("RANK", "0")) == 0
    if script["resume"] and not (folder / OPTIONS_FILE).is_file():
        raise FileNotFoundError(f"--resume: {folder} holds no run (no {OPTIONS_FILE}); start it without --resume")
    with RunFolder(folder, {"resume": script["resume"], "overwrite": script["overwrite"]}, is_main, compare=False,
                   run_files=RUN_FILES, saved_files=SAVED_FILES) as run_folder:
        if script["resume"]:
            run_options = RunFolder.read_options(folder)
            options = {**run_options["config"], **options}
            script = {**run_options["script"], **{k: v for k, v in script.items() if k in given}, "resume": True}
        options.setdefault("max_completion_length", task.max_completion_length)
        # One group per batch by default: the algorithm's own G (MDPO's 8, d1's 6), so batch and G agree.
        default_generations = {f.name: f.default for f in dataclasses.fields(config_cls)}["num_generations"]
        options.setdefault("per_device_train_batch_size", options.get("num_generations", default_generations))
        options.setdefault("logging_steps", 1)
        options.setdefault("save_steps", 50)
        config = build_config(config_cls, folder, options)
        state = read_state(folder) if script["resume"] else None
        if state and state.get("finished") and (config.max_steps <= 0 or config.max_steps <= state["step"]):
            print(f"--resume: the run in {folder} finished at step {state['step']}; nothing to train (pass a larger "
                  "--max-steps to continue it)", file=sys.stderr, flush=True)
            return folder
        checkpoint = latest_checkpoint(folder) if script["resume"] else None
        if checkpoint is not None:  # before anything loads it: a file carrying code stops here, unread
            refuse_pickled(checkpoint, ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "rollout_rng_*.pt"),
                           safe_globals)
        check_not_autoregressive(script["model"])
        model, tokenizer = load_policy(script["model"], script["family"], script["trust_remote_code"], script["lora_r"],
                                       script["lora_alpha"], script["lora_target"])
        train = task.dataset("train", script["train_examples"], config.seed)
        held = task.dataset("test", script["eval_examples"])
        longest = max(len(ids) for ids in tokenizer(list(train["prompt"]) + list(held["prompt"]),
                                                    add_special_tokens=False)["input_ids"])
        check_fits_context(model, longest, config.max_completion_length)
        # Only now, with every option checked, is the run folder written (an overwritten run's files cleared).
        saved_options = {"script": script, "config": options}
        run_folder.save_options(saved_options)
        if run_folder.resuming and is_main:
            atomic_write_text(folder / OPTIONS_FILE, yaml.safe_dump(saved_options, sort_keys=False))
        log = RunLog(folder, is_main)
        if script["resume"] and is_main:
            for path in drop_incomplete_checkpoints(folder):
                print(f"--resume: removed {path.name}, a checkpoint whose save did not finish", file=sys.stderr)
        checkpoint_step = int(checkpoint.name.split("-")[1]) if checkpoint is not None else 0
        if checkpoint is not None:
            log.keep_until(checkpoint_step)
        results = json.loads((folder / EVAL_FILE).read_text()) if (folder / EVAL_FILE).exists() else {}
        if script["eval_before"] and "before" not in results and is_main:
            results["before"] = evaluate(model, tokenizer, task, held, trainer_cls.evaluation_config(
                config.max_completion_length), completion_length=config.max_completion_length)
            _write_json(folder / EVAL_FILE, results)
            print(f"held-out accuracy before RL: {results['before']['accuracy']:.3f}", flush=True)
        title = f"{script['algorithm']} on {script['task']}"
        trainer = resumable(trainer_cls)(model, task.reward, config, train, tokenizer, accuracy_fn=task.accuracy,
                                         callbacks=[progress_callback(log, title, script["progress"])])
        trainer.remove_callback(PrinterCallback)  # it prints TRL's raw log dicts; metrics go to the bar and the log
        if checkpoint is not None:
            trainer.load_rollout_rng(checkpoint)
        if checkpoint is not None and 0 < config.max_steps <= checkpoint_step:
            # killed after its final checkpoint: that checkpoint holds the run's weights, nothing is trained again
            print(f"--resume: {checkpoint.name} is the final step (--max-steps {config.max_steps}); finishing the "
                  "run from it", file=sys.stderr, flush=True)
            trainer._load_from_checkpoint(str(checkpoint))
            trainer.state.global_step = checkpoint_step
        else:
            try:
                trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
            except KeyboardInterrupt:
                log.plot(title)
                print(f"interrupted: metrics are in {folder / METRICS_FILE}; continue with --resume from the last "
                      f"checkpoint ({latest_checkpoint(folder)})", file=sys.stderr)
                raise
        with save_errors_named(folder, "the model"), quiet_transformers_progress():
            save_policy(trainer, folder, script["model"])
        if is_main:
            tokenizer.save_pretrained(str(folder))
            policy = trainer.accelerator.unwrap_model(trainer.model)
            results["after"] = evaluate(policy, tokenizer, task, held, trainer_cls.evaluation_config(
                config.max_completion_length), completion_length=config.max_completion_length)
            results["steps"] = trainer.state.global_step
            _write_json(folder / EVAL_FILE, results)
            log.plot(title)
            write_state(folder, step=trainer.state.global_step, max_steps=trainer.state.max_steps or config.max_steps,
                        finished=True)
            print(f"held-out accuracy after RL: {results['after']['accuracy']:.3f} "
                  f"({len(held)} prompts, greedy); run folder {folder}", flush=True)
    return folder


def save_policy(trainer, folder: Path, source: str) -> None:
    """The trained policy as its family saves it: TRL's save for a transformers model of ours; the merged
    weights (and the adapter in adapter/) of a LoRA policy, and a native family's published layout, through
    `mdlm.trainable.save_network`, so that mdlm-generate / mdlm-eval / mdlm-rl load the folder."""
    from transformers import PreTrainedModel

    from mdlm.trainable import base_denoiser, is_lora, published_config, save_network

    policy = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(policy, PreTrainedModel) and not is_lora(policy):
        trainer.save_model(str(folder))
    elif trainer.accelerator.is_main_process:
        save_network(policy, folder, published_config(source), getattr(base_denoiser(policy), "profile", None))
    trainer.accelerator.wait_for_everyone()


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> None:
    """Bad input is one line and status 2, anything else one line and status 1 (`mdlm.decode.cli_errors`)."""
    from mdlm.decode.cli_errors import run_main

    try:
        run_main("mdlm-rl", run, vars(build_parser().parse_args(argv)))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
