"""Pretrain a masked diffusion language model (or its autoregressive baseline) on a text corpus.

    accelerate launch train/pretrain.py                       # the `small` model on the stdlib corpus
    python train/pretrain.py --config tiny --max-steps 100    # seconds, for a smoke test
    torchrun --nproc_per_node 2 train/pretrain.py             # two processes (gloo on CPU)
    mdlm-pretrain --objective ar --output-dir runs/ar-small   # the AR baseline, same backbone

Options are layered: built-in defaults < the preset's training defaults (`--config tiny|small|gpt2`)
< a YAML file (`--config-file`, keys are option names) < the command line. The resolved options are
printed at start and saved as `run_options.yaml` in the run folder. Python API: `train(PretrainArgs(...))`
or `train({"config": "tiny", ...})` returns the run folder. The training loop itself is `train/trainer.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from mdlm.config import ATTENTION_MODES, PRESETS
from mdlm.train.options import add_option_arguments, option, options_from_dict, read_config_file, validate_options
from mdlm.train.run_folder import RunFolder
from mdlm.train.trainer import TrainerConfig

OBJECTIVES = ("mdlm", "ar", "as-arm")
LOSSES = ("t-dce", "lambda-dce", "k-dce")
MODEL_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "dropout", "rope_theta")

# Training defaults per preset. `small`: 1.15 s per step of 16 x 256 tokens measured on 2 quiet CPU cores, so
# 1500 steps (6.1M tokens) take about 30 minutes, and 3-4 s per step (1.5 h) when other jobs share the cores;
# its first checkpoint comes at step 20 (under a minute), then every 100 steps. `tiny` takes a few minutes.
PRESET_TRAINING = {
    "tiny": dict(vocab_size=512, seq_len=64, batch_size=16, max_steps=200, lr=3e-3, warmup_steps=20,
                 ema=0.99, eval_every=50, eval_batches=8, save_every=100, log_every=10, max_documents=100),
    "small": dict(vocab_size=4096, seq_len=256, batch_size=16, max_steps=1500, lr=1e-3, warmup_steps=100,
                  ema=0.999, eval_every=100, eval_batches=16, save_every=100, log_every=10, max_documents=None,
                  first_save=20),
    "gpt2": dict(vocab_size=16384, seq_len=1024, batch_size=16, max_steps=100_000, lr=3e-4, warmup_steps=2500,
                 ema=0.9999, eval_every=1000, eval_batches=32, save_every=1000, log_every=50, max_documents=None),
}


@dataclass
class PretrainArgs(TrainerConfig):
    """Every option of a pretraining run: the training loop's (`TrainerConfig`) and these. None means "the
    preset's default" (see PRESET_TRAINING)."""

    # data
    dataset: str = option("stdlib", 'stdlib | local .txt/.jsonl/.parquet file or folder | hub name[:config]')
    text_column: str | None = option(None, 'column of jsonl/parquet/hub data (default "text")')
    max_documents: int | None = option(None, 'use only the first N training documents (tiny preset: 100)', at_least=1)
    tokenizer: str | None = option(None, 'default: a byte-level BPE trained on the train split; or an HF name/path')
    vocab_size: int | None = option(None, 'of the trained BPE', at_least=1)
    seq_len: int | None = option(None, 'tokens per training sequence (packed block)', at_least=1)
    # model
    config: str = option("small", 'preset: tiny | small | gpt2', choices=sorted(PRESETS))
    hidden_size: int | None = option(None, 'model width (overrides the preset)', at_least=1)
    num_hidden_layers: int | None = option(None, 'transformer blocks', at_least=1)
    num_attention_heads: int | None = option(None, 'attention heads', at_least=1)
    intermediate_size: int | None = option(None, 'MLP width', at_least=1)
    max_position_embeddings: int | None = option(None, "the model's context in tokens", at_least=1)
    dropout: float | None = option(None, 'dropout rate', at_least=0, below=1)
    rope_theta: float | None = option(None, 'rotary embedding base')
    objective: str = option("mdlm", 'mdlm | ar | as-arm', choices=OBJECTIVES)
    loss: str = option("t-dce", 't-dce | lambda-dce | k-dce (masked objective only)', choices=LOSSES)
    attention: str | None = option(None, 'bidirectional | causal | block-causal (default: from the objective)',
                                  choices=ATTENTION_MODES)
    block_size: int | None = option(None, 'attention block of block-causal attention', at_least=1)
    init_from: str | None = option(None, "start from another run's weights (and tokenizer)")
    config_file: str | None = option(None, 'YAML file of options (keys are option names)')
    # the loop's options whose default here is the preset's (filled in by `resolved`)
    output_dir: str | None = option(None, 'default runs/<objective>-<config>')
    max_steps: int | None = option(None, 'optimizer steps', at_least=1)
    batch_size: int | None = option(None, 'sequences per process per micro-batch', at_least=1)
    lr: float | None = option(None, 'peak AdamW learning rate', above=0)
    warmup_steps: int | None = option(None, 'linear warmup steps', at_least=0)
    ema: float | None = option(None, 'EMA decay; 0 disables it (the saved model is the EMA)', at_least=0, below=1)
    eval_every: int | None = option(None, 'validate every N steps', at_least=1)
    eval_batches: int | None = option(None, 'validation batches per evaluation', at_least=1)
    save_every: int | None = option(None, 'checkpoint every N steps', at_least=1)
    log_every: int | None = option(None, 'log training loss and tokens/s every N steps', at_least=1)

    @classmethod
    def from_dict(cls, options: dict) -> "PretrainArgs":
        return options_from_dict(cls, options, "train/pretrain.py")

    def resolved(self) -> "PretrainArgs":
        """A copy with preset defaults filled in and the options checked (types, ranges and choices as the
        fields declare them)."""
        if self.config not in PRESETS:  # first: the preset's defaults are read from it
            raise ValueError(f"unknown --config {self.config!r}; choose one of {sorted(PRESETS)}")
        args = dataclasses.replace(self)
        for key, value in PRESET_TRAINING[self.config].items():
            if getattr(args, key) is None and key != "max_documents":
                setattr(args, key, value)
        validate_options(args, "train/pretrain.py")
        from mdlm.data import check_local_path

        check_local_path("--tokenizer", args.tokenizer)
        if args.init_from is not None and not (Path(args.init_from) / "config.json").is_file():
            raise ValueError(f"--init-from {args.init_from}: not a run folder (no config.json there); pass the "
                             "folder of a finished run, e.g. runs/mdlm-small")
        if args.dataset != "stdlib":
            check_local_path("--dataset", args.dataset, "file or folder")
        if args.max_documents is None and args.dataset == "stdlib":
            args.max_documents = PRESET_TRAINING[self.config]["max_documents"]
        if args.objective == "ar":
            if args.attention not in (None, "causal"):
                raise ValueError(f"--objective ar trains next-token prediction and needs causal attention, "
                                 f"not --attention {args.attention}")
            args.attention = "causal"
        args.attention = args.attention or "bidirectional"
        args.output_dir = default_output_dir(dataclasses.asdict(args))
        context = args.max_position_embeddings or PRESETS[args.config]["max_position_embeddings"]
        if args.seq_len > context and args.init_from is None:
            raise ValueError(f"--seq-len {args.seq_len} is larger than the model's context of {context} tokens; "
                             f"lower --seq-len or raise --max-position-embeddings")
        return args

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only options actually given override the YAML file
    )
    add_option_arguments(parser, PretrainArgs, unset="preset")  # choices and ranges come from the fields
    return parser


