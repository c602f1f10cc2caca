"""Confidence-ordered decoding with semi-autoregressive blocks.

LLaDA (Nie et al. 2025, "Large Language Diffusion Models"): at each step draw x0 at every masked position
of the current block, score the draws (the model's probability of the drawn token, computed without the
Gumbel noise), commit the n_s best and leave the rest masked. Blocks are decoded left to right.
Variants:
- Fast-dLLM (Wu et al. 2025): commit every position whose confidence is >= tau (at least one), and an
  (approximate) prefix KV cache for bidirectional models, opt-in here (`approximate_prefix_cache`).
- MDPO (He et al. 2025) running confidence remasking (RCR): every step fills ALL masked positions of
  the block; unless it is the last step, the R lowest running confidences among the block's generated
  tokens go back to the mask, R = the number the schedule still has to reveal.
- EOSER / ASS (Yang et al. 2025): EOS confidences scaled by a rising gamma; ascending step sizes.
- BD3-LM (Arriola et al. 2025): on a block-causal model the blocks are its attention blocks, and the
  keys/values of the prompt and of finished blocks are cached exactly.

Pseudocode of one block with step counts n_1..n_S:
    for s in 1..S:
        logits = f(x)                                  # one network call
        x0_i ~ p_i (float64 Gumbel, temperature/top-k/top-p) for masked i in the block
        c_i = p_i(x0_i) (or margin / exp(-entropy) / uniform); c_i *= gamma_s if x0_i = EOS (EOSER)
        commit the n_s largest c_i (threshold: all c_i >= tau, at least one)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mdlm.decode.config import DecodeConfig, DecodeResult
from mdlm.decode.canvas import Canvas
from mdlm.decode.denoiser import CountedDenoiser, active_positions, as_denoiser
from mdlm.decode.draw import draw, tempered_logprob
from mdlm.decode.remasking import STATISTICS_POLICIES, position_scores, select_above_threshold, select_top
from mdlm.decode.schedules import ascending_blocks, ascending_num_steps, eoser_gamma, step_counts
from mdlm.decode.trace import TraceRecorder
from mdlm.model import KVCache


@dataclass
class Block:
    """One decoding block: the generated positions it covers (B, L) and the tokens per step (B, S)."""

    members: torch.Tensor
    counts: torch.Tensor
    columns: tuple[int, int] | None = None  # [start, end) when the block is a column range (block-causal)


def _counts_tensor(per_row: list[list[int]], device) -> torch.Tensor:
    width = max(1, max(len(c) for c in per_row))
    return torch.tensor([c + [0] * (width - len(c)) for c in per_row], dtype=torch.long, device=device)


def _steps_per_block(config: DecodeConfig, block_sizes: list[int]) -> list[int]:
    """Steps of each block (block_sizes: the most tokens any row has in the block), summing to
    `config.steps` exactly, so that NFE == steps (without a cache-free skip) instead of a silent rounding.

    The steps are spread evenly, the remainder going to the earliest blocks (LLaDA asserts divisibility
    instead); a block never gets more steps than tokens, its surplus goes to blocks with room. A step
    count that cannot be honoured is refused: fewer steps than blocks (a block needs a network call) or
    more steps than tokens (a step reveals at least one token)."""
    sizes = [max(1, size) for size in block_sizes] or [1]
    if config.steps is None or config.remasking == "threshold":
        return sizes  # one token per step; the threshold policy sets its own steps
    steps, total = config.steps, sum(sizes)
    if steps < len(sizes):
        raise ValueError(f"steps={steps} is fewer than the {len(sizes)} blocks of block_length={config.block_length} "
                         f"({total} tokens to generate): each block needs at least one step; ask for steps >= "
                         f"{len(sizes)} or a larger block_length")
    if steps > total:
        raise ValueError(f"steps={steps} is more than the {total} tokens to generate: each step reveals at least "
                         f"one token; ask for steps <= {total} (or leave steps unset for one token per step)")
    allotted, left = [0] * len(sizes), steps
    while left:
        room = [k for k, size in enumerate(sizes) if allotted[k] < size]
        share, extra = divmod(left, len(room))
        for i, k in enumerate(room):
            add = min(sizes[k] - allotted[k], share + (i < extra))
            allotted[k] += add
            left -= add
    return allotted


def _check_ascending_steps(config: DecodeConfig, longest: int) -> None:
    if config.remasking != "threshold" and config.steps is not None and config.steps != ascending_num_steps(longest):
        raise ValueError(f"schedule='ascending' fixes its own step count, floor(log2 {longest}) = "
                         f"{ascending_num_steps(longest)} for {longest} tokens, but steps={config.steps} was asked "
                         f"for: leave steps unset (or use schedule='uniform' for {config.steps} steps)")


def plan_rank_blocks(to_generate: torch.Tensor, config: DecodeConfig) -> list[Block]:
    """LLaDA blocks: the k-th generated position of a row belongs to block k // block_length, so rows
    with prompts of different lengths (or infill suffixes, schema scaffolds) get the same block shapes."""
    masked_per_row = to_generate.sum(-1).tolist()
    rank = to_generate.long().cumsum(-1) - 1
    longest = max(masked_per_row) if masked_per_row else 0
    block_length = config.block_length or max(1, longest)
    num_blocks = max(1, math.ceil(longest / block_length))
    if config.schedule == "ascending":
        _check_ascending_steps(config, longest)
        # ASS shares its global step sequence out to the blocks (the block sizes follow from it).
        per_row = [ascending_blocks(m, num_blocks) if m else [[0]] for m in masked_per_row]
        num_blocks = max(len(b) for b in per_row)
        blocks = []
        for k in range(num_blocks):
            counts, starts, ends = [], [], []
            for row_blocks in per_row:
                start = sum(sum(c) for c in row_blocks[:k])
                steps = row_blocks[k] if k < len(row_blocks) else []
                counts.append(steps)
                starts.append(start)
                ends.append(start + sum(steps))
            lo = torch.tensor(starts, device=rank.device)[:, None]
            hi = torch.tensor(ends, device=rank.device)[:, None]
            blocks.append(Block(to_generate & (rank >= lo) & (rank < hi), _counts_tensor(counts, rank.device)))
        return blocks
    members_of = [to_generate & (rank // block_length == k) for k in range(num_blocks)]
    block_steps = _steps_per_block(config, [int(m.sum(-1).max()) for m in members_of])
    blocks = []
    for members, steps in zip(members_of, block_steps):
        counts = [step_counts(config.schedule, int(m), steps) for m in members.sum(-1).tolist()]
        blocks.append(Block(members, _counts_tensor(counts, rank.device)))
    return blocks


def plan_column_blocks(to_generate: torch.Tensor, config: DecodeConfig, block_length: int) -> list[Block]:
    """Blocks as column ranges [j*b, (j+1)*b) of a canvas whose column is the position (block-causal
    models): the decoding blocks coincide with the model's attention blocks."""
    width = to_generate.shape[1]
    ranges = [(s, min(width, s + block_length)) for s in range(0, width, block_length)]
    ranges = [r for r in ranges if to_generate[:, r[0]:r[1]].any()]
    if config.schedule == "ascending":
        _check_ascending_steps(config, int(to_generate.sum(-1).max()))
    block_steps = _steps_per_block(config, [int(to_generate[:, a:b].sum(-1).max()) for a, b in ranges])
    blocks = []
    for (start, end), steps in zip(ranges, block_steps):
        members = torch.zeros_like(to_generate)
        members[:, start:end] = to_generate[:, start:end]
        if config.schedule == "ascending":
            counts = [step_counts("ascending", int(m), 0) if m else [0] for m in members.sum(-1).tolist()]
        else:
            counts = [step_counts(config.schedule, int(m), steps) for m in members.sum(-1).tolist()]
        blocks.append(Block(members, _counts_tensor(counts, to_generate.device), (start, end)))
    return blocks


