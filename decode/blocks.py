"""Block planning for confidence-ordered decoding: which generated positions form each
semi-autoregressive block, and how many tokens each of its steps reveals.

LLaDA (Nie et al. 2025) splits the generated positions into blocks of `block_length` decoded left to
right, with the asked-for steps spread over them; the unmasking schedule (`mdlm.decode.unmasking`) then
gives the tokens per step inside a block. Two layouts:
- rank blocks (bidirectional models): the k-th generated position of a row is in block k // block_length,
  so rows with prompts of different lengths get the same block shapes;
- column blocks (block-causal models, BD3-LM, Arriola et al. 2025): the blocks are the model's attention
  blocks, column ranges of a canvas whose column is the position (`PositionLayout`).
A policy that sets its own steps (threshold, entropy-bound) gets one step per token as an upper bound.

Each row plans its steps as it would alone (its own blocks, its own tokens per block), so a batch of
left-padded prompts decodes each row as alone: on a block-causal model prompts of other lengths cover
other column blocks, and sharing `steps` over the batch's blocks would give each row another schedule.
A block's counts are the rows' plans padded with zero-token steps (a step nobody reveals in is skipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mdlm.decode.config import DecodeConfig
from mdlm.decode.unmasking import ascending_blocks, ascending_num_steps, step_counts


@dataclass
class Block:
    """One decoding block: the generated positions it covers (B, L) and the tokens per step (B, S)."""

    members: torch.Tensor
    counts: torch.Tensor
    columns: tuple[int, int] | None = None  # [start, end) when the block is a column range (block-causal)
    row_steps: list[int] | None = None  # steps each row has in the block (the rest of `counts` is padding)


def _counts_tensor(per_row: list[list[int]], device) -> torch.Tensor:
    width = max(1, max(len(c) for c in per_row))
    return torch.tensor([c + [0] * (width - len(c)) for c in per_row], dtype=torch.long, device=device)


def _steps_per_block(config: DecodeConfig, block_sizes: list[int], own_steps: bool) -> list[int]:
    """Steps of each block of one row (block_sizes: its tokens in each of its blocks), summing to
    `config.steps` exactly, so that NFE == steps (without a cache-free skip) instead of a silent rounding.

    The steps are spread evenly, the remainder going to the earliest blocks (LLaDA asserts divisibility
    instead); a block never gets more steps than tokens, its surplus goes to blocks with room. A step
    count that cannot be honoured is refused: fewer steps than blocks (a block needs a network call) or
    more steps than tokens (a step reveals at least one token)."""
    sizes = [max(1, size) for size in block_sizes] or [1]
    if config.steps is None or own_steps:
        return sizes  # one token per step; a policy with its own steps (threshold) stops earlier
    steps, total = config.steps, sum(sizes)
    if steps < len(sizes):
        raise ValueError(f"steps={steps} is fewer than the {len(sizes)} blocks of block_length={config.block_length} "
                         f"({total} tokens to generate): each block needs at least one step; ask for steps >= "
                         f"{len(sizes)} or a larger block_length")
    if steps > total:
        raise ValueError(f"steps={steps} is more than the {total} tokens to generate: each step reveals at least "
                         f"one token; ask for steps <= {total} (or leave steps unset for one token per step)")
    return _spread(steps, sizes)


def _spread(steps: int, sizes: list[int]) -> list[int]:
    """`steps` over blocks of `sizes` tokens: evenly, the remainder to the earliest blocks, no block
    more steps than tokens (its surplus to the blocks with room)."""
    allotted, left = [0] * len(sizes), steps
    while left:
        room = [k for k, size in enumerate(sizes) if allotted[k] < size]
        share, extra = divmod(left, len(room))
        for i, k in enumerate(room):
            add = min(sizes[k] - allotted[k], share + (i < extra))
            allotted[k] += add
            left -= add
    return allotted


def _plan_rows(members_of: list[torch.Tensor], config: DecodeConfig, own_steps: bool) -> list[list[list[int]]]:
    """Tokens per step of each block (outer) and row (inner), each row planned as if alone: its steps
    spread over the blocks where it has tokens to generate (`_steps_per_block` on its own block sizes)."""
    sizes = [members.sum(-1).tolist() for members in members_of]  # block -> row -> tokens
    batch_tokens = sum(max(1, max(block, default=0)) for block in sizes)
    plans = [[[] for _ in block] for block in sizes]
    for row in range(len(sizes[0]) if sizes else 0):
        own_blocks = [k for k in range(len(sizes)) if sizes[k][row]]
        if not own_blocks:
            continue  # nothing to generate in this row (a finished or prompt-only row)
        row_sizes = [sizes[k][row] for k in own_blocks]
        if config.steps is not None and not own_steps and sum(row_sizes) < config.steps <= batch_tokens:
            # refused alone (more steps than its tokens), but the batch as a whole has room for the steps
            # (as before per-row plans): this row reveals one token per step
            row_steps = row_sizes
        else:
            row_steps = _steps_per_block(config, row_sizes, own_steps)  # as alone, refusals included
        for k, steps in zip(own_blocks, row_steps):
            plans[k][row] = step_counts(config.unmasking_schedule, sizes[k][row], steps)
    return plans


def _blocks_of(members_of, plans, device, ranges=None) -> list[Block]:
    ranges = ranges or [None] * len(members_of)
    return [Block(members, _counts_tensor(counts, device), columns, [len(c) for c in counts])
            for members, counts, columns in zip(members_of, plans, ranges)]


def _check_ascending_steps(config: DecodeConfig, longest: int, own_steps: bool) -> None:
    if not own_steps and config.steps is not None and config.steps != ascending_num_steps(longest):
        raise ValueError(f"unmasking_schedule='ascending' fixes its own step count, floor(log2 {longest}) = "
                         f"{ascending_num_steps(longest)} for {longest} tokens, but steps={config.steps} was asked "
                         f"for: leave steps unset (or use unmasking_schedule='uniform' for {config.steps} steps)")


def plan_rank_blocks(to_generate: torch.Tensor, config: DecodeConfig, own_steps: bool = False) -> list[Block]:
    """LLaDA blocks: the k-th generated position of a row belongs to block k // block_length, so rows
    with prompts of different lengths (or infill suffixes, schema scaffolds) get the same block shapes."""
    masked_per_row = to_generate.sum(-1).tolist()
    rank = to_generate.long().cumsum(-1) - 1
    longest = max(masked_per_row) if masked_per_row else 0
    block_length = config.block_length or max(1, longest)
    num_blocks = max(1, math.ceil(longest / block_length))
    if config.unmasking_schedule == "ascending":
        _check_ascending_steps(config, longest, own_steps)
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
            blocks.append(Block(to_generate & (rank >= lo) & (rank < hi), _counts_tensor(counts, rank.device),
                                row_steps=[len(c) for c in counts]))
        return blocks
    members_of = [to_generate & (rank // block_length == k) for k in range(num_blocks)]
    return _blocks_of(members_of, _plan_rows(members_of, config, own_steps), rank.device)


def plan_column_blocks(to_generate: torch.Tensor, config: DecodeConfig, block_length: int,
                       own_steps: bool = False) -> list[Block]:
    """Blocks as column ranges [j*b, (j+1)*b) of a canvas whose column is the position (block-causal
    models): the decoding blocks coincide with the model's attention blocks."""
    width = to_generate.shape[1]
    ranges = [(s, min(width, s + block_length)) for s in range(0, width, block_length)]
    ranges = [r for r in ranges if to_generate[:, r[0]:r[1]].any()]
    if config.unmasking_schedule == "ascending":
        _check_ascending_steps(config, int(to_generate.sum(-1).max()), own_steps)
    members_of = []
    for start, end in ranges:
        members = torch.zeros_like(to_generate)
        members[:, start:end] = to_generate[:, start:end]
        members_of.append(members)
    if config.unmasking_schedule == "ascending":  # ASS sizes each block's steps itself
        plans = [[step_counts("ascending", int(m), 0) if m else [] for m in members.sum(-1).tolist()]
                 for members in members_of]
    else:
        plans = _plan_rows(members_of, config, own_steps)
    return _blocks_of(members_of, plans, to_generate.device, ranges)


def block_length_for_block_causal(denoiser, config: DecodeConfig) -> int:
    """The decoding block of a block-causal model: config.block_length, a multiple of its attention block."""
    model_block = denoiser.block_size
    block_length = config.block_length or model_block
    if block_length % model_block:
        raise ValueError(f"block_length={block_length} must be a multiple of the model's attention block size "
                         f"{model_block} (block-causal model); leave it unset to use {model_block}")
    return block_length


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