def parse_args(argv: list[str] | None = None) -> PretrainArgs:
    given = vars(build_parser().parse_args(argv))
    options = {}
    if given.get("config_file"):
        options = read_config_file(given["config_file"])
    options.update(given)
    return PretrainArgs.from_dict(with_saved_options(options))


def with_saved_options(options: dict) -> dict:
    """When resuming, the run's own saved options under the ones given (only those given change)."""
    options = {key.replace("-", "_"): value for key, value in options.items()}
    saved = RunFolder.read_options(default_output_dir(options)) if options.get("resume") else None
    return {**saved, **options} if saved else options


def default_output_dir(options: dict) -> str:
    return options.get("output_dir") or f"runs/{options.get('objective', 'mdlm')}-{options.get('config', 'small')}"


# ----------------------------------------------------------------------------------------------------
# Building the pieces
# ----------------------------------------------------------------------------------------------------

def build_tokenizer(args: PretrainArgs):
    from mdlm.tokenizer import corpus_tokenizer, load_tokenizer

    if args.resume and (Path(args.output_dir) / "tokenizer_config.json").exists():
        return load_tokenizer(args.output_dir)  # the run's own tokenizer, even where no cache exists
    if args.tokenizer:
        return load_tokenizer(args.tokenizer)
    if args.init_from:
        return load_tokenizer(args.init_from)
    return corpus_tokenizer(args.dataset, args.vocab_size, args.text_column, args.max_documents)