def truncate_cache(cache: KVCache, length: int) -> KVCache:
    return KVCache([k[:, :, :length] for k in cache.keys], [v[:, :, :length] for v in cache.values],
                   cache.positions[:, :length], cache.valid[:, :length])


def logits_where(call, wanted: torch.Tensor, full_logits: bool) -> torch.Tensor:
    """(N, V) logits of the N wanted (B, W) positions of one network call, in row-major order (what
    `logits[wanted]` gives). `call(at)` runs the network with `at=` positions; unless `full_logits`, the
    head runs at the wanted positions only, so no (B, W, V) tensor is made for a large vocabulary."""
    if full_logits:
        return call(None)[wanted]
    at, present = active_positions(wanted)
    return call(at)[present]


class FullCanvasCalls:
    """Every call runs the whole canvas (exact for any model)."""

    def __init__(self, denoiser: CountedDenoiser, valid, position_ids):
        self.denoiser, self.valid, self.position_ids = denoiser, valid, position_ids

    def start_block(self, block: Block) -> None:
        pass

    def logits(self, x, first_step: bool, wanted, full_logits: bool):
        """(N, V) logits at the `wanted` (B, L) positions (see `logits_where`)."""
        return logits_where(lambda at: self.denoiser.logits(x, self.valid, self.position_ids, at=at), wanted,
                            full_logits)


