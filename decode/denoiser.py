"""The `Denoiser` protocol and the canvas conventions every sampler shares.

A denoiser maps token ids, some of them the mask id, to logits (B, L, V) of p(x0_i | unmasked tokens)
(RADD: the network needs no time input). `MDLMForMaskedLM` is one (it also offers a KV cache);
`as_denoiser` adapts any Hugging Face masked LM that has a mask token.

Canvas: (B, L) long. Mask ids are to be generated, every other token is fixed. Rows of different
lengths are left-padded and `valid` (B, L) is False at padding; position ids then count from 0 at each
row's first valid token.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Denoiser(Protocol):
    mask_token_id: int

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, V) with the mask token's logit at -inf."""


class HFMaskedLMDenoiser:
    """A Hugging Face masked LM (BERT, RoBERTa, ModernBERT, ...) as a `Denoiser`.

    Only the mask token's logit is set to -inf (SUBS); special tokens the model never generates are the
    caller's business (pass `banned_token_ids`)."""

    def __init__(self, model, mask_token_id: int | None = None, banned_token_ids=(), pass_position_ids=False):
        self.model = model
        config = getattr(model, "config", None)
        self.mask_token_id = mask_token_id if mask_token_id is not None else getattr(config, "mask_token_id", None)
        if self.mask_token_id is None:
            raise ValueError("this model has no mask token id; pass mask_token_id= (e.g. tokenizer.mask_token_id)")
        self.banned_token_ids = sorted({int(self.mask_token_id), *map(int, banned_token_ids)})
        self.pass_position_ids = pass_position_ids
        self.config = config

    def parameters(self):
        return self.model.parameters()

    def __call__(self, input_ids, attention_mask=None, position_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"attention_mask": attention_mask.long()}
        if self.pass_position_ids and position_ids is not None:
            kwargs["position_ids"] = position_ids
        with torch.no_grad():
            logits = self.model(input_ids=input_ids, **kwargs).logits.float()
        logits[..., self.banned_token_ids] = float("-inf")
        return logits


def as_denoiser(model, mask_token_id: int | None = None, **kwargs):
    """Our model is already a denoiser; any other masked LM gets the thin adapter."""
    from mdlm.model import MDLMForMaskedLM

    if isinstance(model, (MDLMForMaskedLM, HFMaskedLMDenoiser)):
        return model
    return HFMaskedLMDenoiser(model, mask_token_id, **kwargs)


def denoiser_for_run(model, tokenizer):
    """The denoiser of a loaded run folder (model + its tokenizer). Ours is used as it is; any other
    masked LM (a BERT-style folder, whose config usually has no mask_token_id) gets the adapter with the
    tokenizer's mask id and the tokenizer's special tokens banned except EOS, which ends a completion."""
    from mdlm.model import MDLMForMaskedLM

    config_mask_id = getattr(getattr(model, "config", None), "mask_token_id", None)
    mask_id = config_mask_id if config_mask_id is not None else tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError("neither the model's config nor its tokenizer has a mask token id; this is not a masked LM")
    if isinstance(model, MDLMForMaskedLM):
        model.config.mask_token_id = int(mask_id)
        return model
    banned = [i for i in tokenizer.all_special_ids if i not in (mask_id, tokenizer.eos_token_id)]
    return HFMaskedLMDenoiser(model, int(mask_id), banned_token_ids=banned)


def mask_token_id_of(model) -> int:
    mask_id = getattr(model, "mask_token_id", None)
    if mask_id is None:
        mask_id = getattr(getattr(model, "config", None), "mask_token_id", None)
    if mask_id is None:
        raise ValueError("the model's config has no mask_token_id; set it (the tokenizer's mask token id)")
    return int(mask_id)


def supports_kv_cache(model) -> bool:
    from mdlm.model import MDLMForMaskedLM

    return isinstance(model, MDLMForMaskedLM)


def attention_pattern(model) -> str:
    return getattr(getattr(model, "config", None), "attention", "bidirectional")