def load_model(run: str):
    """The model of a run folder; a damaged weights file is named in one line."""
    from mdlm import MDLMForMaskedLM

    try:
        return MDLMForMaskedLM.from_pretrained(run)
    except Exception as error:  # safetensors, torch and transformers raise many types for a bad file
        raise ValueError(f"--init-from {run}: cannot load the model ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:200]}); the weights are damaged or not an mdlm run: "
                         "retrain or copy the run folder again") from None


def build_model(args: PretrainArgs, tokenizer):
    from mdlm import MDLMConfig, MDLMForMaskedLM

    structure = dict(attention=args.attention, objective=args.objective)
    if args.block_size is not None:
        structure["block_size"] = args.block_size
    if args.init_from:
        model = load_model(args.init_from)
        if model.config.vocab_size < len(tokenizer):
            raise ValueError(f"--init-from {args.init_from}: its vocabulary ({model.config.vocab_size}) does not "
                             f"cover the tokenizer ({len(tokenizer)} tokens); use the run's own tokenizer")
        for key, value in structure.items():
            setattr(model.config, key, value)
    else:
        overrides = {k: getattr(args, k) for k in MODEL_FIELDS if getattr(args, k) is not None}
        config = MDLMConfig.from_preset(
            args.config, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, **overrides, **structure)
        model = MDLMForMaskedLM(config)
    if args.seq_len > model.config.max_position_embeddings:
        raise ValueError(f"--seq-len {args.seq_len} is larger than the model's context of "
                         f"{model.config.max_position_embeddings} tokens; lower --seq-len")
    return model


def train(args: PretrainArgs | dict) -> Path:
    """Train one run; returns its folder. Works in a single process or under accelerate/torchrun.
    With a dict and `resume`, the run's saved options fill in what the dict does not give."""
    import torch
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    from mdlm.data import packed_split
    from mdlm.train.trainer import Trainer, make_accelerator, objective_loss_fn

    args = PretrainArgs.from_dict(with_saved_options(args)) if isinstance(args, dict) else args
    args = args.resolved()
    if not torch.distributed.is_initialized() and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=True)  # several runs in one Python process
    accelerator = make_accelerator(args.mixed_precision)
    output_dir = Path(args.output_dir)
    with RunFolder(output_dir, args.to_dict(), accelerator.is_main_process, accelerator.wait_for_everyone) as run:
        set_seed(args.seed)  # model initialisation: the same on every process
        accelerator.print("options:\n" + yaml.safe_dump(args.to_dict(), sort_keys=False))

        with accelerator.main_process_first():  # the main process tokenizes and caches; the others read the cache
            tokenizer = build_tokenizer(args)
            train_data = packed_split(args.dataset, "train", tokenizer, args.seq_len, args.text_column,
                                      args.max_documents)
            eval_data = packed_split(args.dataset, "validation", tokenizer, args.seq_len, args.text_column)
        model = build_model(args, tokenizer)
        accelerator.print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                          f"{model.config.attention} attention; data: {len(train_data)} train and {len(eval_data)} "
                          f"validation blocks of {args.seq_len} tokens; {accelerator.num_processes} process(es) "
                          f"on {accelerator.device}")
        run.save_options()  # only once setup has succeeded
        trainer = Trainer(model, tokenizer, train_data, eval_data, objective_loss_fn(args.objective, args.loss),
                          args, accelerator=accelerator, title=f"{args.objective} {args.config}")
        result = trainer.train()
        accelerator.wait_for_everyone()
    return result


def main(argv: list[str] | None = None) -> None:
    from mdlm.decode.cli_errors import run_main

    run_main("pretrain", lambda: train(parse_args(argv)))


if __name__ == "__main__":
    main()