class BlockCausalCachedCalls:
    """Exact block KV cache (BD3-LM) on a canvas whose column is the position.

    Under block-causal attention a finished block never sees later blocks, so its keys/values are final.
    The first call of block j runs the not-yet-cached columns [c, end_j) against the cache of [0, c) and
    keeps the keys/values of [0, start_j); later calls of block j run only [start_j, end_j)."""

    def __init__(self, denoiser: CountedDenoiser, valid, position_ids):
        self.denoiser, self.valid, self.position_ids = denoiser, valid, position_ids
        self.cache, self.cached_until, self.block = None, 0, None

    def start_block(self, block: Block) -> None:
        self.block = block.columns

    def logits(self, x, first_step: bool, wanted, full_logits: bool):
        start, end = self.block
        if first_step:
            lo = self.cached_until

            def call(at):
                logits, cache = self.denoiser.logits(x[:, lo:end], self.valid[:, lo:end],
                                                     self.position_ids[:, lo:end], cache=self.cache, use_cache=True,
                                                     at=at)
                self.cache = truncate_cache(cache, start)
                return logits

            out = logits_where(call, wanted[:, lo:end], full_logits)
            self.cached_until = start
            return out
        return logits_where(lambda at: self.denoiser.logits(x[:, start:end], self.valid[:, start:end],
                                                            self.position_ids[:, start:end], cache=self.cache, at=at),
                            wanted[:, start:end], full_logits)


class ApproximatePrefixCachedCalls:
    """Fast-dLLM's prefix cache for bidirectional models (an approximation: the cached prefix keys were
    computed while the current block was still masked). The first call of a block runs the whole canvas
    and caches the columns before the block; later calls run the block and everything after it."""

    def __init__(self, denoiser: CountedDenoiser, valid, position_ids):
        self.denoiser, self.valid, self.position_ids = denoiser, valid, position_ids
        self.cache, self.prefix = None, 0

    def start_block(self, block: Block) -> None:
        columns = block.members.any(0).nonzero()
        self.prefix = int(columns[0]) if len(columns) else 0

    def logits(self, x, first_step: bool, wanted, full_logits: bool):
        if first_step:
            def call(at):
                logits, cache = self.denoiser.logits(x, self.valid, self.position_ids, use_cache=True, at=at)
                self.cache = truncate_cache(cache, self.prefix)
                return logits

            return logits_where(call, wanted, full_logits)
        p = self.prefix
        return logits_where(lambda at: self.denoiser.logits(x[:, p:], self.valid[:, p:], self.position_ids[:, p:],
                                                            cache=self.cache, at=at), wanted[:, p:], full_logits)


def _block_length_for_block_causal(denoiser: CountedDenoiser, config: DecodeConfig) -> int:
    model_block = denoiser.block_size
    block_length = config.block_length or model_block
    if block_length % model_block:
        raise ValueError(f"block_length={block_length} must be a multiple of the model's attention block size "
                         f"{model_block} (block-causal model); leave it unset to use {model_block}")
    return block_length