def default_position_ids(valid: torch.Tensor) -> torch.Tensor:
    """Positions counting from 0 at each row's first valid token (left padding gets 0)."""
    return (valid.long().cumsum(-1) - 1).clamp_min(0)


def check_canvas(model, canvas: torch.Tensor, valid: torch.Tensor | None, position_ids: torch.Tensor | None):
    """Validate and complete (valid, position_ids); raise clear errors for malformed input."""
    if canvas.dim() != 2:
        raise ValueError(f"the canvas must be (batch, length) token ids, got shape {tuple(canvas.shape)}")
    if canvas.dtype != torch.long:
        canvas = canvas.long()
    if valid is None:
        valid = torch.ones_like(canvas, dtype=torch.bool)
    valid = valid.to(device=canvas.device, dtype=torch.bool)
    if valid.shape != canvas.shape:
        raise ValueError(f"valid has shape {tuple(valid.shape)} but the canvas {tuple(canvas.shape)}")
    if position_ids is None:
        position_ids = default_position_ids(valid)
    elif position_ids.shape != canvas.shape:
        raise ValueError(f"position_ids has shape {tuple(position_ids.shape)} but the canvas {tuple(canvas.shape)}")
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if context is not None and (int(position_ids[valid].max()) if valid.any() else 0) >= context:
        longest = int(valid.sum(-1).max())
        raise ValueError(
            f"a canvas row holds {longest} tokens (prompt + tokens to generate) but the model's context is "
            f"{context}; shorten the prompt or generate fewer tokens (--max-new-tokens)"
        )
    return canvas, valid, position_ids


class NetworkCounter:
    """Calls the denoiser with the canvas conventions and counts network function evaluations (NFE).

    `nfe` counts batched forward passes; `row_evaluations` counts rows pushed through the network
    (they differ when a cache skips some rows of a batch)."""

    def __init__(self, model):
        self.model = model
        self.nfe = 0
        self.row_evaluations = 0

    def logits(self, input_ids, valid, position_ids, cache=None, use_cache=False):
        """Logits (B, L, V), or (logits, new_cache) when use_cache."""
        self.nfe += 1
        self.row_evaluations += input_ids.shape[0]
        attention_mask = None if bool(valid.all()) else valid
        if supports_kv_cache(self.model):
            with torch.no_grad():
                out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 cache=cache, use_cache=use_cache)
            return (out.logits, out.cache) if use_cache else out.logits
        if cache is not None or use_cache:
            raise ValueError("this denoiser has no KV cache; decode with use_cache=False")
        with torch.no_grad():
            out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return out.logits if hasattr(out, "logits") else out


class RowOutputCache:
    """The RADD cache: a row's logits are reused for as long as none of its tokens changed.

    `logits(x, needed)` returns a (B, L, V) buffer whose rows `needed` hold the network's output for the
    current tokens; only rows whose tokens changed since their last evaluation go through the network
    (one batched call). With `enabled=False` every needed row is recomputed (the standard sampler)."""

    def __init__(self, network: NetworkCounter, valid, position_ids, enabled: bool = True):
        self.network, self.valid, self.position_ids, self.enabled = network, valid, position_ids, enabled
        self.buffer = None
        self.evaluated_tokens = None

    def logits(self, x: torch.Tensor, needed: torch.Tensor) -> torch.Tensor:
        stale = needed.clone()
        if self.enabled and self.evaluated_tokens is not None:
            stale &= (x != self.evaluated_tokens).any(-1)
        if stale.any():
            rows = stale.nonzero()[:, 0]
            out = self.network.logits(x[rows], self.valid[rows], self.position_ids[rows])
            if self.buffer is None:
                self.buffer = out.new_zeros((x.shape[0], *out.shape[1:]))
                self.evaluated_tokens = torch.full_like(x, -1)
            self.buffer[rows] = out
            self.evaluated_tokens[rows] = x[rows]
        return self.buffer
