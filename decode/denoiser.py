"""The `Denoiser` protocol: the one face every model shows the decoders.

A denoiser maps token ids, some of them the mask id, to logits (B, L, V) of p(x0_i | unmasked tokens)
(RADD, Ou et al. 2024: the network needs no time input). It carries the facts decoders need about the
model (mask id, attention pattern, block size, context, whether it has a KV cache), so that no decoder
reads `model.config` or branches on a model's class. `as_denoiser` wraps any model once (ours, a public
diffusion LM or Hugging Face masked LM through its family profile (`mdlm.decode.families`), a plain
callable) and every network call goes through `logits`, which counts it: NFE is counted here and nowhere
else.
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch

from mdlm.decode.canvas import default_position_ids  # noqa: F401  (train/rl imports it from here)

ATTENTION_PATTERNS = ("bidirectional", "causal", "block-causal")
# "absorbing": tokens are replaced by the mask id (masked diffusion); "uniform": by uniform random tokens
# (DiffusionGemma, decoded by mdlm.decode.uniform_noise; its canvas marks slots with an id past the vocabulary).
CORRUPTIONS = ("absorbing", "uniform")


@runtime_checkable
class Denoiser(Protocol):
    mask_token_id: int | None
    corruption: str  # one of CORRUPTIONS: what the model was trained to undo
    attention: str  # one of ATTENTION_PATTERNS
    block_size: int | None  # attention block of a block-causal model
    context: int | None  # most positions the model takes
    supports_cache: bool  # logits(..., cache=, use_cache=True) work
    nfe: int  # batched network calls so far
    row_evaluations: int  # rows pushed through the network so far

    def logits(self, ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, cache=None,
               use_cache: bool = False, at: torch.Tensor | None = None):
        """Logits (B, L, V) with the mask token's logit at -inf, or (logits, new cache) when use_cache.
        With `at` (B, K) position indices: logits (B, K, V) at those positions only."""


class CountedDenoiser:
    """What every wrapper shares: the counters, the device and the eval/train switch of its module."""

    corruption = "absorbing"
    attention = "bidirectional"
    block_size = None
    supports_cache = False
    eos_token_id = None  # the model's own end of text, when a decode config names none

    def __init__(self, module, mask_token_id, context):
        self.model, self.mask_token_id, self.context = module, mask_token_id, context
        self.vocab_size = getattr(getattr(module, "config", None), "vocab_size", None)  # None: from the logits
        self.nfe = 0
        self.row_evaluations = 0

    def logits(self, ids, valid, positions, cache=None, use_cache=False, at=None):
        if (cache is not None or use_cache) and not self.supports_cache:
            raise ValueError("this denoiser has no KV cache; decode with use_cache=False")
        _check_at(ids, at)
        self.nfe += 1
        self.row_evaluations += ids.shape[0]
        with torch.no_grad():
            return self._logits(ids, valid, positions, cache, use_cache, at)

    def _logits(self, ids, valid, positions, cache, use_cache, at):
        """The network's logits; a wrapper whose model has no head-at-positions gathers (`gather_at`)."""
        raise NotImplementedError

    def train_logits(self, ids, valid=None, positions=None, at=None, module=None):
        """The training forward: `logits()`'s values in its convention (the family's logit shift undone,
        its attention mask, positions and block-causal structure, the mask logit at -inf), with gradients
        and uncounted (NFE counts decoding). `module`: what to call instead of `self.model`, the same
        network behind a DDP/FSDP wrapper or a peft model (`mdlm.trainable` passes it)."""
        _check_at(ids, at)
        denoiser = self
        if module is not None and module is not self.model:
            denoiser = copy.copy(self)  # a view that calls the wrapper: the wrapper's forward syncs gradients
            denoiser.model = module
        return denoiser._logits(ids, valid, positions, None, False, at)

    def meter(self) -> "Meter":
        return Meter(self)

    @property
    def device(self) -> torch.device:
        return device_of(self.model)

    @property
    def training(self) -> bool:
        return bool(getattr(self.model, "training", False))

    def train(self, mode: bool = True):
        if isinstance(self.model, torch.nn.Module):
            self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def parameters(self):
        return self.model.parameters()

    def require_mask_id(self) -> int:
        if self.mask_token_id is None:
            raise ValueError("the model has no mask token id; set config.mask_token_id (the tokenizer's "
                             "mask token id) or pass mask_token_id= to as_denoiser")
        return int(self.mask_token_id)


