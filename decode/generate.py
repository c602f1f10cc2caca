"""Text in, text out: build the canvas from prompts (and infill suffixes), decode, cut at EOS."""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import torch

from mdlm.decode.canvas import Canvas, pad_rows
from mdlm.decode.config import DecodeConfig, DecodeResult
from mdlm.decode.denoiser import as_denoiser
from mdlm.decode.registry import decode
from mdlm.decode.trace import TraceStep


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def build_canvas(denoiser, tokenizer, prompts: list[str], max_new_tokens: int, suffixes: list[str] | None = None,
                 add_bos: bool = False) -> Canvas:
    """The Canvas of prompt + max_new_tokens masks + suffix per row, left-padded with the pad id to a
    common length (on the CPU); its `generated` marks the new tokens only (a mask id inside a prompt is
    text, not a slot). A row beyond the denoiser's context gets an error saying what to shorten."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        raise ValueError("no prompts given; pass a list of at least one prompt (an empty string generates "
                         "unconditionally)")
    if suffixes is not None and len(suffixes) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(suffixes)} suffixes; give one suffix per prompt")
    denoiser = as_denoiser(denoiser)
    mask_token_id, context_length = denoiser.require_mask_id(), denoiser.context
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; load it with mdlm.tokenizer.load_tokenizer")
    rows = []
    for i, prompt in enumerate(prompts):
        bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
        head = bos + _ids(tokenizer, prompt)
        tail = _ids(tokenizer, suffixes[i]) if suffixes is not None else []
        total = len(head) + max_new_tokens + len(tail)
        if context_length is not None and total > context_length:
            room = context_length - len(head) - len(tail)
            fix = (f"lower --max-new-tokens (max_new_tokens) to at most {room}" if room >= 1 else
                   f"shorten the prompt{' and suffix' if tail else ''} to at most "
                   f"{context_length - max_new_tokens} tokens{' together' if tail else ''}, or generate fewer tokens")
            raise ValueError(
                f"prompt {i} is {len(head)} tokens{f' with a {len(tail)}-token suffix' if tail else ''}; with "
                f"{max_new_tokens} new tokens that is {total} tokens, beyond the model's context of "
                f"{context_length}; {fix}"
            )
        rows.append((head, tail))
    tokens, valid = pad_rows([h + [mask_token_id] * max_new_tokens + t for h, t in rows], pad_id, "left")
    generated = torch.zeros_like(valid)  # (B, L)
    for b, (head, tail) in enumerate(rows):
        end = tokens.shape[1] - len(tail)  # left padding: every row ends at the last column
        generated[b, end - max_new_tokens: end] = True
    canvas = Canvas.of(denoiser, tokens, valid)
    canvas.generated = generated
    return canvas


def completion_stop_ids(denoiser, tokenizer, eos_token_id: int | None = None) -> list[int]:
    """The one stop-token rule of every front end (`generate`, mdlm-generate, the lm-eval adapter): a
    completion ends at the first of these ids. End of text first (`eos_token_id` when a config names one,
    else the tokenizer's, else the model's), then the stop tokens the model's family names (end of turn, ...).
    The first id is also the one EOSER looks for (`DecodeConfig.eos_token_id`)."""
    end_of_text = next((i for i in (eos_token_id, getattr(tokenizer, "eos_token_id", None),
                                    getattr(denoiser, "eos_token_id", None)) if i is not None), None)
    family = list(getattr(denoiser, "stop_token_ids", None) or [])
    return list(dict.fromkeys(int(i) for i in [end_of_text, *family] if i is not None))


def completion_ids(tokens: torch.Tensor, generated: torch.Tensor, eos_token_id) -> list[list[int]]:
    """Per row the generated token ids, cut before the first stop token (`eos_token_id`: one id, several
    (end of text, end of turn) or None)."""
    stops = set() if eos_token_id is None else {int(eos_token_id)} if isinstance(eos_token_id, int) else \
        {int(i) for i in eos_token_id if i is not None}
    out = []
    for row, where in zip(tokens.tolist(), generated.tolist()):
        ids = [t for t, g in zip(row, where) if g]
        cut = next((k for k, t in enumerate(ids) if t in stops), len(ids))
        out.append(ids[:cut])
    return out


class Watcher(Protocol):
    """Hooks of one `generate_with_result` call (the live view, a progress display): `start` gets the
    canvas before the first step, `step` each `TraceStep` as it happens, `finish` the DecodeResult."""

    def start(self, canvas: Canvas) -> None: ...

    def step(self, step: TraceStep) -> None: ...

    def finish(self, result: DecodeResult) -> None: ...


def generate_with_result(model, tokenizer, prompts, max_new_tokens, config: DecodeConfig, suffixes=None,
                         add_bos: bool = False, generator=None, watch: Watcher | None = None
                         ) -> tuple[list[str], DecodeResult, torch.Tensor]:
    """`generate`, also returning the DecodeResult and the generated-position mask (for NFE, traces).
    `watch` sees the canvas, every step and the result (`Watcher`); `config.trace` keeps the steps."""
    # A bare callable names no mask id of its own: the tokenizer's is the one.
    denoiser = as_denoiser(model, None if hasattr(model, "config") else tokenizer.mask_token_id)
    stops = completion_stop_ids(denoiser, tokenizer, config.eos_token_id)
    if config.eos_token_id is None and stops:
        config = replace(config, eos_token_id=stops[0])
    canvas = build_canvas(denoiser, tokenizer, list(prompts), max_new_tokens, suffixes, add_bos)
    if watch is not None:
        watch.start(canvas)
        config = replace(config, step_callback=watch.step)
    result = decode(denoiser, canvas, config, generator=generator)
    if watch is not None:
        watch.finish(result)
    ids = completion_ids(result.tokens.cpu(), canvas.generated, stops)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    return texts, result, canvas.generated


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, config: DecodeConfig | None = None,
             suffixes: list[str] | None = None) -> list[str]:
    """Generate `max_new_tokens` after each prompt (before each suffix when infilling); text cut at EOS."""
    if isinstance(prompts, str):
        prompts = [prompts]
    return generate_with_result(model, tokenizer, prompts, max_new_tokens, config or DecodeConfig(), suffixes)[0]
