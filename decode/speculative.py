"""Any-subset speculative decoding (ASSD; Guo & Ermon 2025, "Reviving Any-Subset Autoregressive Models
with Principled Parallel Sampling and Speculative Decoding"), with the two baselines it is measured
against: sequential decoding (one token per network call, the same distribution) and plain parallel
decoding (conditionally independent tokens, fewer calls, a different distribution).

The model is an any-subset AR model (`mdlm.as_arm`): draft and verify conditionals come from one
forward pass each through query copies. Pseudocode, with the decoding order sigma over the positions
still to generate and a draft size k:

    while tokens remain:
        T = the next k positions in sigma (and T_k, the one after them)
        q_j = p(x_Tj | decoded)            for all j at once (draft)                          # 1 call
        y_j ~ q_j
        p_j = p(x_Tj | decoded, y_<j)      for j = 1..k at once (verify; p_0 = q_0 is reused)   # 1 call
        for j = 1..k-1: accept y_j with probability min(1, p_j(y_j) / q_j(y_j))
                        else commit z ~ normalize(max(p_j - q_j, 0)) at T_j and stop this round
        if every y_j was accepted: commit z ~ p_k at T_k (the standard bonus token: p_k is already
                        computed, it conditions on accepted tokens only, so it is an exact draw)

The first draft is always accepted (q_0 = p_0, so it is not recomputed), and each round of two calls
commits at least two tokens: network calls <= generated tokens. Rejection sampling makes every committed
token an exact draw from the model's conditional given the tokens before it in sigma, so the output
follows the model's joint distribution in order sigma, exactly as sequential decoding does (tested by
enumeration in tests/test_speculative.py).

Orders (`DecodeConfig.order`): left-to-right, right-to-left, random (a permutation drawn per row from
the run's generator before decoding) are fixed in advance: ASSD then samples exactly the sequential
decoder's distribution. "confidence" picks each round's targets by the draft's top-1 probability over
every remaining position (one draft query per remaining position); the order then depends on the round
boundaries, so each token is still an exact conditional draw but the mixture over orders may differ
from one-token-at-a-time confidence decoding.

Adaptive draft size (`adaptive_draft`): after each round the acceptance rate alpha of the batch is
re-estimated (Laplace-smoothed) and the next round drafts until the chance of reaching the last draft
falls below 10%: k = 1 + ceil(log 0.1 / log alpha), between 2 and 4 * draft_size.

Every categorical draw (drafts, acceptance coins, residual and bonus tokens) goes through the one draw
step, `mdlm.decode.draw` (float64 Gumbel-max in `mdlm.kernels`). Temperature / top-k / top-p change the target
distribution: drafts and verifies use the same tempered, filtered distribution.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from mdlm.as_arm import UNDECIDED, check_two_stream_model, initial_rank, keep_in_cache, left_align, two_stream_forward
from mdlm.decode.canvas import Canvas
from mdlm.decode.config import DecodeConfig, DecodeResult
from mdlm.decode.denoiser import as_denoiser
from mdlm.decode.draw import draw, draw_probs, model_logprob, sample_from_probs
from mdlm.decode.trace import TraceRecorder

ACCEPT, REJECT = 0, 1
# Adaptive draft size: draft until the chance of reaching the last draft falls below this, within
# [MIN_ADAPTIVE_DRAFT, MAX_DRAFT_FACTOR * draft_size].
LAST_DRAFT_CHANCE = 0.1
MIN_ADAPTIVE_DRAFT = 2
MAX_DRAFT_FACTOR = 4


# ----------------------------------------------------------------------------------------------------
# The draws
# ----------------------------------------------------------------------------------------------------

def sample_residual(p: torch.Tensor, q: torch.Tensor, generator=None) -> torch.Tensor:
    """The rejection step of speculative sampling: z ~ normalize(max(p - q, 0)) per row of (..., V).

    Where the residual vanishes (p == q up to rounding, where a rejection cannot happen in exact
    arithmetic) it draws from p."""
    residual = (p.double() - q.double()).clamp_min(0)
    empty = residual.sum(-1, keepdim=True) <= 0
    return sample_from_probs(torch.where(empty, p.double(), residual), generator)


def accept_coins(p_of_draft: torch.Tensor, q_of_draft: torch.Tensor, generator=None) -> torch.Tensor:
    """Bernoulli(min(1, p(y) / q(y))) per element: True = accept the draft."""
    accept = (p_of_draft / q_of_draft).clamp(max=1.0)
    two_way = torch.stack([accept, 1 - accept], -1)
    return sample_from_probs(two_way, generator) == ACCEPT


def next_draft_size(accepted: int, drafted: int, draft_size: int) -> int:
    """Draft until the chance of reaching the last draft is below 10% (see the module docstring)."""
    alpha = (accepted + 1) / (drafted + 2)  # Laplace-smoothed acceptance rate
    most = MAX_DRAFT_FACTOR * draft_size
    extra = math.ceil(math.log(LAST_DRAFT_CHANCE) / math.log(alpha)) if alpha < 1 else most
    return max(MIN_ADAPTIVE_DRAFT, min(most, 1 + extra))


# ----------------------------------------------------------------------------------------------------
# The decoding state: committed tokens, their generation ranks, the cache of their content
# ----------------------------------------------------------------------------------------------------

class TwoStreamCanvas:
    """A batch of canvases being decoded by an any-subset AR model.

    Committed tokens get ranks 1, 2, ... in commit order (fixed tokens rank 0; see mdlm.as_arm). With
    `use_cache` the keys/values of committed content are kept (they never change); `pending` marks
    committed positions whose content has not been computed yet and joins the next call. Without the
    cache every call recomputes the content of all decoded tokens."""

    def __init__(self, denoiser, canvas: Canvas, use_cache: bool):
        self.denoiser = denoiser
        self.mask_id = canvas.mask_token_id
        self.tokens = canvas.tokens.clone()  # (B, L)
        self.valid = canvas.valid
        self.position_ids = canvas.positions
        self.rank = initial_rank(canvas.tokens, self.mask_id, canvas.valid)  # (B, L)
        self.next_rank = torch.ones(canvas.tokens.shape[0], dtype=torch.long, device=canvas.tokens.device)
        self.pending = self.rank == 0
        self.use_cache = use_cache
        self.cache = None
        self._unsettled = None  # the last call's cache, until we know which drafts were accepted
        self.meter = denoiser.meter()
        self.calls_per_row = torch.zeros(canvas.tokens.shape[0], dtype=torch.long, device=canvas.tokens.device)

    @property
    def undecided(self) -> torch.Tensor:
        return (self.rank == UNDECIDED) & self.valid

    def forward(self, query_positions, query_rank, query_valid, drafts=None):
        """One network call: pending contents, then `drafts` = (positions, tokens, valid) as content
        with ranks next_rank + slot, then query copies. Returns query logits (B, K, V)."""
        self._settle()
        index, pending_valid = left_align(self.pending)
        ids, positions = self.tokens.gather(1, index), self.position_ids.gather(1, index)
        rank, content_valid = self.rank.gather(1, index), pending_valid
        num_drafts = 0
        if drafts is not None:
            draft_positions, draft_tokens, draft_valid = drafts
            num_drafts = draft_positions.shape[1]
            slots = torch.arange(num_drafts, device=ids.device)[None]
            ids = torch.cat([ids, draft_tokens], 1)
            positions = torch.cat([positions, self.position_ids.gather(1, draft_positions)], 1)
            rank = torch.cat([rank, self.next_rank[:, None] + slots], 1)
            content_valid = torch.cat([content_valid, draft_valid], 1)
        # The denoiser's raw counted forward: the two-stream mask is built by mdlm.as_arm.
        logits, new_cache = two_stream_forward(
            self.denoiser, ids, positions, rank, content_valid, self.position_ids.gather(1, query_positions),
            query_rank, query_valid, cache=self.cache, use_cache=self.use_cache)  # (B, K, V)
        self.calls_per_row += query_valid.any(1).long()
        if self.use_cache:
            # Committed content is final once computed: keep it; drafts wait for their verdict.
            cached = self.cache.valid if self.cache is not None else pending_valid[:, :0]
            drafts_on_trial = torch.zeros_like(content_valid[:, pending_valid.shape[1]:])
            keep = torch.cat([cached, pending_valid, drafts_on_trial, torch.zeros_like(query_valid)], 1)
            self._unsettled = (new_cache, keep, cached.shape[1] + pending_valid.shape[1], num_drafts)
            self.pending = torch.zeros_like(self.pending)
        return logits

    def _settle(self, accepted_drafts=None):
        if self._unsettled is None:
            return
        new_cache, keep, offset, num_drafts = self._unsettled
        if accepted_drafts is not None and num_drafts:
            keep[:, offset:offset + num_drafts] |= accepted_drafts[:, :num_drafts]
        self.cache = keep_in_cache(new_cache, keep)
        self._unsettled = None

    def commit(self, positions, tokens, valid, accepted_drafts=None):
        """Commit tokens (B, M) at positions (B, M) where valid; the valid slots of a row are a prefix
        and get ranks next_rank + slot. accepted_drafts (B, M'): slots whose content the last call
        computed as drafts (their keys are kept instead of recomputed)."""
        rows, slots = valid.nonzero(as_tuple=True)
        where = positions[rows, slots]
        self.tokens[rows, where] = tokens[rows, slots]
        self.rank[rows, where] = self.next_rank[rows] + slots
        recompute = valid.clone()
        last_call_had_drafts = self._unsettled is not None and self._unsettled[3] > 0
        if self.use_cache and accepted_drafts is not None and last_call_had_drafts:
            self._settle(accepted_drafts)
            recompute[:, :accepted_drafts.shape[1]] &= ~accepted_drafts
        self.pending[rows[recompute[rows, slots]], where[recompute[rows, slots]]] = True
        self.next_rank += valid.sum(1)


def _priority(canvas_state: TwoStreamCanvas, order: str, generator) -> torch.Tensor | None:
    """Lower = earlier in sigma; None for the confidence order (chosen each round from the draft)."""
    B, L = canvas_state.tokens.shape
    positions = torch.arange(L, device=canvas_state.tokens.device).expand(B, L).double()
    if order == "left-to-right":
        return positions
    if order == "right-to-left":
        return -positions
    if order == "random":
        return torch.rand(B, L, generator=generator, dtype=torch.float64).to(positions.device)
    return None


def draft_targets(state: TwoStreamCanvas, num_draft: torch.Tensor, num_extra: torch.Tensor,
                  priority: torch.Tensor | None):
    """One draft call. Chooses each row's next num_draft + num_extra positions in sigma and returns
    (targets (B, K), target_valid (B, K), draft logits (B, D, V) of the first D = max num_draft)."""
    undecided = state.undecided
    want = num_draft + num_extra
    width = max(1, int(want.max()))
    draft_width = max(1, int(num_draft.max()))
    if priority is not None:
        score = priority.masked_fill(~undecided, float("inf"))
        targets = score.argsort(dim=1, stable=True)[:, :width]
        target_valid = torch.arange(width, device=want.device)[None] < want[:, None]
        drafted_valid = torch.arange(draft_width, device=want.device)[None] < num_draft[:, None]
        logits = state.forward(targets[:, :draft_width], torch.full_like(targets[:, :draft_width], UNDECIDED),
                               drafted_valid)
        return targets, target_valid, logits
    # Confidence order: draft every remaining position, take the most confident first.
    candidates, candidate_valid = left_align(undecided)
    logits = state.forward(candidates, torch.full_like(candidates, UNDECIDED), candidate_valid)
    confidence = torch.log_softmax(logits.double(), -1).amax(-1).masked_fill(~candidate_valid, float("-inf"))
    chosen = confidence.argsort(dim=1, descending=True, stable=True)
    if chosen.shape[1] < width:  # fewer candidates than wanted in every row: pad (invalid anyway)
        chosen = torch.cat([chosen, chosen[:, :1].expand(-1, width - chosen.shape[1])], 1)
    chosen = chosen[:, :width]
    targets = candidates.gather(1, chosen)
    target_valid = torch.arange(width, device=want.device)[None] < want[:, None]
    index = chosen[:, :draft_width, None].expand(-1, -1, logits.shape[-1])
    return targets, target_valid, logits.gather(1, index)


def _prepare(denoiser, canvas, config: DecodeConfig, valid, position_ids, generator):
    denoiser = as_denoiser(denoiser)
    check_two_stream_model(denoiser.model)
    canvas = Canvas.of(denoiser, canvas, valid, position_ids)
    state = TwoStreamCanvas(denoiser, canvas, use_cache=config.use_cache)
    return state, _priority(state, config.order, generator), generator


def _pad_columns(tensor, width: int, fill):
    missing = width - tensor.shape[1]
    return tensor if missing <= 0 else torch.cat([tensor, tensor.new_full((tensor.shape[0], missing), fill)], 1)


def _scatter_rows(shape, positions, values, valid, fill):
    out = torch.full(shape, fill, dtype=values.dtype, device=values.device)
    rows, slots = valid.nonzero(as_tuple=True)
    out[rows, positions[rows, slots]] = values[rows, slots]
    return out


def _call_stats(state: TwoStreamCanvas, generated_per_row: torch.Tensor) -> dict:
    calls = int(state.calls_per_row.sum())
    generated = int(generated_per_row.sum())
    return dict(generated=generated, generated_per_row=generated_per_row.tolist(),
                calls_per_row=state.calls_per_row.tolist(), tokens_per_call=generated / max(calls, 1))


# ----------------------------------------------------------------------------------------------------
# The decoders
# ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def assd_decode(denoiser, canvas, config: DecodeConfig, valid=None, position_ids=None, generator=None) -> DecodeResult:
    """Any-subset speculative decoding of every mask position of `canvas` (B, L) -> DecodeResult.

    stats: drafted / accepted (tested drafts, the free first one excluded), acceptance_rate, rounds,
    generated (tokens, whole batch), generated_per_row, calls_per_row (calls in which the row had a
    query), tokens_per_call (generated tokens per row-call), draft_sizes (k of each round)."""
    state, priority, generator = _prepare(denoiser, canvas, config, valid, position_ids, generator)
    trace = TraceRecorder(config.trace, config.step_callback)
    total = state.undecided.sum(1)
    drafted = accepted = rounds = 0
    draft_size, draft_sizes = config.draft_size, []
    progress = tqdm(total=int(total.sum()), desc="assd", unit="tok", leave=False, disable=None)
    while bool(state.undecided.any()):
        remaining = state.undecided.sum(1)
        num_draft = remaining.clamp(max=draft_size)
        has_bonus = remaining > draft_size
        targets, target_valid, q_logits = draft_targets(state, num_draft, has_bonus.long(), priority)
        D = q_logits.shape[1]
        slot = torch.arange(D, device=remaining.device)[None]
        draft_valid = slot < num_draft[:, None]
        drafts = draw(q_logits, config, generator).tokens  # (B, D)
        targets, target_valid = _pad_columns(targets, D + 1, 0), _pad_columns(target_valid, D + 1, False)

        # Verify: the query of slot j (1..D) sees the drafts of slots < j; slot 0 reuses the draft.
        verify_valid = target_valid[:, 1:]
        p_logits = q_logits[:, :1]
        if bool(verify_valid.any()):
            verify_rank = state.next_rank[:, None] + 1 + slot
            p_logits = torch.cat([p_logits, state.forward(targets[:, 1:], verify_rank, verify_valid,
                                                          drafts=(targets[:, :D], drafts, draft_valid))], 1)
        else:
            p_logits = torch.cat([p_logits, q_logits.new_zeros(q_logits.shape[0], D, q_logits.shape[-1])], 1)

        p = draw_probs(p_logits, config)  # (B, D + 1, V)
        q = draw_probs(q_logits, config)  # (B, D, V)
        p_of_draft = p[:, :D].gather(-1, drafts[..., None])[..., 0]
        q_of_draft = q.gather(-1, drafts[..., None])[..., 0]
        coins = accept_coins(p_of_draft, q_of_draft, generator) | (slot == 0)
        coins &= draft_valid
        num_accepted = coins.long().cumprod(1).sum(1)  # the first draft is always accepted
        # The token after the accepted run: a residual draw at a rejection, else the bonus draw from p.
        rejected = num_accepted < num_draft
        at_stop = num_accepted[:, None, None].expand(-1, 1, p.shape[-1])
        p_stop = p.gather(1, at_stop)[:, 0]
        q_stop = q.gather(1, at_stop.clamp(max=D - 1))[:, 0]
        extra = sample_residual(p_stop, torch.where(rejected[:, None], q_stop, torch.zeros_like(q_stop)), generator)
        has_extra = rejected | has_bonus
        commit_tokens = torch.cat([drafts, drafts[:, :1]], 1).scatter(1, num_accepted[:, None], extra[:, None])
        commit_valid = torch.arange(D + 1, device=slot.device)[None] < (num_accepted + has_extra.long())[:, None]

        if trace.active:
            revealed = _scatter_rows(state.tokens.shape, targets, torch.ones_like(commit_valid), commit_valid, False)
            logprob = model_logprob(p_logits, commit_tokens)
            logprob = _scatter_rows(state.tokens.shape, targets, logprob, commit_valid, 0.0)
            trace.record(state.tokens, revealed, logprob)
        state.commit(targets, commit_tokens, commit_valid, accepted_drafts=slot < num_accepted[:, None])

        active = remaining > 0
        drafted += int((num_draft - 1).clamp_min(0)[active].sum())
        accepted += int((num_accepted - 1).clamp_min(0)[active].sum())
        rounds += 1
        draft_sizes.append(draft_size)
        progress.update(int(commit_valid.sum()))
        if config.adaptive_draft:
            draft_size = next_draft_size(accepted, drafted, config.draft_size)
    progress.close()
    stats = dict(drafted=drafted, accepted=accepted, acceptance_rate=accepted / max(drafted, 1), rounds=rounds,
                 draft_sizes=draft_sizes, **_call_stats(state, total))
    return DecodeResult(tokens=state.tokens, nfe=state.meter.nfe, trace=trace.result(), stats=stats)


@torch.no_grad()
def sequential_decode(denoiser, canvas, config: DecodeConfig, valid=None, position_ids=None,
                      generator=None) -> DecodeResult:
    """One token per network call in the order of `config.order`: the same distribution as ASSD (for
    the fixed orders), L network calls for L tokens."""
    return parallel_decode(denoiser, canvas, config, valid, position_ids, generator, tokens_per_call=1)


@torch.no_grad()
def parallel_decode(denoiser, canvas, config: DecodeConfig, valid=None, position_ids=None, generator=None,
                    tokens_per_call: int | None = None) -> DecodeResult:
    """Plain parallel decoding: each call drafts the next positions in sigma and commits every draft,
    conditionally independent given the decoded tokens. `config.steps` calls (counts spread evenly),
    or `tokens_per_call` per call."""
    state, priority, generator = _prepare(denoiser, canvas, config, valid, position_ids, generator)
    trace = TraceRecorder(config.trace, config.step_callback)
    total = state.undecided.sum(1)
    steps = config.steps if tokens_per_call is None else None
    if steps is None and tokens_per_call is None:
        raise ValueError("sampler='assd-parallel' needs steps= (its number of network calls)")
    progress = tqdm(total=int(total.sum()), desc="parallel" if tokens_per_call != 1 else "sequential",
                    unit="tok", leave=False, disable=None)
    call = 0
    while bool(state.undecided.any()):
        remaining = state.undecided.sum(1)
        if steps is not None:
            count = -(-remaining // max(1, steps - call))  # ceil: the counts of the remaining calls even out
        else:
            count = remaining.clamp(max=tokens_per_call)
        targets, target_valid, logits = draft_targets(state, count, torch.zeros_like(count), priority)
        tokens = draw(logits, config, generator).tokens  # (B, K)
        width = logits.shape[1]
        if trace.active:
            revealed = _scatter_rows(state.tokens.shape, targets[:, :width], torch.ones_like(target_valid[:, :width]),
                                     target_valid[:, :width], False)
            logprob = _scatter_rows(state.tokens.shape, targets[:, :width], model_logprob(logits, tokens),
                                    target_valid[:, :width], 0.0)
            trace.record(state.tokens, revealed, logprob)
        state.commit(targets[:, :width], tokens, target_valid[:, :width])
        progress.update(int(target_valid.sum()))
        call += 1
    progress.close()
    return DecodeResult(tokens=state.tokens, nfe=state.meter.nfe, trace=trace.result(),
                        stats=_call_stats(state, total))