class Meter:
    """The network calls of one decoding run: the denoiser's counters since the meter was made."""

    def __init__(self, denoiser: CountedDenoiser):
        self.denoiser = denoiser
        self.start = (denoiser.nfe, denoiser.row_evaluations)

    @property
    def nfe(self) -> int:
        return self.denoiser.nfe - self.start[0]

    @property
    def row_evaluations(self) -> int:
        return self.denoiser.row_evaluations - self.start[1]


class MDLMDenoiser(CountedDenoiser):
    """`MDLMForMaskedLM` as a denoiser: custom attention masks, explicit positions and a KV cache."""

    supports_cache = True

    def __init__(self, model, mask_token_id: int | None = None):
        config = model.config
        super().__init__(model, mask_token_id if mask_token_id is not None else config.mask_token_id,
                         config.max_position_embeddings)
        self.attention, self.eos_token_id = config.attention, config.eos_token_id
        self.objective = getattr(config, "objective", None)  # "as-arm": the two-stream run ASSD needs
        self.block_size = int(config.block_size) if config.attention == "block-causal" else None
        self.config = config  # mdlm.as_arm's two-stream forward reads the mask id from it

    def _logits(self, ids, valid, positions, cache, use_cache, at):
        # An all-True padding mask is dropped so that the fast unmasked attention path runs; with a cache
        # it is kept, since it also extends the cache's key validity to this call's keys.
        attention_mask = None if valid is None or (cache is None and bool(valid.all())) else valid
        out = self.model(ids, attention_mask=attention_mask, position_ids=positions, cache=cache,
                         use_cache=use_cache, logits_at=at)
        return (out.logits, out.cache) if use_cache else out.logits

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False):
        """A counted raw forward with a caller-built attention mask of any shape (the two-stream
        forward of `mdlm.as_arm` builds its own (B, 1, Lq, Lk) mask) -> the model's output."""
        self.nfe += 1
        self.row_evaluations += input_ids.shape[0]
        with torch.no_grad():
            return self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                              use_cache=use_cache)


class CallableDenoiser(CountedDenoiser):
    """Any callable `f(input_ids, attention_mask=, position_ids=)` -> logits (or an output with
    `.logits`) that names its `mask_token_id`: a fixed test distribution, a user's own network."""

    def __init__(self, function, mask_token_id: int | None = None):
        mask_token_id = mask_token_id if mask_token_id is not None else getattr(function, "mask_token_id", None)
        if mask_token_id is None:
            raise ValueError(f"{type(function).__name__} has no mask_token_id; give it one or pass mask_token_id=")
        super().__init__(function, int(mask_token_id), getattr(function, "context", None))

    def _logits(self, ids, valid, positions, cache, use_cache, at):
        attention_mask = None if valid is None or bool(valid.all()) else valid
        out = self.model(ids, attention_mask=attention_mask, position_ids=positions)
        return gather_at(out.logits if hasattr(out, "logits") else out, at)