def decode_blocks(denoiser: CountedDenoiser, x, valid, position_ids, config: DecodeConfig, generator,
                  column_blocks: int | None, recorder: TraceRecorder):
    """The LLaDA loop over blocks and steps; returns (tokens, steps)."""
    mask_id = denoiser.require_mask_id()
    x = x.clone()
    to_generate = (x == mask_id) & valid
    if column_blocks:
        blocks = plan_column_blocks(to_generate, config, column_blocks)
    else:
        blocks = plan_rank_blocks(to_generate, config)
    if column_blocks and config.use_cache and denoiser.supports_cache:
        calls = BlockCausalCachedCalls(denoiser, valid, position_ids)
    elif config.approximate_prefix_cache and denoiser.supports_cache:
        calls = ApproximatePrefixCachedCalls(denoiser, valid, position_ids)
    else:
        calls = FullCanvasCalls(denoiser, valid, position_ids)
    total_steps = sum(b.counts.shape[1] for b in blocks)
    if config.schedule == "ascending":
        total_steps = ascending_num_steps(int(to_generate.sum(-1).max()))
    eos_id = config.eos_token_id if config.eos_token_id is not None else denoiser.eos_token_id
    global_step = 0
    for block in blocks:
        calls.start_block(block)
        running_confidence = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        first_step = True
        step = 0
        while ((x == mask_id) & block.members).any():
            thresholded = config.remasking == "threshold"
            if not thresholded and step >= block.counts.shape[1]:
                raise RuntimeError("the unmasking schedule ended with masks left in the block (a bug)")
            count = None if thresholded else block.counts[:, step]
            if count is not None and not bool(count.any()):
                step, global_step = step + 1, global_step + 1
                continue
            masked = (x == mask_id) & block.members  # (B, L)
            masked_logits = calls.logits(x, first_step, masked, config.full_logits)  # (N, V), N masked in the block
            first_step = False
            sample = draw(masked_logits, config, generator, statistics=config.remasking in STATISTICS_POLICIES)
            x0 = x.clone()
            x0[masked] = sample.tokens
            score = torch.full(x.shape, float("-inf"), dtype=torch.float64, device=x.device)  # (B, L)
            score[masked] = position_scores(config.remasking, sample, generator)
            logprob = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
            logprob[masked] = sample.logprob
            policy_logprob = None
            if recorder.active:  # RL's action log-probs: at the rollout temperature, not the confidence's T=1
                policy_logprob = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
                policy_logprob[masked] = tempered_logprob(masked_logits, sample.tokens, config.temperature)
            if config.eoser and eos_id is not None:
                gamma = eoser_gamma(global_step, total_steps, config.schedule, config.eoser_gamma_min)
                score = torch.where(masked & (x0 == eos_id), score * gamma, score)
            if config.remasking == "rcr":
                after, revealed, remasked = _running_confidence_step(x, x0, masked, score, running_confidence,
                                                                     block, step, mask_id)
                recorder.record(x, revealed, logprob, remasked, x0=x0, confidence=score,
                                policy_logprob=policy_logprob)
                x = after
            else:
                chosen = select_above_threshold(score, config.threshold) if thresholded else select_top(score, count)
                recorder.record(x, chosen, logprob, x0=x0, confidence=score, policy_logprob=policy_logprob)
                x = torch.where(chosen, x0, x)
            step, global_step = step + 1, global_step + 1
    return x, global_step


def _running_confidence_step(x, x0, masked, score, running_confidence, block: Block, step: int, mask_id: int):
    """MDPO RCR: fill every masked position, then remask the lowest running confidences so that exactly
    the schedule's cumulative count stays revealed (nothing is remasked at the last step)."""
    running_confidence[masked] = score[masked]
    filled = torch.where(masked, x0, x)
    still_to_reveal = block.counts[:, step + 1:].sum(-1)
    candidates = torch.where(block.members, -running_confidence,
                             torch.tensor(float("-inf"), dtype=torch.float64, device=x.device))
    remask = select_top(candidates, still_to_reveal)
    revealed = masked & ~remask
    remasked = ~masked & remask
    return filled.masked_fill(remask, mask_id), revealed, remasked


