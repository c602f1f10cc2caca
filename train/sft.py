"""Supervised finetuning of a masked diffusion model on prompt/response pairs (LLaDA's SFT recipe).

    accelerate launch train/sft.py --model runs/mdlm-small --task signatures
    accelerate launch train/sft.py --model GSAI-ML/LLaDA-8B-Instruct --data pairs.jsonl --lora-r 32 \
        --mixed-precision bf16 --gradient-checkpointing        # any family of mdlm.decode.families
    python train/sft.py --task sudoku --preset tiny --output-dir runs/sft-sudoku    # from scratch
    python train/sft.py --init-from runs/mdlm-small --data pairs.jsonl --prompt-column question \
        --response-column answer --max-steps 500
    python train/sft.py --init-from RUN --data some/hub-dataset --prompt-column prompt --response-column completion

Each example is prompt tokens followed by response tokens and EOS. The prompt is never masked and never
scored (`fixed`); the response follows the masked-diffusion loss (`mdlm.losses.compute_loss(...,
fixed=prompt_mask)`). Sequences of a batch are padded to the batch's longest with EOS, and the padding
EOS tokens count in the loss like response tokens (LLaDA, "Large Language Diffusion Models", SFT): that
is how the model learns to end an answer, and the decoders rely on it (EOS = nothing more here).

Data sources: a local JSONL/parquet file of rows (`--data`, columns `--prompt-column` /
`--response-column`; a stable hash of the row index holds ~10% out for validation), a Hugging Face
dataset name (its train split; validation or test split, else 1% of train), or a built-in task
(`--task signatures`: function source -> JSON signature, `mdlm.train.tasks.signatures`; validation from
the corpus's validation files; `--task sudoku` / `--task countdown`: `mdlm.train.tasks`, validation on the
held-out grids / number sets). With `--preset` instead of `--init-from` the model starts from scratch with
a byte-level tokenizer trained on the task's text (sudoku and countdown, whose text is digits and symbols). Examples longer than the model's context are dropped (and counted).

The training loop, checkpoints, `--resume`, progress bar, metrics.jsonl and error handling are the
pretraining ones (`train/trainer.py`); `--resume` alone continues the run in --output-dir with its saved
options. Python API: `finetune(SFTArgs(...))` returns the run folder.

Any family (`--model`: a run of this stack, a public diffusion LM's folder or hub name) trains through its
trainable denoiser (`mdlm.trainable.TrainableDenoiser`): the family's calling convention and logit shift,
the same logits the decoders read. Instruct checkpoints of a chat family read each prompt as one user turn
of the tokenizer's chat template (`--no-chat-template` turns it off). `--lora-r N` trains LoRA adapters
only (peft; `--lora-alpha`, `--lora-target`, per-family default targets); the run folder then holds the
merged weights (loaded by mdlm-generate, mdlm-eval and mdlm-rl like any checkpoint) and the adapter alone
in `adapter/`. `--gradient-checkpointing` recomputes activations; bf16 autocast is the default on a GPU
that has it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from mdlm.train.options import add_option_arguments, option, options_from_dict, validate_options
from mdlm.train.run_folder import RunFolder
from mdlm.train.trainer import TrainerConfig

TASKS = ("signatures", "sudoku", "countdown")
TASK_VOCAB = 260  # byte-level BPE with no merges: one token per character, digits never fused
PAD_MULTIPLE = 8  # batch lengths are rounded up so that few distinct shapes occur


@dataclass
class SFTArgs(TrainerConfig):
    """Every option of a finetuning run: the training loop's (`TrainerConfig`, some with finetuning
    defaults here) and these."""

    model: str | None = option(None, "the model to finetune: a run folder of this stack, or a public diffusion LM's "
                               "folder or hub name (LLaDA, Dream, SDAR, ...); or --preset")
    init_from: str | None = option(None, "the older name of --model")
    family: str | None = option(None, "the --model's family (default: detected from its config)")
    trust_remote_code: bool = option(False, "run the modeling code shipped with a --model of a family without a "
                                     "native implementation")
    dtype: str = option("float32", "float32 | bfloat16: the weights as loaded (bfloat16 base weights suit LoRA "
                        "on a GPU)")
    chat_template: bool = option(True, "instruct checkpoints of a chat family read prompts through the "
                                 "tokenizer's chat template")
    lora_r: int | None = option(None, "LoRA rank: train low-rank adapters only (default: full finetuning)")
    lora_alpha: float | None = option(None, "LoRA scale numerator (default: 2 x --lora-r)")
    lora_target: str | None = option(None, "comma-separated names of the linear layers LoRA adapts, or all-linear "
                                     "(default: the family's attention and MLP projections)")
    lora_dropout: float = option(0.0, "dropout on the LoRA path")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    preset: str | None = option(None, "from scratch: this model preset with a byte-level tokenizer of the task text")
    hidden_size: int | None = option(None, "with --preset: model width (default: the preset's)")
    num_hidden_layers: int | None = option(None, "with --preset: transformer blocks (default: the preset's)")
    data: str | None = option(None, "local .jsonl/.parquet file or a hub dataset name")
    task: str | None = option(None, f"or a built-in task: {' | '.join(TASKS)}")
    prompt_column: str = option("prompt", "column of the prompts in --data")
    response_column: str = option("response", "column of the responses in --data")
    max_examples: int | None = option(None, "use only the first N training examples")
    seq_len: int | None = option(None, "longest prompt + response + EOS (default: the model's context)")
    loss: str = option("t-dce", "t-dce | lambda-dce | k-dce")
    # the loop's options with finetuning defaults
    output_dir: str | None = option(None, "default runs/sft-<task or data name>")
    max_steps: int = option(500, "optimizer steps")
    lr: float = option(1e-4, "peak AdamW learning rate")
    warmup_steps: int = option(50, "linear warmup steps")
    ema: float | None = option(None, "EMA decay; 0 disables it (the saved model is the EMA). Default: 0.99 for a "
                               "run of this stack, 0 for a public model or LoRA (the EMA is a float32 copy of "
                               "every weight)")
    mixed_precision: str | None = option(None, "no | bf16 | fp16 (default: bf16 on a GPU that has it, else no)")
    eval_batches: int | None = option(8, "validation batches per evaluation (None: the whole validation set)")
    save_every: int = option(100, "checkpoint every N steps")

    @classmethod
    def from_dict(cls, options: dict) -> "SFTArgs":
        return options_from_dict(cls, options, "train/sft.py")

    def resolved(self) -> "SFTArgs":
        validate_options(self, "train/sft.py")
        if self.init_from and self.model and self.init_from != self.model:
            raise ValueError("give --model (or its older name --init-from), not both")
        model = self.model or self.init_from
        if self.preset is not None:
            from mdlm.config import PRESETS

            if model:
                raise ValueError("give --model (finetune a model) or --preset (train from scratch), not both")
            if self.preset not in PRESETS:
                raise ValueError(f"unknown --preset {self.preset!r}; choose one of {sorted(PRESETS)}")
            if self.task not in ("sudoku", "countdown"):
                raise ValueError("--preset (from scratch, tokenizer trained on the task text) needs --task sudoku "
                                 "or --task countdown")
        elif not model:
            raise ValueError("--model is required: the model to finetune (a run folder such as runs/mdlm-small, or a "
                             "public model's folder or hub name); or --preset tiny with --task sudoku/countdown to "
                             "train from scratch")
        elif Path(model).exists() and not (Path(model) / "config.json").is_file():
            raise ValueError(f"--model {model}: not a run folder (expected config.json and weights as "
                             "train/pretrain.py or save_pretrained write them)")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"--dtype {self.dtype!r}: choose float32 or bfloat16")
        if self.lora_r is not None and self.lora_r < 1:
            raise ValueError(f"--lora-r must be >= 1, got {self.lora_r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if (self.data is None) == (self.task is None):
            raise ValueError("give exactly one of --data (a jsonl/parquet file or a hub dataset) or --task "
                             f"({', '.join(TASKS)})")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"unknown --task {self.task!r}; choose one of {TASKS}")
        args = dataclasses.replace(self, model=model, init_from=None)
        if args.ema is None:  # the EMA copies every weight: worth it for our small runs, not for a public model
            args.ema = 0.99 if args.lora_r is None and (args.preset or is_our_run(model)) else 0.0
        if args.mixed_precision is None:
            args.mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        if args.output_dir is None:
            name = args.task or Path(args.data).stem.replace("/", "-")
            args.output_dir = f"runs/sft-{name}"
        return args


def is_our_run(model: str | None) -> bool:
    """Whether `model` is a local run folder of this stack's own model (by its config.json)."""
    from types import SimpleNamespace

    from mdlm.decode.families import detect_family

    config = Path(model or "") / "config.json"
    if not config.is_file():
        return False
    fields = json.loads(config.read_text(encoding="utf-8"))
    profile = detect_family(SimpleNamespace(architectures=fields.get("architectures"),
                                            model_type=fields.get("model_type")))
    return profile is not None and profile.name == "ours"


