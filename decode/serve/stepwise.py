"""The confidence sampler as a state machine of one network call per step, over rows that come and go.

Same method as `mdlm.decode.confidence` (LLaDA, Nie et al. 2025; Fast-dLLM's threshold; MDPO's RCR;
EOSER/ASS of Yang et al. 2025): per step, draw x0 at the masked positions of the row's current block,
score the draws with the remasking policy (EOS scores times EOSER's gamma), commit the step's count (or
every score >= tau), and move to the next block when this one has no mask left. What differs is who
drives the loop: `mdlm.decode.confidence` runs one batch from start to end; here each row keeps its own
block, step and random stream (`RowDecoder`), and `step_rows` advances any set of rows by one network
call, so rows can join and leave the batch between calls (step-level continuous batching).

    rows = [RowDecoder(prompt_ids, 32, config, denoiser, seed=0)]
    while rows:
        step_rows(denoiser, rows, pad_id)              # one network call for all of them
        rows = [r for r in rows if not r.done]

A row's tokens never depend on its neighbours: its blocks are planned as if it were alone (the plan of a
one-row `decode_blocks` call), its draws and random scores come from its own `torch.Generator` seeded by
the request (the counter-based noise of `mdlm.kernels` is keyed by the seed each draw takes from it and
by the row's own position index, never by its index in the batch), and everything else is per row
(argmax, stable top-k, threshold). Left padding leaves a row's positions and attention unchanged. With
the same seed and one row, the tokens equal `mdlm.decode.generate`'s.
"""

from __future__ import annotations

import torch

from mdlm.decode.blocks import plan_rank_blocks
from mdlm.decode.canvas import default_position_ids, pad_rows
from mdlm.decode.config import DecodeConfig
from mdlm.decode.denoiser import active_positions
from mdlm.decode.draw import draw
from mdlm.decode.remasking import RemaskingPolicy, remasking_policy
from mdlm.decode.unmasking import ascending_num_steps, eoser_gamma

NEG_INF = float("-inf")


