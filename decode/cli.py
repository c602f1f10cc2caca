"""`mdlm-generate` (also `python -m mdlm.decode`): generate text from a saved run with any decoder.

    mdlm-generate --model runs/x --prompt "def parse(" --max-new-tokens 128 --sampler first-hitting
    mdlm-generate --model runs/x --prompt-file start.py --max-new-tokens 64   # the whole file is one prompt
    mdlm-generate --model runs/x --prompts-file prompts.jsonl --format jsonl --num-samples 4 --seed 0
    mdlm-generate --model runs/x --infill "def add(a, b):" "    return result" --max-new-tokens 24
    mdlm-generate --model runs/x --prompt "class " --live --trace trace.html
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from mdlm.decode.config import DecodeConfig
from mdlm.decode.trace_html import MASK_GLYPH


class CLIError(ValueError):
    """A problem with the user's input, reported as one clear line."""


def add_decode_arguments(group) -> None:
    """One flag per `DecodeConfig` field that the command line offers, built from the field's metadata
    (help, choices, flag names; `mdlm.decode.config.option`): adding a decoding option is one field. A
    flag that is not given is absent from the parsed arguments, so the field's default (or the family's,
    for the unmasking schedule) applies."""
    for f in dataclasses.fields(DecodeConfig):
        if not f.metadata.get("cli", False):
            continue
        flags = f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),)
        text = f.metadata["help"]
        if str(f.type) == "bool":  # a flag turns the default over: --eoser, --no-cache
            group.add_argument(*flags, dest=f.name, action="store_false" if f.default else "store_true",
                               default=argparse.SUPPRESS, help=text)
            continue
        kind = {"int": int, "int | None": int, "float": float, "float | None": float}.get(str(f.type), str)
        choices = f.metadata.get("choices")
        if "default" not in text and f.default is not None:
            text += f" (default: {f.default})"
        group.add_argument(*flags, dest=f.name, type=kind, choices=list(choices) if choices is not None else None,
                           default=argparse.SUPPRESS, help=text)