# ----------------------------------------------------------------------------------------------------
# Data: pairs -> token rows -> batches padded with EOS
# ----------------------------------------------------------------------------------------------------

class PromptResponseData:
    """Tokenized (prompt, response) pairs; indexing with a list of indices gives a padded batch:
    input_ids = prompt + response + EOS..., fixed = True on the prompt."""

    def __init__(self, prompts: list[list[int]], responses: list[list[int]], eos_id: int):
        self.prompts, self.responses, self.eos_id = prompts, responses, eos_id

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, indices) -> dict:
        rows = [self.prompts[i] + self.responses[i] + [self.eos_id] for i in indices]
        length = max(len(r) for r in rows)
        length = -(-length // PAD_MULTIPLE) * PAD_MULTIPLE
        input_ids = torch.full((len(rows), length), self.eos_id, dtype=torch.long)
        fixed = torch.zeros((len(rows), length), dtype=torch.bool)
        for b, (i, row) in enumerate(zip(indices, rows)):
            input_ids[b, : len(row)] = torch.tensor(row)
            fixed[b, : len(self.prompts[i])] = True
        return {"input_ids": input_ids, "fixed": fixed}


def tokenize_pairs(pairs: list[tuple[str, str]], tokenizer, seq_len: int) -> tuple[PromptResponseData, int]:
    """The data, and how many pairs were dropped for not fitting `seq_len` (prompt + response + EOS)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; load it with mdlm.tokenizer.load_tokenizer")
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    responses = tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    kept = [(p, r) for p, r in zip(prompts, responses) if len(p) + len(r) + 1 <= seq_len and r]
    dropped = len(pairs) - len(kept)
    return PromptResponseData([p for p, _ in kept], [r for _, r in kept], tokenizer.eos_token_id), dropped


def _columns(rows: list[dict], prompt_column: str, response_column: str, source: str) -> list[tuple[str, str]]:
    if rows:
        missing = [c for c in (prompt_column, response_column) if c not in rows[0]]
        if missing:
            raise ValueError(f"{source} has no column(s) {missing}; its columns are {sorted(rows[0])}. Pick them "
                             "with --prompt-column / --response-column.")
    pairs = []
    for number, row in enumerate(rows, 1):
        prompt, response = row.get(prompt_column), row.get(response_column)
        # A structured response (object or list) is trained on as its JSON text; a number, null or a
        # non-string prompt is almost always a broken export, and would train on text like "null".
        if not isinstance(prompt, str) or not isinstance(response, (str, dict, list)):
            raise ValueError(f"{source} row {number}: {prompt_column!r} must be a string and {response_column!r} a "
                             f"string (or a JSON object/list), got {type(prompt).__name__} and "
                             f"{type(response).__name__}; fix or drop that row")
        pairs.append((prompt, response if isinstance(response, str) else json.dumps(response)))
    return pairs


def local_pairs(path: Path, prompt_column: str, response_column: str) -> tuple[list, list]:
    """(train, validation) pairs of a local jsonl/parquet file, split by a stable hash of the row."""
    from mdlm.data import split_of

    if path.suffix == ".jsonl":
        from mdlm.data import read_utf8

        rows = []
        for number, line in enumerate(read_utf8(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"--data {path}:{number} is not valid JSON ({error.msg} at column {error.colno}); "
                                 "fix that line (one JSON object per line)") from None
            if not isinstance(rows[-1], dict):
                raise ValueError(f"--data {path}:{number} is not a JSON object; each line must be an object with "
                                 "the prompt and response columns")
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"--data {path}: use a .jsonl or .parquet file of prompt/response rows")
    pairs = _columns(rows, prompt_column, response_column, str(path))
    if not pairs:
        raise ValueError(f"--data {path} holds no rows")
    train = [p for i, p in enumerate(pairs) if split_of(f"{path.name}#{i}") == "train"]
    held = [p for i, p in enumerate(pairs) if split_of(f"{path.name}#{i}") != "train"]
    if not held:  # tiny files: hold out the last row so validation is never empty
        train, held = train[:-1] or train, train[-1:]
    return train, held


def hub_pairs(name: str, prompt_column: str, response_column: str) -> tuple[list, list]:
    import datasets

    try:
        splits = dict(datasets.load_dataset(name))
    except Exception as error:
        raise ValueError(f"could not load the dataset {name!r} ({type(error).__name__}: {error}); give a local "
                         ".jsonl/.parquet file or a hub dataset name") from error
    if "train" not in splits:
        raise ValueError(f"dataset {name!r} has no train split (it has {list(splits)})")
    held_name = next((s for s in ("validation", "test") if s in splits), None)
    if held_name is None:
        parts = splits["train"].train_test_split(test_size=0.01, seed=0)
        splits["train"], splits["validation"], held_name = parts["train"], parts["test"], "validation"
    return (_columns(splits["train"].to_list(), prompt_column, response_column, name),
            _columns(splits[held_name].to_list(), prompt_column, response_column, name))


def task_pairs(task: str, tokenizer, seq_len: int, max_examples: int | None, seed: int = 0) -> tuple[list, list]:
    if task in ("sudoku", "countdown"):
        from mdlm.train.tasks import get_task

        spec = get_task(task)
        train, held = spec.dataset("train", max_examples, seed), spec.dataset("test")
        return list(zip(train["prompt"], train["answer"])), list(zip(held["prompt"], held["answer"]))
    from mdlm.train.tasks.signatures import build_examples

    train = build_examples("train", tokenizer, seq_len, limit=max_examples)
    held = build_examples("validation", tokenizer, seq_len, limit=512)
    return [(e.prompt, e.response) for e in train], [(e.prompt, e.response) for e in held]


def with_chat_template(pairs: list[tuple[str, str]], tokenizer, profile, enabled: bool) -> list[tuple[str, str]]:
    """Each prompt as one user turn of the tokenizer's chat template, for an instruct checkpoint of a chat
    family (as mdlm-generate reads prompts), so that the model is trained on what it will be shown."""
    from mdlm.decode.cli import chat_prompts

    templated = chat_prompts(tokenizer, [(p, None) for p, _ in pairs], profile, enabled)
    return [(prompt, response) for (prompt, _), (_, response) in zip(templated, pairs)]


def build_data(args: SFTArgs, tokenizer, seq_len: int, print_fn=print, profile=None):
    if args.task:
        train, held = task_pairs(args.task, tokenizer, seq_len, args.max_examples, args.seed)
    elif Path(args.data).exists():
        train, held = local_pairs(Path(args.data), args.prompt_column, args.response_column)
    else:
        train, held = hub_pairs(args.data, args.prompt_column, args.response_column)
    if args.max_examples:
        train = train[: args.max_examples]
    if profile is not None:
        train = with_chat_template(train, tokenizer, profile, args.chat_template)
        held = with_chat_template(held, tokenizer, profile, args.chat_template)
    train_data, dropped_train = tokenize_pairs(train, tokenizer, seq_len)
    eval_data, dropped_eval = tokenize_pairs(held, tokenizer, seq_len)
    if dropped_train or dropped_eval:
        print_fn(f"dropped {dropped_train} train and {dropped_eval} validation pairs longer than {seq_len} tokens "
                 "(prompt + response + EOS) or with an empty response")
    if len(train_data) == 0:
        raise ValueError(f"no training pair fits {seq_len} tokens; raise --seq-len (up to the model's context) "
                         "or shorten the data")
    if len(eval_data) == 0:
        eval_data = PromptResponseData(train_data.prompts[-1:], train_data.responses[-1:], train_data.eos_id)
    return train_data, eval_data


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------

def finetune(args: SFTArgs | dict) -> Path:
    """Finetune one run; returns its folder. Works in one process or under accelerate/torchrun."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    from mdlm.train.trainer import Trainer, make_accelerator, objective_loss_fn

    args = SFTArgs.from_dict(args) if isinstance(args, dict) else args
    args = args.resolved()
    if not torch.distributed.is_initialized() and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=True)  # several runs in one Python process
    accelerator = make_accelerator(args.mixed_precision)
    output_dir = Path(args.output_dir)
    options = dataclasses.asdict(args)
    with RunFolder(output_dir, options, accelerator.is_main_process, accelerator.wait_for_everyone) as run:
        set_seed(args.seed)
        accelerator.print("options:\n" + yaml.safe_dump(options, sort_keys=False))
        model, tokenizer, profile = trainable_model(args)
        context = model.context
        seq_len = args.seq_len or context
        if seq_len is None:
            raise ValueError(f"--model {args.model}: its config states no context length; pass --seq-len")
        if context is not None and seq_len > context:
            raise ValueError(f"--seq-len {seq_len} is larger than the model's context of {context} tokens")
        with accelerator.main_process_first():
            train_data, eval_data = build_data(args, tokenizer, seq_len, accelerator.print, profile)
        lora = f", LoRA rank {args.lora_r}" if args.lora_r else ""
        source = f"{args.model} ({profile.name}{lora})" if args.model else f"a fresh {args.preset} model"
        accelerator.print(f"SFT of {source}: {len(train_data)} train and {len(eval_data)} validation pairs "
                          f"(at most {seq_len} tokens); {accelerator.num_processes} process(es) on "
                          f"{accelerator.device}")
        run.save_options()  # only once setup has succeeded
        trainer = Trainer(model, tokenizer, train_data, eval_data, objective_loss_fn("mdlm", args.loss), args,
                          accelerator=accelerator, title=f"sft {args.task or Path(args.data).name}")
        result = trainer.train()
        accelerator.wait_for_everyone()
    return result