class RowDecoder:
    """One sequence being decoded: prompt + `max_new_tokens` masks, and where its decoding stands.

    tokens (1, L) long: the row's canvas now. block / step: the current block and the step within it.
    policy: the row's remasking policy object (`mdlm.decode.remasking`; RCR keeps per-block state).
    nfe: network calls this row took part in. revealed / remasked: generated-position indices of the last
    step (for the live view). done: no mask left (or `finish` was called)."""

    def __init__(self, prompt_ids: list[int], max_new_tokens: int, config: DecodeConfig, denoiser, seed: int):
        if config.sampler != "confidence":
            raise ValueError(f"the step-wise decoder runs sampler='confidence', not {config.sampler!r}")
        self.config = config
        self.mask_id = denoiser.require_mask_id()
        self.prompt_length = len(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.tokens = torch.tensor([list(prompt_ids) + [self.mask_id] * max_new_tokens], dtype=torch.long)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.policy = remasking_policy(config)
        to_generate = self.tokens == self.mask_id
        to_generate[:, :self.prompt_length] = False  # a mask id inside the prompt is text
        self.blocks = plan_rank_blocks(to_generate, config, self.policy.sets_own_steps)  # this row's plan alone
        self.total_steps = sum(b.counts.shape[1] for b in self.blocks)
        if config.unmasking_schedule == "ascending":
            self.total_steps = ascending_num_steps(max_new_tokens)
        self.eos_id = config.eos_token_id if config.eos_token_id is not None else denoiser.eos_token_id
        self.counts = [block.counts[0].tolist() for block in self.blocks]  # tokens per step, per block
        self.shares_commit = type(self.policy).commit is RemaskingPolicy.commit  # a pure select (no state)
        self.block, self.step, self.global_step, self.nfe = 0, 0, 0, 0
        self.left = int(self.blocks[0].members.sum())  # masks left in the current block
        self.revealed_mask = self.remasked_mask = None
        self.done = False
        self.policy.start_block(self.tokens)
        self._skip_empty_steps()

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    @property
    def generated(self) -> torch.Tensor:
        return self.tokens[0, self.prompt_length:]

    @property
    def revealed(self) -> list[int]:
        """Generated-position indices the last step revealed."""
        return _indices(self.revealed_mask, self.prompt_length)

    @property
    def remasked(self) -> list[int]:
        """Generated-position indices the last step sent back to the mask (RCR)."""
        return _indices(self.remasked_mask, self.prompt_length)

    def masked_in_block(self) -> torch.Tensor:
        """(1, L) bool: the masked positions of the current block."""
        return (self.tokens == self.mask_id) & self.blocks[self.block].members

    def count(self) -> int | None:
        """What the schedule reveals at this step (None: the policy decides)."""
        return None if self.policy.sets_own_steps else self.counts[self.block][self.step]

    def eoser_factor(self) -> float:
        if not (self.config.eoser and self.eos_id is not None):
            return 1.0
        return eoser_gamma(self.global_step, self.total_steps, self.config.unmasking_schedule, self.config.eoser_gamma_min)

    def final_before(self) -> int:
        """Generated positions [0, k) that no later step can change: up to the first mask, and for a policy
        that remasks (RCR) no further than the current block's start."""
        masked = (self.generated == self.mask_id).nonzero()
        k = int(masked[0, 0]) if len(masked) else self.max_new_tokens
        if not self.shares_commit and not self.done:
            start = self.blocks[self.block].members[0, self.prompt_length:].nonzero()
            k = min(k, int(start[0, 0]) if len(start) else k)
        return k

    def finish(self) -> None:
        self.done = True

    def _skip_empty_steps(self) -> None:
        """Move past finished blocks and steps that reveal nothing (no network call for them), as the
        batch loop does."""
        while not self.done:
            if self.left == 0:
                self.block, self.step = self.block + 1, 0
                if self.block >= len(self.blocks):
                    self.done = True
                else:
                    self.left = int(self.masked_in_block().sum())
                    self.policy.start_block(self.tokens)
                continue
            if not self.policy.sets_own_steps:
                if self.step >= len(self.counts[self.block]):
                    raise RuntimeError("the unmasking schedule ended with masks left in the block (a bug)")
                if not self.counts[self.block][self.step]:
                    self.step, self.global_step = self.step + 1, self.global_step + 1
                    continue
            return

    def commit_alone(self, x0: torch.Tensor, masked: torch.Tensor, score: torch.Tensor):
        """The policy's own commit for this row (policies with state, RCR) -> (tokens, revealed, remasked)."""
        return self.policy.commit(self.tokens, x0, masked, score, self.blocks[self.block], self.step, self.mask_id)

    def advance(self, tokens: torch.Tensor, revealed: torch.Tensor, remasked: torch.Tensor | None,
                revealed_count: int) -> None:
        """Take the step's outcome ((1, L) tensors; how many positions it revealed) and move to the next
        step that needs a network call."""
        self.tokens, self.revealed_mask, self.remasked_mask = tokens, revealed, remasked
        if self.shares_commit:
            self.left -= revealed_count
        else:
            self.left = int(self.masked_in_block().sum())
        self.nfe += 1
        self.step, self.global_step = self.step + 1, self.global_step + 1
        self._skip_empty_steps()


def _indices(mask: torch.Tensor | None, offset: int) -> list[int]:
    return [] if mask is None else mask[0, offset:].nonzero()[:, 0].tolist()


def _batched_draw_allowed(row: RowDecoder) -> bool:
    """At temperature 0 a draw is an argmax per position, the same alone or batched; the random policy
    still takes its scores from the row's own generator, so it draws alone."""
    return row.config.temperature == 0 and row.config.remasking != "random"


def step_rows(denoiser, rows: list[RowDecoder], pad_id: int) -> None:
    """Advance every row (none done) by one step: one network call for all of them, left-padded.

    Draws are per row (own generator) except the argmax of temperature-0 rows, which is one call; the
    commit is one call per kind of stateless policy (top-n by the schedule's counts, or a threshold),
    per row for policies with state."""
    if not rows:
        return
    tokens, valid = pad_rows([r.tokens[0].tolist() for r in rows], pad_id, "left")  # (B, W)
    width = tokens.shape[1]
    shifts = [width - r.length for r in rows]
    wanted = torch.zeros_like(valid)  # (B, W): each row's masked positions in its current block
    for b, (shift, row) in enumerate(zip(shifts, rows)):
        wanted[b, shift:] = row.masked_in_block()[0]
    device = denoiser.device
    positions = default_position_ids(valid)
    ids, valid_d, positions_d = tokens.to(device), valid.to(device), positions.to(device)
    if any(r.config.full_logits for r in rows):
        logits = denoiser.logits(ids, valid_d, positions_d)[wanted.to(device)]
    else:
        at, present = active_positions(wanted.to(device))
        logits = denoiser.logits(ids, valid_d, positions_d, at=at)[present]  # (N, V), row-major
    per_row = logits.split(wanted.sum(-1).tolist())
    x0 = tokens.clone()
    score = torch.full(tokens.shape, NEG_INF, dtype=torch.float64)  # (B, W), -inf where nothing is drawn
    batched = [b for b, r in enumerate(rows) if _batched_draw_allowed(r)]
    if batched:
        # One argmax draw for all temperature-0 rows (statistics when any policy needs them); their tokens
        # and, per scoring rule, their scores go in with one indexing each (row-major, as drawn).
        stats = any(rows[b].policy.needs_statistics for b in batched)
        together = draw(torch.cat([per_row[b] for b in batched]), rows[batched[0]].config, statistics=stats)
        in_batch = torch.zeros(len(rows), 1, dtype=torch.bool)
        in_batch[batched] = True
        x0[wanted & in_batch] = together.tokens.cpu()
        by_rule: dict = {}
        for b in batched:
            by_rule.setdefault(rows[b].policy.score, []).append(b)
        if len(by_rule) == 1:
            score[wanted & in_batch] = rows[batched[0]].policy.scores(together).cpu()
        else:
            start = 0
            for b in batched:
                n = per_row[b].shape[0]
                score[b][wanted[b]] = rows[b].policy.scores(_slice_sample(together, start, start + n)).cpu()
                start += n
    batched_rows = set(batched)
    for b, row in enumerate(rows):
        if b in batched_rows:
            continue
        sample = draw(per_row[b], row.config, row.generator, statistics=row.policy.needs_statistics)
        x0[b][wanted[b]] = sample.tokens.cpu()
        score[b][wanted[b]] = row.policy.scores(sample, row.generator).cpu()
    gamma = torch.tensor([r.eoser_factor() for r in rows], dtype=torch.float64)[:, None]
    eos = torch.tensor([-1 if r.eos_id is None else r.eos_id for r in rows])[:, None]
    score = torch.where(wanted & (x0 == eos) & (gamma != 1.0), score * gamma, score)
    after, revealed = tokens.clone(), torch.zeros_like(wanted)
    remasked: list[torch.Tensor | None] = [None] * len(rows)
    groups: dict[tuple, list[int]] = {}
    for b, row in enumerate(rows):
        if row.shares_commit:
            groups.setdefault(_selection_key(row.policy), []).append(b)
        else:
            s = shifts[b]
            out, revealed_b, remasked[b] = row.commit_alone(x0[b:b + 1, s:], wanted[b:b + 1, s:], score[b:b + 1, s:])
            after[b, s:], revealed[b, s:] = out[0], revealed_b[0]
    for members in groups.values():
        index = torch.tensor(members)
        policy = rows[members[0]].policy
        counts = None if policy.sets_own_steps else torch.tensor([rows[b].count() for b in members])
        chosen = policy.select(score[index], counts)  # stateless: the same selection alone or together
        after[index] = torch.where(chosen, x0[index], tokens[index])
        revealed[index] = chosen
    revealed_counts = revealed.sum(-1).tolist()
    for b, row in enumerate(rows):
        s = shifts[b]
        row.advance(after[b:b + 1, s:], revealed[b:b + 1, s:], remasked[b], revealed_counts[b])


def _selection_key(policy) -> tuple:
    """Rows whose policies select alike (same class, same parameters: threshold, entropy bound) commit in
    one call."""
    return (type(policy), tuple(sorted((k, v) for k, v in vars(policy).items()
                                       if isinstance(v, (bool, int, float, str, type(None))))))


def _slice_sample(sample, start: int, end: int):
    pick = lambda t: None if t is None else t[start:end]  # noqa: E731
    return type(sample)(pick(sample.tokens), pick(sample.logprob), pick(sample.top1_logprob),
                        pick(sample.top2_logprob), pick(sample.entropy))