def decode_flags_given(args) -> dict:
    """The DecodeConfig fields given on the command line (name -> value)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(DecodeConfig)
            if f.metadata.get("cli", False) and hasattr(args, f.name)}


FLAGS_TABLE_MARKERS = ("<!-- flags:decode -->", "<!-- /flags:decode -->")


def flags_table() -> str:
    """The Markdown table of the decoding flags, from the same field metadata as the parser (the docs
    page docs/decoding.md holds it between FLAGS_TABLE_MARKERS; `update_flags_table` rewrites it)."""
    lines = ["| flag | values | default | what |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(DecodeConfig):
        if not f.metadata.get("cli", False):
            continue
        flags = ", ".join(f"`{flag}`" for flag in f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),))
        choices = f.metadata.get("choices")
        if str(f.type) == "bool":
            values, default = "(switch)", "off"
        else:
            values = ", ".join(f"`{c}`" for c in choices) if choices is not None else str(f.type).split(" |")[0]
            default = "" if f.default is None else f"`{f.default}`"
        what = f.metadata["help"].replace("|", "\\|")
        lines.append(f"| {flags} | {values} | {default} | {what} (`DecodeConfig.{f.name}`) |")
    return "\n".join(lines)


def update_flags_table(path: str = "docs/decoding.md") -> None:
    """Rewrite the flags table of a docs page between its FLAGS_TABLE_MARKERS."""
    page = Path(path).read_text(encoding="utf-8")
    start, end = FLAGS_TABLE_MARKERS
    head, rest = page.split(start, 1)
    tail = rest.split(end, 1)[1]
    Path(path).write_text(f"{head}{start}\n{flags_table()}\n{end}{tail}", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mdlm-generate", description="Generate text with a masked diffusion LM run.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="run folder (config.json, model.safetensors, tokenizer files), "
                   "a public model's folder or hub name")
    p.add_argument("--family", default=None, help="model family (default: detected from the config): "
                   "ours, bert, roberta, modernbert, llada, llada-moe, llada2, dream, sdar, mdlm-owt, bd3lm, masked-lm")
    p.add_argument("--trust-remote-code", action="store_true", help="run the modeling code a checkpoint ships with "
                   "(LLaDA, Dream, SDAR, MDLM-OWT, BD3-LM need it)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--no-chat-template", action="store_true", help="pass prompts as raw text to an instruct model "
                   "(default: its tokenizer's chat template, one user turn per prompt)")
    src = p.add_argument_group("prompts")
    src.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    src.add_argument("--prompt-file", action="append", default=[], help="a file whose whole text is one prompt "
                     "(repeat for several)")
    src.add_argument("--prompts-file", help="prompts, one per line, or JSONL with 'prompt' (and 'suffix'); with "
                     "--schema each prompt gives one JSON object")
    src.add_argument("--infill", nargs=2, metavar=("PREFIX", "SUFFIX"), help="generate between a prefix and a suffix")
    src.add_argument("--schema", help="JSON schema file: decode a JSON object that follows it")
    dec = p.add_argument_group("decoding", "one flag per DecodeConfig field (mdlm.decode.config)")
    dec.add_argument("--max-new-tokens", type=int, default=64)
    add_decode_arguments(dec)
    run = p.add_argument_group("run")
    run.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    run.add_argument("--batch-size", type=int, default=16, help="rows decoded together")
    run.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    out = p.add_argument_group("output")
    out.add_argument("--format", default="text", choices=("text", "jsonl"))
    out.add_argument("--live", action="store_true", help="show the canvas filling in step by step")
    out.add_argument("--trace", metavar="HTML", help="write a self-contained HTML page replaying the decoding")
    return p


def read_prompts(args) -> list[tuple[str, str | None]]:
    """(prompt, suffix or None) pairs from --prompt, --infill and --prompts-file."""
    for text in args.prompt + list(args.infill or []):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise CLIError(f"--prompt/--infill {text!r} is not valid UTF-8 text; pass UTF-8 (or use --prompt-file "
                           "with a UTF-8 file)") from None
    prompts = [(text, None) for text in args.prompt]
    if args.infill:
        prompts.append((args.infill[0], args.infill[1]))
    for name in args.prompt_file:
        prompts.append((read_utf8_file("--prompt-file", Path(name)), None))
    if args.prompts_file:
        path = Path(args.prompts_file)
        lines = [line for line in read_utf8_file("--prompts-file", path).splitlines() if line.strip()]
        as_jsonl = path.suffix == ".jsonl" or (lines and lines[0].lstrip().startswith("{"))
        for number, line in enumerate(lines, 1):
            if not as_jsonl:
                prompts.append((line, None))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CLIError(f"{path}:{number} is not valid JSON ({error.msg}); use one JSON object per line "
                               "or a plain-text file with one prompt per line") from None
            if isinstance(record, str):
                prompts.append((record, None))
            elif isinstance(record, dict) and isinstance(record.get("prompt"), str):
                if not isinstance(record.get("suffix", ""), (str, type(None))):
                    raise CLIError(f"{path}:{number}: 'suffix' must be a string, got {record['suffix']!r}")
                prompts.append((record["prompt"], record.get("suffix")))
            else:
                raise CLIError(f"{path}:{number}: expected a string or an object with a 'prompt' string")
    if not prompts:
        raise CLIError("no prompt given; use --prompt TEXT, --prompt-file FILE, --prompts-file FILE or --infill "
                       "PREFIX SUFFIX")
    return prompts


def read_utf8_file(flag: str, path: Path) -> str:
    if not path.is_file():
        raise CLIError(f"{flag} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CLIError(f"{flag} {path} is not UTF-8 text (byte {error.start} cannot be decoded); save it as "
                       "UTF-8") from None


def check_device(device: str | None) -> str:
    """The device to run on; a name torch does not know, or CUDA where there is none, is an error."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise CLIError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: this machine has no CUDA GPU (torch {torch.__version__}); use --device cpu")
    return device


