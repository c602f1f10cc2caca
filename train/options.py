"""Options of a training script as one dataclass: each field declares its help, its range and its choices,
and the command-line flags, the YAML file (`--config-file`) and the checks are all built from it, so an
option is one edit (the TRL / transformers `metadata={"help": ...}` way, with ranges added).

    @dataclass
    class MyArgs(TrainerConfig):
        width: int | None = option(None, "model width", at_least=1)
        mode: str = option("fast", "fast | exact", choices=("fast", "exact"))

    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    add_option_arguments(parser, MyArgs)            # --width, --mode, --resume, --overwrite, --no-progress
    args = options_from_dict(MyArgs, {**read_config_file(path), **given}, "my_script.py")
    validate_options(args, "my_script.py")          # types, ranges and choices; one line naming the option

Layering (defaults < YAML file < command line) is the scripts' business; this module only turns a field
into a flag and checks a value against its field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from pathlib import Path


def option(default, help: str, *, at_least=None, above=None, at_most=None, below=None, choices=None):
    """A dataclass field with its command-line help and, optionally, its range (`at_least` <= value,
    `above` < value, value <= `at_most`, value < `below`) and its `choices`. None always passes the range
    (it means "the default" where the field allows None)."""
    metadata = {"help": help}
    bounds = {"at_least": at_least, "above": above, "at_most": at_most, "below": below}
    if any(bound is not None for bound in bounds.values()):
        metadata["range"] = {k: v for k, v in bounds.items() if v is not None}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return field(default=default, metadata=metadata)


# Ranges of common option names, for options classes whose fields do not declare one (a field's own range
# wins). Every run before ranges moved onto the fields was checked with these.
COMMON_RANGES = {
    **{name: {"at_least": 1} for name in (
        "max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "save_every", "log_every",
        "keep_checkpoints", "seq_len", "vocab_size", "max_documents", "max_examples", "first_save", "stop_at_step",
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings",
        "block_size")},
    **{name: {"at_least": 0} for name in ("warmup_steps", "weight_decay", "grad_clip", "seed")},
    "min_lr_ratio": {"at_least": 0, "at_most": 1},
    "lr": {"above": 0},
    "ema": {"at_least": 0, "below": 1},
    "dropout": {"at_least": 0, "below": 1},
}


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def range_error(flag: str, value, bounds: dict) -> str | None:
    """The message for `value` outside `bounds` (an `option` range), or None when it is inside."""
    low, high = bounds.get("at_least"), bounds.get("at_most")
    above, below = bounds.get("above"), bounds.get("below")
    if (low is not None and value < low) or (above is not None and value <= above) \
            or (high is not None and value > high) or (below is not None and value >= below):
        if low is not None and (high is not None or below is not None):
            closing = f"{high}]" if high is not None else f"{below})"
            return f"{flag} must be in [{low}, {closing}, got {value!r}"
        if low is not None:
            return f"{flag} must be >= {low}, got {value!r}"
        if above is not None:
            return f"{flag} must be > {above}, got {value!r}"
        return f"{flag} must be {'<=' if high is not None else '<'} {high if high is not None else below}, got {value!r}"
    return None


def type_error(flag: str, value, kind: str) -> str | None:
    """The message for `value` not of the annotation `kind` ("int", "float | None", ...), or None. A YAML
    file can give any type, so this is checked for every option before it is used."""
    if value is None:
        return None if "None" in kind else f"{flag} needs a value ({kind})"
    base = kind.replace(" | None", "").replace("Optional[", "").rstrip("]")
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str), "bool": isinstance(value, bool)}.get(base, True)
    if not ok:
        return (f"{flag} must be {'an' if base == 'int' else 'a'} {base}, got {value!r} ({type(value).__name__}); "
                "fix it on the command line or in the YAML file")
    if base == "float" and not math.isfinite(value):
        return f"{flag} must be a finite number, got {value!r}"
    return None


def validate_options(options, script: str) -> None:
    """Check every field of the options dataclass `options` against its annotation (int, float, str, bool,
    optionally None), its range and its choices, before any work; the error names the option and the fix."""
    import torch

    for f in dataclasses.fields(options):
        value, flag = getattr(options, f.name), flag_of(f.name)
        problem = type_error(flag, value, str(f.type))
        if problem:
            raise ValueError(problem + ("" if value is not None else f"; see `python {script} --help`"))
        if value is None or isinstance(value, bool):
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"unknown {flag} {value!r}; choose one of {', '.join(map(str, choices))}")
        bounds = f.metadata.get("range", COMMON_RANGES.get(f.name))
        if bounds and isinstance(value, (int, float)):
            problem = range_error(flag, value, bounds)
            if problem:
                raise ValueError(problem)
    if getattr(options, "mixed_precision", "no") == "fp16" and not torch.cuda.is_available():
        raise ValueError("--mixed-precision fp16 needs a CUDA GPU (its loss scaling has no CPU path); on CPU use "
                         "--mixed-precision bf16 or no")


def describe(f: dataclasses.Field, unset: str = "None") -> str:
    """The --help line of an option field: its help text and default (`unset` names what None means)."""
    text = f.metadata.get("help", "")
    if "default" not in text:
        text += f" (default: {unset if f.default is None else f.default})"
    return text


def add_option_arguments(parser, cls, choices: dict | None = None, unset: str = "None") -> None:
    """One typed --flag per field of the options dataclass `cls`, with the field's help and choices;
    --resume (bare: "latest"), --overwrite and --no-progress are flags. Pair with
    `argument_default=argparse.SUPPRESS` so that only the options given override a YAML file or saved
    options. `choices` adds choices by field name for fields that do not declare them."""
    import argparse

    choices = choices or {}
    for f in dataclasses.fields(cls):
        if f.name in ("resume", "overwrite", "progress"):
            continue
        kind = {"int | None": int, "int": int, "float | None": float, "float": float}.get(str(f.type), str)
        parser.add_argument(flag_of(f.name), dest=f.name, type=kind,
                            choices=f.metadata.get("choices", choices.get(f.name)), help=describe(f, unset))
    parser.add_argument("--resume", nargs="?", const="latest", dest="resume", default=argparse.SUPPRESS,
                        help="continue the run in --output-dir from its last checkpoint, or from the given one")
    parser.add_argument("--overwrite", action="store_true", dest="overwrite", default=argparse.SUPPRESS,
                        help="replace a run already in --output-dir")
    parser.add_argument("--no-progress", action="store_false", dest="progress", default=argparse.SUPPRESS,
                        help="no progress bar")


def read_config_file(path) -> dict:
    """The options of a `--config-file` YAML (keys are option names), checked to be a readable mapping of
    plain values: a syntax error or a Python tag (`!!python/object`, which safe_load never builds) is one
    line naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config-file {path} does not exist")
    try:
        options = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ValueError(f"--config-file {path} is not UTF-8 text; pass a YAML file of option: value lines") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"--config-file {path}: not plain YAML{at}: {problem}; write option: value lines "
                         "(plain numbers, strings, lists; no !!python tags)") from None
    if not isinstance(options, dict):
        raise ValueError(f"--config-file {path} must hold a mapping of option names to values")
    return options


def options_from_dict(cls, options: dict, script: str):
    """Build the options dataclass `cls` from a dict whose keys may use dashes (YAML / CLI spelling)."""
    names = {f.name for f in dataclasses.fields(cls)}
    normalised = {str(key).replace("-", "_"): value for key, value in options.items()}
    unknown = sorted(set(normalised) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; run `python {script} --help` for the list")
    return cls(**normalised)
