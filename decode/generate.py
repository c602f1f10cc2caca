"""Text in, text out: build the canvas from prompts (and infill suffixes), decode, cut at EOS."""

from __future__ import annotations

from dataclasses import replace

import torch

from mdlm.decode.config import DecodeConfig, DecodeResult
from mdlm.decode.denoiser import mask_token_id_of
from mdlm.decode.registry import decode


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def build_canvas(tokenizer, prompts: list[str], max_new_tokens: int, mask_token_id: int,
                 suffixes: list[str] | None = None, context_length: int | None = None, add_bos: bool = False):
    """Canvas (B, L), valid (B, L) and generated (B, L) bool for prompt + max_new_tokens masks + suffix,
    left-padded with the pad id to a common length."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        raise ValueError("no prompts given; pass a list of at least one prompt (an empty string generates "
                         "unconditionally)")
    if suffixes is not None and len(suffixes) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(suffixes)} suffixes; give one suffix per prompt")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; load it with mdlm.tokenizer.load_tokenizer")
    rows = []
    for i, prompt in enumerate(prompts):
        head = ([tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []) + _ids(tokenizer, prompt)
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
    length = max(len(h) + max_new_tokens + len(t) for h, t in rows)
    canvas = torch.full((len(rows), length), pad_id, dtype=torch.long)
    valid = torch.zeros_like(canvas, dtype=torch.bool)
    generated = torch.zeros_like(valid)
    for b, (head, tail) in enumerate(rows):
        row = head + [mask_token_id] * max_new_tokens + tail
        start = length - len(row)
        canvas[b, start:] = torch.tensor(row, dtype=torch.long)
        valid[b, start:] = True
        generated[b, start + len(head): start + len(head) + max_new_tokens] = True
    return canvas, valid, generated


def completion_ids(tokens: torch.Tensor, generated: torch.Tensor, eos_token_id: int | None) -> list[list[int]]:
    """Per row the generated token ids, cut before the first EOS."""
    out = []
    for row, where in zip(tokens.tolist(), generated.tolist()):
        ids = [t for t, g in zip(row, where) if g]
        if eos_token_id is not None and eos_token_id in ids:
            ids = ids[: ids.index(eos_token_id)]
        out.append(ids)
    return out


def generate_with_result(model, tokenizer, prompts, max_new_tokens, config: DecodeConfig, suffixes=None,
                         add_bos: bool = False, generator=None) -> tuple[list[str], DecodeResult, torch.Tensor]:
    """`generate`, also returning the DecodeResult and the generated-position mask (for NFE, traces)."""
    mask_id = mask_token_id_of(model) if getattr(model, "config", None) is not None else tokenizer.mask_token_id
    if config.eos_token_id is None and tokenizer.eos_token_id is not None:
        config = replace(config, eos_token_id=tokenizer.eos_token_id)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    canvas, valid, generated = build_canvas(tokenizer, list(prompts), max_new_tokens, mask_id, suffixes, context, add_bos)
    device = _device_of(model)
    result = decode(model, canvas.to(device), config, valid=valid.to(device), generator=generator)
    ids = completion_ids(result.tokens.cpu(), generated, config.eos_token_id)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    return texts, result, generated


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, config: DecodeConfig | None = None,
             suffixes: list[str] | None = None) -> list[str]:
    """Generate `max_new_tokens` after each prompt (before each suffix when infilling); text cut at EOS."""
    if isinstance(prompts, str):
        prompts = [prompts]
    return generate_with_result(model, tokenizer, prompts, max_new_tokens, config or DecodeConfig(), suffixes)[0]


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        inner = getattr(model, "model", None)
        return _device_of(inner) if inner is not None else torch.device("cpu")
