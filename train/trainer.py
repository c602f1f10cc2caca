"""The reusable training loop: pretraining (`train/pretrain.py`) and finetuning scripts build a model, a loss
function and packed datasets, and hand them to `Trainer`.

One optimizer step, as in nanoGPT / the MDLM recipe:
    for each of `grad_accum` micro-batches:  loss = loss_fn(model, batch, masking_generator, step)
                                             backward(loss / grad_accum)   (gradients synced on the last)
    clip the gradient norm;  AdamW step;  learning rate = linear warmup then cosine decay to min_lr_ratio
    EMA of the weights:      ema = d * ema + (1 - d) * weights,  d = min(ema, (1 + n) / (10 + n))

The saved model is the EMA of the weights (the raw weights live only in the resume checkpoints), and
validation evaluates the EMA weights too, so the reported numbers describe the model that is saved.

Batches are dicts of tensors: `input_ids` (B, L), and optionally `attention_mask` (B, L; 0 = padding, never
attended, masked or scored) and `fixed` (B, L; True = given, never masked or scored, e.g. an SFT prompt).

Data order is a pure function of (seed, step): the examples form an endless stream of per-epoch permutations
drawn from the seed, and optimizer step s of process r reads its own consecutive slice of that stream. So a
resumed run reads exactly the batches an uninterrupted run would, and the processes read disjoint data.
Randomness of the losses (masking) comes from one `torch.Generator` per process, checkpointed with the rest
of the state, so an interrupted and resumed run ends with the same weights as one run straight through.
`accelerator.save_state` writes the weights (safetensors), the optimizer and the RNG states (loaded back with
`weights_only=True`); the trainer's own states (scheduler, EMA, each process's masking generator) are written
here as JSON and safetensors, never pickled, so resuming from a checkpoint cannot run code hidden in it.

Nothing is lost to a kill: every file of the run folder is written to a temporary name and renamed, a
checkpoint folder is renamed when complete, and resuming a run that was killed after its final checkpoint
finishes it (the model for use and `finished: true`). The folder's lock, atomic writes, metrics log and
the refusal of tampered checkpoints are `train/run_folder.py` (shared with SFT and RL); the options and
their flags are `train/options.py`.

Run folder layout:
    config.json, model.safetensors, tokenizer files   the EMA model for use (`from_pretrained(run_dir)`)
    run_options.yaml                                   every option of the run
    metrics.jsonl, training_curve.png                  the log and its plot
    trainer_state.json                                 {"step", "max_steps", "finished"}
    checkpoints/step-NNNNNNN/                          resume states (the last `keep_checkpoints`):
        model.safetensors, optimizer.bin, random_states_R.pkl    accelerate's save_state
        trainer_state.json, extra_state.json, ema.safetensors, generator_R.safetensors   this trainer's
    .run.lock                                          held while a run is in progress (pid inside)
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from mdlm.losses import LossOutput, compute_loss
from mdlm.train.options import option
from mdlm.train.run_folder import (CHECKPOINTS, CURVE_FILE, STATE_FILE, MetricsLog, atomic_write_text,
                                   quiet_transformers_progress, replace_files_from, save_errors_named,
                                   tampered_checkpoint, write_state)

LossFn = Callable[[torch.nn.Module, dict, torch.Generator, int], LossOutput]
EXTRA_STATE = "extra_state.json"
EMA_FILE = "ema.safetensors"

# AdamW: beta2 = 0.98 below torch's 0.999, as RoBERTa's masked-LM pretraining set it for stability; every run
# in results/ used these, so changing them changes the results.
ADAMW_BETAS = (0.9, 0.98)
ADAMW_EPS = 1e-8
# Seeds derived from --seed. Epoch e of the data order uses seed * DATA_SEED_STRIDE + e (a prime stride, so
# no two (seed, epoch) pairs below it share a permutation); process r's masking generator uses
# seed * MASKING_SEED_STRIDE + r; validation masks use EVAL_MASKING_SEED + r whatever the seed, so every
# evaluation of every run scores the same masks and the curves compare.
DATA_SEED_STRIDE = 100_003
MASKING_SEED_STRIDE = 1000
EVAL_MASKING_SEED = 10_007


@dataclass
class TrainerConfig:
    """The options of the training loop, each with its help and range (`train/options.py` builds the flags
    and checks from them). Scripts subclass it and declare only their own fields, or new defaults for these
    (`PretrainArgs(TrainerConfig)`, `SFTArgs(TrainerConfig)`)."""

    output_dir: str = field(metadata={"help": "the run folder"})
    max_steps: int = option(1000, "optimizer steps", at_least=1)
    batch_size: int = option(16, "sequences per process per micro-batch", at_least=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", at_least=1)
    lr: float = option(1e-3, "peak AdamW learning rate", above=0)
    min_lr_ratio: float = option(0.1, "the cosine decays to lr * min_lr_ratio", at_least=0, at_most=1)
    weight_decay: float = option(0.01, "AdamW weight decay (matrices only)", at_least=0)
    warmup_steps: int = option(100, "linear warmup steps", at_least=0)
    grad_clip: float = option(1.0, "gradient-norm clipping; 0 disables it", at_least=0)
    ema: float = option(0.999, "EMA decay; 0 disables it (the saved model is the EMA)", at_least=0, below=1)
    mixed_precision: str = option("no", "no | bf16 | fp16", choices=("no", "bf16", "fp16"))
    eval_every: int = option(100, "validate every N steps", at_least=1)
    eval_batches: int | None = option(16, "validation batches per evaluation (None: the whole validation set)",
                                      at_least=1)
    save_every: int = option(200, "checkpoint every N steps", at_least=1)
    first_save: int | None = option(None, "also checkpoint at this early step, so a first resume point comes soon",
                                    at_least=1)
    keep_checkpoints: int = option(2, "resume checkpoints kept (the last N)", at_least=1)
    log_every: int = option(10, "log training loss and tokens/s every N steps", at_least=1)
    seed: int = option(0, "seed of initialisation, data order and masking", at_least=0)
    resume: str | None = option(None, '"latest" (bare --resume) or a checkpoint folder')
    overwrite: bool = option(False, "replace a run already in --output-dir")
    stop_at_step: int | None = option(None, "stop after this step without finishing, as if killed (for testing --resume)",
                                      at_least=1)
    progress: bool = option(True, "show a progress bar")


# ----------------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------------

def make_accelerator(mixed_precision: str = "no"):
    """An Accelerator for one process, `accelerate launch`, or `torchrun`. Without CUDA, several processes
    talk over gloo (accelerate only forms a CPU process group when told `cpu=True`)."""
    import os

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if torch.cuda.is_available():
        return Accelerator(mixed_precision=mixed_precision)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        # accelerate forms FSDP only on accelerators; without one it would silently train plain DDP
        raise ValueError("FSDP needs CUDA GPUs (accelerate cannot shard on a CPU-only machine); launch with "
                         "--config_file configs/accelerate/ddp_cpu.yaml here, configs/accelerate/fsdp_gpus.yaml "
                         "on a GPU machine")
    handlers = [InitProcessGroupKwargs(backend="gloo")] if int(os.environ.get("WORLD_SIZE", "1")) > 1 else []
    return Accelerator(mixed_precision=mixed_precision, cpu=True, kwargs_handlers=handlers)


def objective_loss_fn(objective: str = "mdlm", loss: str = "t-dce") -> LossFn:
    """The loss function of `objective` for batches as described in the module docstring."""

    def loss_fn(model, batch, generator, step):
        fixed, attention_mask = batch.get("fixed"), batch.get("attention_mask")
        if attention_mask is not None:
            padding = ~attention_mask.bool()
            fixed = padding if fixed is None else fixed.bool() | padding
        kwargs = dict(fixed=fixed, attention_mask=attention_mask, generator=generator)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}  # absent = no prompt, no padding
        if objective == "as-arm":
            kwargs["step"] = step
        return compute_loss(model, batch["input_ids"], objective, loss, **kwargs)

    return loss_fn


class ShuffledStream:
    """An endless stream of example indices: epoch e is a permutation drawn from (seed, e)."""

    def __init__(self, num_examples: int, seed: int):
        if num_examples == 0:
            raise ValueError("the training set is empty")
        self.num_examples, self.seed = num_examples, seed

    @lru_cache(maxsize=4)
    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * DATA_SEED_STRIDE + epoch)
        return torch.randperm(self.num_examples, generator=generator)

    def take(self, start: int, count: int) -> list[int]:
        return [int(self.permutation(pos // self.num_examples)[pos % self.num_examples])
                for pos in range(start, start + count)]


def batch_indices(stream: ShuffledStream, step: int, micro: int, rank: int, world: int, batch_size: int,
                  grad_accum: int) -> list[int]:
    """The examples that process `rank` trains on at micro-batch `micro` of optimizer step `step`."""
    start = ((step * grad_accum + micro) * world + rank) * batch_size
    return stream.take(start, batch_size)


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to `min_ratio` at `max_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of the weights (float32 shadow copy), with the usual warmup of the
    decay so that short runs are not dominated by the initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.num_updates = decay, 0
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, param in model.named_parameters():
            self.shadow[name].lerp_(param.detach().float(), 1 - decay)

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """Temporarily load the EMA weights into `model`."""
        saved = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(self.shadow[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    param.copy_(saved[name])

    def state_dict(self):
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state):
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


def is_checkpoint(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and any(folder.glob("model*.safetensors"))


def latest_checkpoint(output_dir: Path) -> Path | None:
    folders = sorted(p for p in (output_dir / CHECKPOINTS).glob("step-*") if is_checkpoint(p))
    return folders[-1] if folders else None


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from, or None to start fresh; clear errors for bad input."""
    if resume is None:
        return None
    if resume == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            print(f"--resume: no checkpoint in {output_dir / CHECKPOINTS} yet; starting from scratch")
        return found
    folder = Path(resume)
    if not is_checkpoint(folder):
        raise ValueError(f"--resume {resume}: not a checkpoint folder (expected {STATE_FILE} and model "
                         f"weights written by accelerator.save_state, like {output_dir / CHECKPOINTS}/step-NNNNNNN)")
    return folder