def trainable_model(args: SFTArgs):
    """(TrainableDenoiser, tokenizer, family profile) of the run's starting point, with LoRA and
    gradient checkpointing applied as asked. Every family loads through `mdlm.decode.loading`."""
    from mdlm.decode.denoiser import as_denoiser
    from mdlm.decode.families import get_family
    from mdlm.decode.loading import load_denoiser
    from mdlm.tokenizer import load_tokenizer
    from mdlm.trainable import TrainableDenoiser

    if args.preset:
        tokenizer, network = scratch_model(args)
        denoiser, profile = as_denoiser(network), get_family("ours")
    else:
        ours = is_our_run(args.model)  # our runs keep the mask / EOS tokens mdlm.tokenizer ensures
        denoiser, tokenizer, profile = load_denoiser(args.model, family=args.family, dtype=args.dtype,
                                                     trust_remote_code=args.trust_remote_code,
                                                     tokenizer=load_tokenizer(args.model) if ours else None)
        config = denoiser.model.config
        if profile.name == "ours" and (config.objective not in ("mdlm", None) or config.attention == "causal"):
            raise ValueError(f"--model {args.model} is a {config.objective}/{config.attention} model; SFT here "
                             "trains masked diffusion models")
    model = TrainableDenoiser(denoiser, source=args.model)
    if args.lora_r:
        model.add_lora(args.lora_r, args.lora_alpha, args.lora_target, args.lora_dropout)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.train(), tokenizer, profile