def as_denoiser(model, mask_token_id: int | None = None, **kwargs) -> CountedDenoiser:
    """Wrap `model` once as a `Denoiser` (a denoiser comes back as it is, so wrapping twice is free)."""
    from mdlm.model import MDLMForMaskedLM

    if isinstance(model, CountedDenoiser):
        return model
    if isinstance(model, MDLMForMaskedLM):
        return MDLMDenoiser(model, mask_token_id)
    config = getattr(model, "config", None)
    if isinstance(model, torch.nn.Module) and hasattr(config, "vocab_size"):
        from mdlm.decode.families import HFMaskedLMDenoiser, ProfiledDenoiser, detect_family

        profile = detect_family(config)
        if profile is not None and profile.name == "diffusion-gemma":
            from mdlm.decode.diffusion_gemma import DiffusionGemmaDenoiser

            return DiffusionGemmaDenoiser(model)
        if profile is not None and profile.name != "ours" and not kwargs:
            return ProfiledDenoiser(model, profile, mask_token_id)
        refuse_causal_lm(model)
        return HFMaskedLMDenoiser(model, mask_token_id, **kwargs)
    if callable(model):
        return CallableDenoiser(model, mask_token_id)
    raise TypeError(f"cannot decode with a {type(model).__name__}: pass an MDLMForMaskedLM, a Hugging Face "
                    "masked LM or a callable ids -> logits with a mask_token_id")


def refuse_causal_lm(model) -> None:
    """A next-token (causal) LM is no denoiser: it never saw a mask and reads only the past."""
    config = getattr(model, "config", None)
    names = [type(model).__name__, *(getattr(config, "architectures", None) or [])]
    if getattr(config, "is_decoder", False) or any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        raise TypeError(f"{type(model).__name__} is a causal (autoregressive) LM: it predicts the next token and cannot "
                        "fill masks, so it cannot decode here; use a masked diffusion LM (see mdlm.decode.families), or "
                        "name its family if it is one (load_denoiser(..., family=...))")


def _check_at(ids: torch.Tensor, at: torch.Tensor | None) -> None:
    if at is not None and (at.dim() != 2 or at.shape[0] != ids.shape[0]):
        raise ValueError(f"at must be (batch, K) = ({ids.shape[0]}, K) position indices, got {tuple(at.shape)}")


def gather_at(logits: torch.Tensor, at: torch.Tensor | None) -> torch.Tensor:
    """logits (B, L, V) -> (B, K, V) at positions `at` (B, K); all of them for `at=None`."""
    if at is None:
        return logits
    return logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1]))


def active_positions(wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """wanted (B, W) bool -> at (B, K) column indices, each row's wanted columns first in ascending order
    (K = the most any row has), and present (B, K) bool: which entries are real (the rest repeat)."""
    counts = wanted.sum(-1)
    k = max(1, int(counts.max()) if counts.numel() else 1)
    at = torch.sort((~wanted).to(torch.int8), dim=1, stable=True).indices[:, :k]
    present = torch.arange(k, device=wanted.device)[None, :] < counts[:, None]
    return at, present


def device_of(model) -> torch.device:
    """The device of a model's (or a wrapper's inner model's) first parameter; CPU for none."""
    for candidate in (model, getattr(model, "model", None)):
        try:
            return next(candidate.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            continue
    return torch.device("cpu")


class RowOutputCache:
    """The RADD cache: a row's logits are reused for as long as none of its tokens changed.

    `logits(x, needed)` returns a (B, L, V) buffer whose rows `needed` hold the network's output for the
    current tokens; only rows whose tokens changed since their last evaluation go through the network
    (one batched call). With `enabled=False` every needed row is recomputed (the standard sampler)."""

    def __init__(self, denoiser: CountedDenoiser, valid, position_ids, enabled: bool = True):
        self.denoiser, self.valid, self.position_ids, self.enabled = denoiser, valid, position_ids, enabled
        self.buffer = None
        self.evaluated_tokens = None

    def logits(self, x: torch.Tensor, needed: torch.Tensor) -> torch.Tensor:
        stale = needed.clone()  # (B,)
        if self.enabled and self.evaluated_tokens is not None:
            stale &= (x != self.evaluated_tokens).any(-1)
        if stale.any():
            rows = stale.nonzero()[:, 0]
            out = self.denoiser.logits(x[rows], self.valid[rows], self.position_ids[rows])  # (R, L, V)
            if self.buffer is None:
                self.buffer = out.new_zeros((x.shape[0], *out.shape[1:]))
                self.evaluated_tokens = torch.full_like(x, -1)
            self.buffer[rows] = out
            self.evaluated_tokens[rows] = x[rows]
        return self.buffer