def confidence_decode(model, canvas, config: DecodeConfig, valid=None, position_ids=None, generator=None):
    """LLaDA-style confidence decoding of `canvas` -> DecodeResult (see the module docstring)."""
    denoiser = as_denoiser(model)
    canvas = Canvas.of(denoiser, canvas, valid, position_ids)
    canvas, valid, position_ids = canvas.tokens, canvas.valid, canvas.positions
    meter = denoiser.meter()
    if denoiser.attention == "block-causal":
        block_length = _block_length_for_block_causal(denoiser, config)
        layout = PositionLayout(canvas, valid, position_ids)
        callback = config.step_callback
        recorder = TraceRecorder(config.trace, callback and (lambda step: callback(layout.restore_step(step, canvas))))
        tokens, steps = decode_blocks(denoiser, layout.aligned, layout.aligned_valid, layout.aligned_positions,
                                      config, generator, block_length, recorder)
        tokens = layout.restore(tokens, canvas)
        trace = recorder.result()
        if trace is not None:
            trace = [layout.restore_step(step, canvas) for step in trace]
    else:
        if config.approximate_prefix_cache and not denoiser.supports_cache:
            raise ValueError("approximate_prefix_cache needs a model with a KV cache (MDLMForMaskedLM)")
        recorder = TraceRecorder(config.trace, config.step_callback)
        tokens, steps = decode_blocks(denoiser, canvas, valid, position_ids, config, generator, None, recorder)
        trace = recorder.result()
    return DecodeResult(tokens=tokens, nfe=meter.nfe, trace=trace,
                        stats={"steps": steps, "row_evaluations": meter.row_evaluations})


class PositionLayout:
    """Moves each row so that column = position id (left-aligned), and back.

    Block-causal attention is defined on positions, so with left-padded prompts of different lengths a
    model block is a different column range in each row; in this layout it is one column range."""

    def __init__(self, canvas, valid, position_ids):
        B = canvas.shape[0]
        positions = position_ids.masked_fill(~valid, -1)
        width = int(positions.max()) + 1 if valid.any() else 1
        rows = torch.arange(B, device=canvas.device)[:, None].expand_as(canvas)
        counts = torch.zeros(B, width, dtype=torch.long, device=canvas.device)
        counts[rows[valid], positions[valid]] += 1
        if bool((counts > 1).any()):
            raise ValueError("block-causal decoding needs distinct position ids within a row")
        self.rows, self.positions, self.valid = rows, positions, valid
        pad = canvas[~valid][0] if (~valid).any() else 0
        self.aligned = torch.full((B, width), int(pad), dtype=canvas.dtype, device=canvas.device)
        self.aligned[rows[valid], positions[valid]] = canvas[valid]
        self.aligned_valid = counts.bool()
        self.aligned_positions = torch.arange(width, device=canvas.device).expand(B, width)

    def restore(self, aligned_tensor, like):
        """A (B, W) tensor of the aligned layout back in the original layout, `like` filling the padding."""
        out = like.to(aligned_tensor.device, aligned_tensor.dtype).clone()
        out[self.valid] = aligned_tensor[self.rows[self.valid], self.positions[self.valid]]
        return out

    def restore_step(self, step, canvas):
        def back(t, padding_value):
            if t is None:
                return None
            like = canvas.cpu() if padding_value is None else torch.full(canvas.shape, padding_value, dtype=t.dtype)
            return self.restore(t.to(canvas.device), like).cpu()

        return type(step)(state=back(step.state, None), revealed=back(step.revealed, False),
                          remasked=back(step.remasked, False), logprob=back(step.logprob, 0.0),
                          x0=back(step.x0, None), confidence=back(step.confidence, float("-inf")),
                          policy_logprob=back(step.policy_logprob, 0.0))