def scratch_model(args: SFTArgs):
    """A fresh model of `args.preset` and a byte-level tokenizer trained on the task's train text (one
    token per character, so digits and operators are single tokens). On --resume, the run's own."""
    from mdlm import MDLMConfig, MDLMForMaskedLM
    from mdlm.tokenizer import load_tokenizer, train_tokenizer
    from mdlm.train.tasks import get_task

    torch.manual_seed(args.seed)
    if args.resume and (Path(args.output_dir) / "tokenizer_config.json").exists():
        tokenizer = load_tokenizer(args.output_dir)
    else:
        sample = get_task(args.task).dataset("train", 2000, args.seed)
        tokenizer = train_tokenizer(list(sample["prompt"]) + list(sample["answer"]), vocab_size=TASK_VOCAB)
    sizes = {k: getattr(args, k) for k in ("hidden_size", "num_hidden_layers") if getattr(args, k) is not None}
    config = MDLMConfig.from_preset(args.preset, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id, **sizes)
    return tokenizer, MDLMForMaskedLM(config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS, conflict_handler="resolve")
    choices = {"task": TASKS, "preset": ("tiny", "small", "gpt2"), "loss": ("t-dce", "lambda-dce", "k-dce"),
               "mixed_precision": ("no", "bf16", "fp16"), "dtype": ("float32", "bfloat16")}
    add_option_arguments(parser, SFTArgs, choices)
    # switches (they replace the typed flags add_option_arguments made for these bool fields)
    parser.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true",
                        help="run the modeling code shipped with a --model whose family has no native implementation")
    parser.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                        help="feed prompts as they are, not through an instruct checkpoint's chat template")
    parser.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true",
                        help="recompute activations in the backward pass (less memory, slower)")
    return parser


def with_saved_options(given: dict) -> dict:
    """With --resume, the run's own saved options under the ones given: `--resume --output-dir RUN` (or bare
    `--resume` for the default folder of the given task/data) continues it without the whole command."""
    given = {key.replace("-", "_"): value for key, value in given.items()}
    if not given.get("resume"):
        return given
    output_dir = given.get("output_dir")
    if output_dir is None and (given.get("task") or given.get("data")):
        output_dir = f"runs/sft-{given.get('task') or Path(given['data']).stem.replace('/', '-')}"
    if output_dir is None:
        raise ValueError("--resume needs --output-dir: the run folder to continue")
    saved = RunFolder.read_options(output_dir)
    if saved is None:
        return given  # nothing saved yet: the given options start the run (the trainer says so)
    saved.pop("init_from", None)
    return {**saved, **given}


def main(argv: list[str] | None = None) -> None:
    from mdlm.decode.cli_errors import run_main

    run_main("sft", lambda: finetune(SFTArgs.from_dict(with_saved_options(vars(build_parser().parse_args(argv))))))


if __name__ == "__main__":
    main()
