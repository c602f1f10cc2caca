"""The decoding API's data types: `DecodeConfig` (what to run) and `DecodeResult` (what came out).

Every sampler in `mdlm.decode` takes a canvas (B, L) whose mask-id positions are to be generated and
returns a `DecodeResult`. Fixed tokens (prompt, infill suffix, schema scaffolding) are never changed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from mdlm.decode.registry import SAMPLER_REGISTRY
from mdlm.decode.remasking import POLICIES
from mdlm.decode.trace import TraceStep

UNMASKING_SCHEDULES = ("uniform", "cosine", "ascending", "dream")
REMASKING_POLICIES = tuple(POLICIES)  # the names of `mdlm.decode.remasking.POLICIES`
ASSD_ORDERS = ("left-to-right", "random", "right-to-left", "confidence")
MASKING_SCHEDULES = ("linear", "cosine")


def option(default, help: str, *, choices=None, flags: tuple[str, ...] | None = None, cli: bool = True):
    """A DecodeConfig field with what `mdlm-generate` builds its flag from (`mdlm.decode.cli`): the help,
    the choices, the flag names (default: --field-name; a True-by-default bool is turned off by its flag)
    and whether the command line offers it at all. Adding a decoding option is this one field."""
    metadata = {"help": help, "cli": cli}
    if choices is not None:  # a registry (dict) stays live: samplers registered later are choices too
        metadata["choices"] = choices if isinstance(choices, dict) else tuple(choices)
    if flags is not None:
        metadata["flags"] = tuple(flags)
    return field(default=default, metadata=metadata)


def _choose(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(str, choices))}")


@dataclass
class DecodeConfig:
    """What to decode with. Fields that a sampler does not use are ignored by it.

    sampler: "confidence" (LLaDA-style: commit the most confident predictions, optionally in
        semi-autoregressive blocks), "ancestral" (tau-leaping over a masking schedule, RADD cache),
        "first-hitting" (Zheng et al. 2024, one token per network call, exact), "assd" (any-subset
        speculative decoding, Guo & Ermon 2025); its baselines "assd-sequential" (one token per call, the
        same distribution) and "assd-parallel" (`steps` calls of conditionally independent drafts).
    steps: denoising steps (per sequence). "confidence" honours them exactly (NFE == steps without a
        cache): spread over the blocks, the remainder to the earliest ones; fewer steps than blocks or
        more than tokens to generate is refused. None: one token per step for "confidence", 1000 for
        "ancestral"; "ascending" fixes its own count (floor(log2) of the length; another is refused).
    unmasking_schedule: how many tokens a step reveals ("uniform", "cosine", "ascending" step size;
        `mdlm.decode.unmasking`). The old name `schedule=` is still accepted for a while.
    remasking: which positions a step commits ("random", "low-confidence", "margin", "entropy",
        "threshold" = Fast-dLLM's confidence >= `threshold`, at least one; "rcr" = MDPO's running
        confidence remasking; "entropy-bound" = the EB sampler, the lowest-entropy positions while their
        summed minus largest entropy is <= `entropy_bound`, at least one).
    block_length: semi-autoregressive blocks of this many generated positions (None: one block). For a
        block-causal model the blocks are its attention blocks (default and unit: config.block_size).
    temperature / top_k / top_p: of every categorical draw (temperature 0 = argmax).
    eoser: EOS early rejection (scale the confidence of drawn EOS tokens by a gamma rising to 1).
    use_cache: exact caches (RADD output reuse; block KV cache on block-causal models).
    approximate_prefix_cache: Fast-dLLM prefix KV cache on a bidirectional model (not exact; opt-in).
    dual_cache: Fast-dLLM dual cache (prefix and suffix, refreshed per block; `mdlm.decode.fast_dllm_cache`).
    masking_schedule: alpha_t of the "ancestral" sampler ("linear" or "cosine").
    full_logits: the confidence and first-hitting samplers ask the model for logits at every position of
        the canvas instead of only where they draw (the current block's masked positions; the one
        revealed position) (`at=`); the same tokens, more memory
        (a check, and for models whose head cannot be run at chosen positions it makes no difference).
    trace: record a `TraceStep` per step. seed: makes the run reproducible.
    step_callback: called with each `TraceStep` as the step happens (live views), trace or not.
    draft_size / adaptive_draft / order: ASSD only.
    """

    sampler: str = option("confidence", "the decoder (mdlm.decode.registry)", choices=SAMPLER_REGISTRY)
    steps: int | None = option(None, "denoising steps, honoured exactly or refused (default: one token per step; "
                               "1000 for ancestral)")
    unmasking_schedule: str = option("uniform", "tokens revealed per step (default: the model family's own, e.g. "
                                     "Dream's; else uniform)", choices=UNMASKING_SCHEDULES,
                                     flags=("--unmasking-schedule", "--schedule"))
    remasking: str = option("low-confidence", "which drawn tokens a step commits (mdlm.decode.remasking)",
                            choices=REMASKING_POLICIES)
    threshold: float = option(0.9, "confidence threshold of --remasking threshold")
    entropy_bound: float | None = option(None, "gamma of --remasking entropy-bound, in nats: a step commits the "
                                         "lowest-entropy positions while their summed minus largest entropy <= "
                                         "gamma (default: 0.1; a uniform-noise model's: its checkpoint's)")
    block_length: int | None = option(None, "semi-autoregressive block length (default: one block; the attention "
                                      "block of a block-causal model)")
    temperature: float = option(1.0, "temperature of every categorical draw (0: argmax)")
    top_k: int | None = option(None, "keep the k most likely tokens of each draw")
    top_p: float | None = option(None, "keep the top-p nucleus of each draw")
    eoser: bool = option(False, "EOS early rejection: scale drawn EOS confidences by a gamma rising to 1")
    eoser_gamma_min: float | None = option(None, "EOSER's first gamma (default: 0.4; 0.01 with ascending)")
    eos_token_id: int | None = option(None, "the end-of-text id EOSER looks for (default: the model's)", cli=False)
    use_cache: bool = option(True, "disable the exact caches (RADD output reuse, block KV cache)",
                             flags=("--no-cache",))
    approximate_prefix_cache: bool = option(False, "Fast-dLLM prefix KV cache on a bidirectional model "
                                            "(approximate)")
    dual_cache: bool = option(False, "Fast-dLLM dual (prefix + suffix) KV cache on a bidirectional model "
                              "(approximate)")
    full_logits: bool = option(False, "run the head at every position, not only where the sampler draws "
                               "(same tokens, more memory)")
    trace: bool = option(False, "record a TraceStep per step", cli=False)
    seed: int | None = option(None, "random seed of the run (batch k uses seed + k * batch size)")
    draft_size: int = option(4, "ASSD draft size")
    adaptive_draft: bool = option(False, "ASSD adaptive draft size")
    order: str = option("left-to-right", "ASSD decoding order", choices=ASSD_ORDERS)
    masking_schedule: str = option("linear", "alpha_t of the ancestral and first-hitting samplers",
                                   choices=MASKING_SCHEDULES)
    step_callback: Callable[[TraceStep], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        _choose("sampler", self.sampler, tuple(SAMPLER_REGISTRY))
        _choose("unmasking_schedule", self.unmasking_schedule, UNMASKING_SCHEDULES)
        _choose("remasking", self.remasking, REMASKING_POLICIES)
        _choose("masking_schedule", self.masking_schedule, MASKING_SCHEDULES)
        _choose("order", self.order, ASSD_ORDERS)
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.block_length is not None and self.block_length < 1:
            raise ValueError(f"block_length must be >= 1, got {self.block_length}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.entropy_bound is not None and not (math.isfinite(self.entropy_bound) and self.entropy_bound >= 0):
            raise ValueError(f"entropy_bound must be a finite number >= 0 (nats), got {self.entropy_bound}")
        if self.draft_size < 1:
            raise ValueError(f"draft_size must be >= 1, got {self.draft_size}")

    @property
    def schedule(self) -> str:
        """The old name of `unmasking_schedule` (read-only; short-lived)."""
        return self.unmasking_schedule


def _accept_old_field_names(dataclass_init):
    """`DecodeConfig(schedule=...)` keeps working while callers move to `unmasking_schedule=`."""

    @functools.wraps(dataclass_init)
    def init(self, *args, schedule: str | None = None, **kwargs):
        if schedule is not None:
            if kwargs.get("unmasking_schedule", schedule) != schedule:
                raise ValueError(f"schedule={schedule!r} and unmasking_schedule={kwargs['unmasking_schedule']!r} "
                                 "disagree; give unmasking_schedule only (schedule is its old name)")
            kwargs["unmasking_schedule"] = schedule
        dataclass_init(self, *args, **kwargs)

    return init


DecodeConfig.__init__ = _accept_old_field_names(DecodeConfig.__init__)


@dataclass
class DecodeResult:
    """tokens (B, L): the canvas with every mask filled. nfe: network calls (batched forward passes).
    trace: one `TraceStep` per step when `DecodeConfig.trace`, else None. stats: sampler extras."""

    tokens: torch.Tensor
    nfe: int
    trace: list[TraceStep] | None = None
    stats: dict = field(default_factory=dict)


def refuse_block_length(config) -> None:
    """The one-token samplers have no blocks: say where blocks are."""
    if config.block_length is not None:
        raise ValueError("block_length applies to the confidence sampler; for block-wise random-order decoding use "
                         "sampler='confidence' with remasking='random' (one token per step is exact within a block)")