def check_writable(flag: str, path: str) -> None:
    """Before any decoding: the output goes to a folder that exists and can be written."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise CLIError(f"{flag} {path}: the folder {folder} does not exist; create it or write elsewhere")
    if not os.access(folder, os.W_OK) or (Path(path).exists() and not os.access(path, os.W_OK)):
        raise CLIError(f"{flag} {path}: cannot write there (permission denied); choose a writable path")


def load_run(path: str, device: str | None, family: str | None = None, trust_remote_code: bool = False,
             dtype: str = "float32"):
    """(denoiser, tokenizer, profile) of a run folder or a public model (`mdlm.decode.loading`), with clear
    errors for anything else; an autoregressive run is refused (it cannot fill masks)."""
    from mdlm.decode.loading import load_denoiser

    device = check_device(device)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Loading weights" bar before every generation
    try:
        denoiser, tokenizer, profile = load_denoiser(path, family=family, dtype=dtype, device=device,
                                                     trust_remote_code=trust_remote_code)
    except (ValueError, FileNotFoundError) as error:
        raise CLIError(str(error)) from None
    if denoiser.attention == "causal":
        raise CLIError(f"{path} is an autoregressive run (causal attention): it cannot fill masks; mdlm-generate "
                       "decodes masked diffusion runs (evaluate AR runs with mdlm-eval)")
    if denoiser.mask_token_id is None:
        raise CLIError(f"the run in {path} has no mask token; this is not a masked diffusion run")
    return denoiser, tokenizer, profile


def chat_prompts(tokenizer, prompts: list[tuple[str, str | None]], profile, enabled: bool):
    """Instruct checkpoints of a chat family read each prompt as one user turn of the tokenizer's chat
    template (an infill prompt keeps its raw text: a suffix has no place in a chat turn)."""
    if not (enabled and profile.chat_template and getattr(tokenizer, "chat_template", None)):
        return prompts
    return [(p if s is not None else tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                                   add_generation_prompt=True), s)
            for p, s in prompts]


def family_schedule(args) -> str:
    """The loaded family's own unmasking schedule (Dream's), else uniform."""
    from mdlm.decode.families import FAMILY_REGISTRY

    profile = FAMILY_REGISTRY.get(getattr(args, "profile_name", "ours"))
    return getattr(profile, "schedule", None) or "uniform"


def config_from_args(args, tokenizer) -> DecodeConfig:
    """The DecodeConfig of the command line: the flags given, the family's unmasking schedule when none is
    given, the end-of-text id of the one stop rule (`completion_stop_ids`) for EOSER, a trace for --trace."""
    given = decode_flags_given(args)
    if given.get("use_cache") is False and given.get("approximate_prefix_cache"):
        raise CLIError("--no-cache and --approximate-prefix-cache contradict each other; give one of them")
    objective = getattr(args, "objective", None)
    if given.get("sampler") == "assd" and (getattr(args, "profile_name", "ours") != "ours" or objective != "as-arm"):
        what = f"a {objective} run" if getattr(args, "profile_name", "ours") == "ours" else \
            f"a {args.profile_name} model (one stream, no two-stream any-subset forward)"
        raise CLIError(f"--sampler assd needs an any-subset AR run (trained with --objective as-arm); {args.model} "
                       f"is {what}: use --sampler confidence or first-hitting")
    try:
        return DecodeConfig(**{"unmasking_schedule": family_schedule(args), **given},
                            eos_token_id=getattr(args, "eos_token_id", tokenizer.eos_token_id),
                            trace=bool(getattr(args, "trace", None)))
    except ValueError as error:
        raise CLIError(str(error)) from None


class CanvasSeen:
    """A `Watcher` that keeps the canvas of the batch (the trace page needs its padding) and nothing else."""

    canvas = None

    def start(self, canvas) -> None:
        self.canvas = canvas

    def step(self, trace_step) -> None:
        pass

    def finish(self, result) -> None:
        pass


class LiveCanvas(CanvasSeen):
    """A rich Live view of the batch's canvases, drawn from the decoder's steps (a `Watcher` of
    `mdlm.decode.generate.generate_with_result`). Masks are drawn as a dim square; the final text is
    printed once, by the caller, so the view is cleared when the batch is done.

    Steps of samplers that record no x0 only say where tokens were revealed; their values appear in the
    next step's state (or the final tokens), so each step is drawn once the next one arrives."""

    def __init__(self, tokenizer, console, mask_id: int):
        from rich.live import Live

        self.tokenizer, self.mask_id = tokenizer, mask_id
        self.live = Live(console=console, refresh_per_second=12, transient=True)
        self.valid, self.pending, self.step_number = None, None, 0

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        return self.live.__exit__(*exc)

    def start(self, canvas) -> None:
        self.canvas, self.valid, self.pending, self.step_number = canvas, canvas.valid, None, 0

    def step(self, trace_step) -> None:
        self._flush(trace_step.state)
        self.pending = trace_step

    def finish(self, result) -> None:
        self._flush(result.tokens.cpu())

    def _flush(self, next_state) -> None:
        if self.pending is not None:
            if self.pending.x0 is None:
                self.pending.x0 = next_state
            self.show(self.pending)
            self.pending = None

    def show(self, trace_step) -> None:
        from rich.console import Group
        from rich.text import Text

        self.step_number += 1
        lines = [Text(f"step {self.step_number}: revealed {int(trace_step.revealed.sum())}", style="bold")]
        after = trace_step.state.clone()
        after[trace_step.revealed] = trace_step.x0[trace_step.revealed]
        # uniform noise (DiffusionGemma): a re-noised position holds a fresh noise token (x0), not a mask
        noise = getattr(self, "noise", False)
        after[trace_step.remasked] = trace_step.x0[trace_step.remasked] if noise else self.mask_id
        for b in range(after.shape[0]):
            line = Text()
            for i, token in enumerate(after[b].tolist()):
                if self.valid is not None and not bool(self.valid[b, i]):
                    continue
                if token == self.mask_id:
                    line.append(MASK_GLYPH, style="dim")
                elif bool(trace_step.revealed[b, i]):
                    line.append(self.tokenizer.decode([token]), style="bold green")
                elif noise and bool(trace_step.remasked[b, i]):
                    line.append(self.tokenizer.decode([token]), style="dim red")
                else:
                    line.append(self.tokenizer.decode([token]))
            lines.append(line)
        self.live.update(Group(*lines))
        if not self.live.console.is_terminal:
            # Not a terminal (a pipe, a log file): the transient view is never drawn, so say each step once.
            self.live.console.print(lines[0])