def plot_curves(records: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_nats_per_token" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="train loss", alpha=0.6)
    if val:
        ax.plot([r["tokens"] for r in val], [r["val_nats_per_token"] for r in val], "o-", label="validation")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("nats / token")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------

class Trainer:
    """The loop of the module docstring. The objective is `compute_loss`: by default it calls `loss_fn`; a new
    objective subclasses Trainer and overrides `compute_loss` (as TRL's trainers do) instead of copying
    `train`, and passes `loss_fn=None`."""

    def __init__(self, model, tokenizer, train_data, eval_data, loss_fn: LossFn | None, config: TrainerConfig,
                 accelerator=None, title: str = ""):
        self.config, self.loss_fn, self.tokenizer, self.title = config, loss_fn, tokenizer, title
        self.accelerator = accelerator or make_accelerator(config.mixed_precision)
        self.output_dir = Path(config.output_dir)
        self.train_data, self.eval_data = train_data, eval_data
        self.stream = ShuffledStream(len(train_data), config.seed)
        acc = self.accelerator
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            (decay if param.dim() >= 2 else no_decay).append(param)
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=config.lr, betas=ADAMW_BETAS, eps=ADAMW_EPS)
        # The scheduler is stepped by hand once per optimizer step (accelerate's prepared scheduler would
        # step once per process), and checkpointed through register_for_checkpointing.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, config.warmup_steps, config.max_steps, config.min_lr_ratio))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        if not hasattr(self.model, "config"):  # losses read model.config through the DDP wrapper too
            self.model.config = model.config
        self.ema = EMA(acc.unwrap_model(self.model), config.ema) if config.ema > 0 else None
        self.generator = torch.Generator(device=acc.device).manual_seed(config.seed * MASKING_SEED_STRIDE + acc.process_index)
        self.step, self.tokens_seen = 0, 0
        self.metrics = MetricsLog(self.output_dir, self.accelerator.is_main_process, records=[])

    def compute_loss(self, model, batch: dict, generator: torch.Generator, step: int) -> LossOutput:
        """The loss of one batch, for training (`model` is the prepared one) and validation (the EMA weights,
        under no_grad). `generator` is the masking randomness: use it, not the global RNG, so resumes are exact."""
        if self.loss_fn is None:
            raise NotImplementedError(f"{type(self).__name__} was built with loss_fn=None; pass a loss function "
                                      "or override Trainer.compute_loss")
        return self.loss_fn(model, batch, generator, step)

    # -- data ------------------------------------------------------------------------------------
    def _collate(self, rows: dict) -> dict:
        batch = {k: v.to(self.accelerator.device) for k, v in rows.items() if isinstance(v, torch.Tensor)}
        if "attention_mask" in batch and bool(batch["attention_mask"].all()):
            del batch["attention_mask"]  # no padding: let attention take its fast path
        return batch

    def train_batch(self, step: int, micro: int) -> tuple[dict, list[int]]:
        acc, c = self.accelerator, self.config
        indices = batch_indices(self.stream, step, micro, acc.process_index, acc.num_processes,
                                c.batch_size, c.grad_accum)
        return self._collate(self.train_data[indices]), indices

    def eval_batches(self):
        acc, c = self.accelerator, self.config
        n = len(self.eval_data)
        if c.eval_batches is not None:  # a fixed subset spread evenly over the validation set
            n = min(n, c.eval_batches * c.batch_size * acc.num_processes)
        indices = [i * len(self.eval_data) // n for i in range(n)]
        batches = [indices[b:b + c.batch_size] for b in range(0, n, c.batch_size)]
        for batch in batches[acc.process_index::acc.num_processes]:
            yield self._collate(self.eval_data[batch])

    # -- evaluation ------------------------------------------------------------------------------
    def weights_for_use(self):
        model = self.accelerator.unwrap_model(self.model)
        return self.ema.applied(model) if self.ema is not None else nullcontext(model)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation negative ELBO (MDLM) or NLL (AR) in nats/token, with the same masks every time."""
        acc = self.accelerator
        generator = torch.Generator(device=acc.device).manual_seed(EVAL_MASKING_SEED + acc.process_index)
        total = torch.zeros((), dtype=torch.float64, device=acc.device)
        count = torch.zeros((), dtype=torch.float64, device=acc.device)
        with self.weights_for_use() as model:
            was_training = model.training
            model.eval()
            for batch in self.eval_batches():
                with acc.autocast():
                    out = self.compute_loss(model, batch, generator, self.step)
                total += out.sum_nll.double()
                count += out.num_tokens.double()
            model.train(was_training)
            checksum = torch.stack([sum(p.double().sum() for p in model.parameters()),
                                    sum(p.double().square().sum() for p in model.parameters())])
        total, count = acc.reduce(total, "sum"), acc.reduce(count, "sum")
        checksums = acc.gather(checksum[None])  # (processes, 2): equal rows when the replicas agree
        nats = (total / count.clamp(min=1)).item()
        return {"val_nats_per_token": nats, "val_ppl_bound": math.exp(min(nats, 50.0)),
                "val_tokens": int(count.item()),
                "replica_spread": float((checksums.max(0).values - checksums.min(0).values).abs().max())}

    # -- checkpoints -----------------------------------------------------------------------------
    def _write_state(self, folder: Path, finished: bool) -> None:
        write_state(folder, step=self.step, tokens=self.tokens_seen, max_steps=self.config.max_steps,
                    finished=finished)

    def save_for_use(self, finished: bool = False) -> None:
        """The EMA model + tokenizer (safetensors) at the top of the run folder, the curve, the state. All
        is written into a staging folder first and renamed into place file by file; the state comes last, so
        `finished: true` is only ever written beside the final model."""
        acc = self.accelerator
        staging = self.output_dir / f".saving-{os.getpid()}"
        with self.weights_for_use() as model, quiet_transformers_progress():
            if acc.is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
                with save_errors_named(staging, "the model"):
                    model.save_pretrained(staging, safe_serialization=True)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(staging)
        if acc.is_main_process:
            plot_curves(self.metrics.records, staging / CURVE_FILE, self.title)
            replace_files_from(staging, self.output_dir)
            self._write_state(self.output_dir, finished)
        acc.wait_for_everyone()

    def save_checkpoint(self, finished: bool = False) -> None:
        acc = self.accelerator
        final = self.output_dir / CHECKPOINTS / f"step-{self.step:07d}"
        partial = final.with_name(final.name + ".partial")  # renamed when complete: a kill mid-save is harmless
        if acc.is_main_process and partial.exists():
            shutil.rmtree(partial)
        acc.wait_for_everyone()
        with save_errors_named(partial):
            acc.save_state(str(partial))
            self._save_extra_state(partial)
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._write_state(partial, finished=False)
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            for old in sorted((self.output_dir / CHECKPOINTS).glob("step-*"))[:-self.config.keep_checkpoints]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        self.save_for_use(finished)

    def _save_extra_state(self, folder: Path) -> None:
        """Scheduler and EMA bookkeeping as JSON, the EMA weights and each process's generator state as
        safetensors: loading them back never unpickles anything."""
        from safetensors.torch import save_file

        acc = self.accelerator
        save_file({"rng_state": self.generator.get_state()}, str(folder / f"generator_{acc.process_index}.safetensors"))
        if not acc.is_main_process:
            return
        extra = {"scheduler": self.scheduler.state_dict(), "ema": None}
        if self.ema is not None:
            extra["ema"] = {"decay": self.ema.decay, "num_updates": self.ema.num_updates}
            save_file({k: v.contiguous() for k, v in self.ema.shadow.items()}, str(folder / EMA_FILE))
        atomic_write_text(folder / EXTRA_STATE, json.dumps(extra))

    def _load_extra_state(self, folder: Path) -> None:
        from safetensors.torch import load_file

        if not (folder / EXTRA_STATE).is_file():
            raise ValueError(f"--resume {folder}: {EXTRA_STATE} is missing, so the checkpoint is incomplete; resume "
                             "from another checkpoint (pass its folder) or start over with --overwrite")
        extra = json.loads((folder / EXTRA_STATE).read_text())
        self.scheduler.load_state_dict(extra["scheduler"])
        if self.ema is not None:
            if extra["ema"] is None:
                raise ValueError(f"--resume {folder}: the checkpoint has no EMA but this run uses --ema "
                                 f"{self.ema.decay}; resume with --ema 0")
            self.ema.decay, self.ema.num_updates = extra["ema"]["decay"], extra["ema"]["num_updates"]
            for name, value in load_file(str(folder / EMA_FILE)).items():
                self.ema.shadow[name].copy_(value)
        rank = self.accelerator.process_index
        generator_file = folder / f"generator_{rank}.safetensors"
        if not generator_file.is_file():
            raise ValueError(f"--resume {folder}: {generator_file.name} is missing (the checkpoint was written by "
                             "fewer processes); resume with the number of processes that wrote it")
        self.generator.set_state(load_file(str(generator_file))["rng_state"])

    def load_checkpoint(self, folder: Path) -> None:
        from safetensors import SafetensorError

        from accelerate.utils.other import load as weights_only_load

        if list(folder.glob("custom_checkpoint_*.pkl")):
            raise ValueError(f"--resume {folder}: a checkpoint of an earlier version, whose trainer states are pickles "
                             "(custom_checkpoint_*.pkl) that this version never unpickles; start over with "
                             "--overwrite, or finish the run with the version that wrote it")
        try:
            # accelerate reads these with weights_only=True too, but only logs a failure and carries on with
            # other random states: read them first, so that a refused file stops the resume
            for rng_file in sorted(folder.glob("random_states_*.pkl")):
                weights_only_load(rng_file)
            self.accelerator.load_state(str(folder))
            self._load_extra_state(folder)
        except pickle.UnpicklingError as error:
            raise tampered_checkpoint(folder, error) from None
        except (SafetensorError, EOFError, RuntimeError, KeyError, OSError) as error:
            raise ValueError(f"--resume {folder}: the checkpoint is damaged or belongs to another model "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:160]}); resume from another "
                             "checkpoint (pass its folder) or start over with --overwrite") from None
        state = json.loads((folder / STATE_FILE).read_text())
        self.step, self.tokens_seen = state["step"], state["tokens"]
        if self.metrics.path.exists():  # drop what the killed run logged after its checkpoint
            self.metrics = MetricsLog(self.output_dir, self.accelerator.is_main_process)
            self.metrics.keep_until(self.step)
        self.accelerator.print(f"resumed from {folder} at step {self.step}")

    def log(self, record: dict) -> None:
        self.metrics.append(record)

    # -- training --------------------------------------------------------------------------------
    def train(self) -> Path:
        from accelerate.utils import gather_object
        from tqdm.auto import tqdm

        acc, c = self.accelerator, self.config
        checkpoint = resolve_resume(self.output_dir, c.resume)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
            if self.step >= c.max_steps:  # killed after its last checkpoint: finish what that save began
                acc.print(f"the checkpoint is at step {self.step} >= --max-steps {c.max_steps}: finishing the run")
                self.save_for_use(finished=True)
                return self.output_dir
        if self.step == 0:
            self.log({"step": 0, "tokens": 0, **self.evaluate()})
        stop = min(c.max_steps, c.stop_at_step or c.max_steps)  # a recipe that stops early: the bar ends there
        progress = tqdm(total=stop, initial=self.step, disable=not (c.progress and acc.is_main_process),
                        desc=self.title or "training", dynamic_ncols=True)
        window_tokens, window_time, window_loss, window_steps = 0, 0.0, 0.0, 0
        self.model.train()
        while self.step < c.max_steps:
            step_start = time.perf_counter()
            step_tokens = torch.zeros((), device=acc.device)
            step_loss = 0.0
            for micro in range(c.grad_accum):
                batch, indices = self.train_batch(self.step, micro)
                sync = micro == c.grad_accum - 1
                with (nullcontext() if sync else acc.no_sync(self.model)), acc.autocast():
                    out = self.compute_loss(self.model, batch, self.generator, self.step)
                acc.backward(out.loss / c.grad_accum)
                step_loss += out.loss.item() / c.grad_accum
                mask = batch.get("attention_mask")
                step_tokens += mask.sum() if mask is not None else batch["input_ids"].numel()
                if self.step == 0 and micro == 0 and acc.num_processes > 1:
                    self.log({"step": 0, "tokens": 0, "first_batch_per_process": gather_object([indices])})
            if c.grad_clip > 0:
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(self.model))
            self.step += 1
            step_tokens = int(acc.reduce(step_tokens, "sum").item())
            self.tokens_seen += step_tokens
            window_tokens += step_tokens
            window_time += time.perf_counter() - step_start  # evaluation and saving do not count
            window_loss += step_loss
            window_steps += 1
            progress.update(1)

            if self.step % c.log_every == 0 or self.step == c.max_steps:
                record = {"step": self.step, "tokens": self.tokens_seen, "loss": window_loss / window_steps,
                          "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": window_tokens / window_time}
                if c.grad_clip > 0:
                    record["grad_norm"] = float(grad_norm)
                self.log(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                window_tokens, window_time, window_loss, window_steps = 0, 0.0, 0.0, 0
            if self.step == c.max_steps:
                progress.close()  # the bar's final state, once, before the final validation line and save
            if self.step % c.eval_every == 0 or self.step == c.max_steps:
                result = self.evaluate()
                self.log({"step": self.step, "tokens": self.tokens_seen, **result})
                say = acc.print if progress.disable else progress.write  # write keeps a live bar intact
                say(f"step {self.step}: validation {result['val_nats_per_token']:.4f} nats/token "
                    f"(perplexity bound {result['val_ppl_bound']:.2f})")
            if self.step % c.save_every == 0 or self.step == c.max_steps or self.step == c.first_save:
                self.save_checkpoint(finished=self.step == c.max_steps)
            if c.stop_at_step is not None and self.step >= c.stop_at_step and self.step < c.max_steps:
                progress.close()
                return self.output_dir
        progress.close()  # the last step saved the checkpoint and the finished model
        return self.output_dir