def generate_rows(denoiser, tokenizer, rows, args, config, console):
    """Decode `rows` [(prompt, suffix)] through `mdlm.decode.generate` in batches of --batch-size (batch
    starting at row k seeded with seed + k); yield (row index, completion, result, seconds, (the batch's
    valid mask when it was watched, the row's offset in the batch))."""
    from mdlm.decode.generate import generate_with_result

    for start in range(0, len(rows), args.batch_size):
        batch = rows[start:start + args.batch_size]
        suffixes = None if all(s is None for _, s in batch) else [s or "" for _, s in batch]
        batch_config = config if config.seed is None else replace(config, seed=config.seed + start)
        watch = LiveCanvas(tokenizer, console, denoiser.mask_token_id) if args.live else \
            CanvasSeen() if args.trace else None
        if args.live:  # re-noised positions are shown as their noise tokens on a uniform-noise model
            watch.noise = getattr(denoiser, "corruption", "absorbing") == "uniform"
        began = time.perf_counter()
        with watch if args.live else _nothing():
            texts, result, generated = generate_with_result(denoiser, tokenizer, [p for p, _ in batch],
                                                            args.max_new_tokens, batch_config, suffixes, watch=watch)
        seconds = time.perf_counter() - began
        for offset, completion in enumerate(texts):
            yield start + offset, completion, result, seconds, (watch.canvas.valid if watch else None, offset)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run_schema(model, tokenizer, rows, args, config, console) -> int:
    try:
        from mdlm.decode.schema import SchemaFitError, UnsupportedSchemaError, generate_json
    except ImportError as error:
        raise CLIError(f"--schema needs mdlm.decode.schema, which cannot be imported here ({error})") from None
    path = Path(args.schema)
    if not path.is_file():
        raise CLIError(f"--schema {path} does not exist")
    if any(suffix is not None for _, suffix in rows):
        raise CLIError("--schema decodes a whole JSON object after the prompt; it takes no suffix (--infill or a "
                       "'suffix' in --prompts-file): drop one of them")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CLIError(f"--schema {path} is not valid JSON ({error.msg})") from None
    for index, (prompt, _) in enumerate(rows):
        began = time.perf_counter()
        try:
            output = generate_json(model, tokenizer, prompt, schema, config)
        except (UnsupportedSchemaError, SchemaFitError, ValueError) as error:
            raise CLIError(f"--schema {path}: {error}") from None
        seconds = time.perf_counter() - began
        if args.format == "jsonl":
            print(json.dumps({"index": index, "prompt": prompt, "completion": output.text, "valid": output.valid,
                              "nfe": output.nfe, "time_s": round(seconds, 4)}))
        else:
            print(json.dumps(output.value, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    from mdlm.decode.cli_errors import run_main

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_main("mdlm-generate", _main, args)
    except SystemExit as stop:
        return stop.code


def check_args(args) -> None:
    """Every number and path of the command line, before the model is loaded."""
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--num-samples", args.num_samples),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise CLIError(f"{flag} must be >= 1, got {value}")
    given = decode_flags_given(args)
    for name, value in given.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CLIError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if args.trace:
        check_writable("--trace", args.trace)


def check_steps(args, sampler: str) -> None:
    """--steps against the tokens to generate, once the loaded model has settled the sampler (a uniform-noise
    model's steps are per canvas, not per token: any count is fine there)."""
    steps = decode_flags_given(args).get("steps")
    if steps is not None and sampler == "confidence" and steps > args.max_new_tokens:
        raise CLIError(f"--steps {steps} is more than the {args.max_new_tokens} tokens to generate (a step "
                       f"reveals at least one token); use --steps {args.max_new_tokens} or fewer")


def _main(args) -> int:
    from rich.console import Console

    from mdlm.decode.generate import completion_stop_ids

    check_args(args)
    prompts = read_prompts(args)
    model, tokenizer, profile = load_run(args.model, args.device, args.family, args.trust_remote_code, args.dtype)
    args.objective = getattr(model, "objective", None)  # the run's training objective (ASSD needs an as-arm run)
    args.profile_name, args.eos_token_id = profile.name, completion_stop_ids(model, tokenizer)[0]
    if getattr(model, "corruption", "absorbing") == "uniform" and getattr(args, "sampler", "confidence") == "confidence":
        args.sampler = "uniform-noise"  # a uniform-noise model (DiffusionGemma) has one decoder, and no masks to fill
    check_steps(args, getattr(args, "sampler", "confidence"))
    config = config_from_args(args, tokenizer)
    prompts = chat_prompts(tokenizer, prompts, profile, not args.no_chat_template)
    rows = [pair for pair in prompts for _ in range(args.num_samples)]
    console = Console(stderr=True)
    if args.schema:
        return run_schema(model, tokenizer, rows, args, config, console)
    trace_rows = []
    for index, completion, result, seconds, (valid, offset) in generate_rows(model, tokenizer, rows, args, config,
                                                                             console):
        prompt, suffix = rows[index]
        sample = index % args.num_samples
        if args.format == "jsonl":
            record = {"index": index // args.num_samples, "sample": sample, "prompt": prompt, "completion": completion,
                      "nfe": result.nfe, "time_s": round(seconds, 4), "sampler": config.sampler, "seed": config.seed}
            if suffix is not None:
                record["suffix"] = suffix
            print(json.dumps(record), flush=True)
        else:
            if len(rows) > 1:
                print(f"=== prompt {index // args.num_samples}, sample {sample} (nfe {result.nfe}, {seconds:.2f}s) ===")
            print(prompt + completion + (suffix or ""), flush=True)
        if args.trace:
            trace_rows.append((result, valid, offset, f"prompt {index // args.num_samples}, sample {sample}"))
    if args.trace:
        write_trace(args.trace, trace_rows, tokenizer, config, model.mask_token_id)
        console.print(f"trace written to {args.trace}")
    return 0


def write_trace(path, trace_rows, tokenizer, config, mask_id: int) -> None:
    import torch

    from mdlm.decode.trace import TraceStep
    from mdlm.decode.trace_html import render_trace_html

    titles = []
    # One page for all rows: the batches are decoded separately, so each row keeps its own steps.
    steps_per_row, finals, valids = [], [], []
    for result, valid, offset, title in trace_rows:
        steps_per_row.append([TraceStep(state=s.state[offset:offset + 1], revealed=s.revealed[offset:offset + 1],
                                        remasked=s.remasked[offset:offset + 1], logprob=s.logprob[offset:offset + 1])
                              for s in result.trace])
        finals.append(result.tokens[offset:offset + 1].cpu())
        valids.append(valid[offset:offset + 1])
        titles.append(title)
    longest = max(len(s) for s in steps_per_row)
    width = max(f.shape[1] for f in finals)
    merged = []
    for k in range(longest):
        parts = []
        for steps, final, valid in zip(steps_per_row, finals, valids):
            step = steps[k] if k < len(steps) else TraceStep(state=final, revealed=torch.zeros_like(valid),
                                                             remasked=torch.zeros_like(valid),
                                                             logprob=torch.zeros(valid.shape, dtype=torch.float64))
            parts.append(_left_pad(step, width, tokenizer.pad_token_id))
        merged.append(TraceStep(*(torch.cat([getattr(p, f) for p in parts]) for f in
                                  ("state", "revealed", "remasked", "logprob"))))
    final = torch.cat([_pad_tensor(f, width, tokenizer.pad_token_id) for f in finals])
    valid = torch.cat([_pad_tensor(v, width, False) for v in valids])
    if config.sampler == "uniform-noise":  # re-noised tokens replay as noise; only the prompt is fixed
        from mdlm.decode.uniform_noise import render_uniform_trace_html as render_trace_html
    page = render_trace_html(merged, final, valid, lambda i: tokenizer.decode([i]), mask_id, titles,
                             title=f"mdlm-generate: {config.sampler} sampler")
    Path(path).write_text(page, encoding="utf-8")


def _pad_tensor(t, width, value):
    import torch

    if t.shape[1] == width:
        return t
    pad = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype)
    return torch.cat([pad, t], 1)


def _left_pad(step, width, pad_id):
    from mdlm.decode.trace import TraceStep

    return TraceStep(state=_pad_tensor(step.state, width, pad_id), revealed=_pad_tensor(step.revealed, width, False),
                     remasked=_pad_tensor(step.remasked, width, False), logprob=_pad_tensor(step.logprob, width, 0.0))


if __name__ == "__main__":
    sys.exit(main())
