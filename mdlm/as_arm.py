"""Any-subset autoregressive model (AS-ARM) on our transformer: two-stream attention by query copies,
and the "joint" training mask (Guo & Ermon 2025, "Reviving Any-Subset Autoregressive Models with
Principled Parallel Sampling and Speculative Decoding"; the mask after Shih et al. 2022).

An AS-ARM gives, in one forward pass, conditionals p(x_t | x_S) for many target positions t and
context sets S, where a target's own token is hidden from its own prediction but may be visible to
later targets. That needs two streams (XLNet): content (tokens) and query (a position without its
token). We build them on the unchanged `MDLMForMaskedLM`, with no new weights:

- Content stream: every token whose value may be seen is one input token at its own position id.
- Query stream: each target gets an extra input token holding the mask id with the target's position
  id (a "query copy"), appended after the content tokens. Queries attend to the content they may see
  and to themselves (so a query with an empty context still has one key); nothing attends to a query.
- Who sees whom is one integer per content token, its *rank*: 0 for context tokens (prompt, infill
  suffix, the visible tokens of training), 1, 2, ... for generated tokens in the order they were
  generated, and UNDECIDED for positions that are not decoded. Content of rank r attends to content of
  rank <= r (context is bidirectional among itself and never sees generated tokens; a generated token
  sees the context and the tokens generated before it, itself included). A query of rank r attends to
  content of rank < r: a draft query (rank UNDECIDED) sees every decoded token, the verify query of the
  j-th drafted target (rank base + j) sees the decoded tokens and the drafts y_<j, never y_j.

Why generated tokens stay order-causal instead of joining the bidirectional context: a conditional
then depends only on (context, the generated tokens in order, the target), not on how the tokens were
grouped into decoding rounds. So the verify conditional of target j equals the draft conditional after
y_<j are committed, sequential decoding and any-subset speculative decoding compute the very same
conditionals, and ASSD samples exactly the joint prod_j p(x_sigma_j | context, x_sigma_<j) that
sequential decoding samples. (With decoded tokens bidirectional, committing y_1 would change what the
earlier tokens' content says, and the distribution would depend on the random round boundaries.) It
is also the official code's choice (`create_gt_perm_mask`: sigma-causal everywhere, bidirectional
among the initially visible tokens), and it is exactly the training mask below when sigma is left to
right. As a bonus the content of a committed token never changes, so its keys and values can be cached
as in an autoregressive model (`two_stream_forward(..., cache=...)`).

Training ("joint" mask, `joint_mask_logits` here; the loss `as_arm_loss` lives beside the other
losses in `mdlm/losses.py`): visible tokens are rank 0; masked positions are ordered left to right (rank =
position + 1), their content holds the true token, and a query copy per masked position predicts it.
Each target thus sees the visible tokens and the earlier masked ones; cross-entropy over every masked
target, unweighted. Mask rate per sequence ~ U[low, high] with (low, high) rising linearly from
(0.15, 0.15) to (0.85, 0.99) over the first `curriculum_steps` steps (100 by default, sized for our
CPU-scale runs of hundreds of steps; the official code's schedule has the same shape over 5000 steps).

Cost: a call with P content tokens and K queries is one forward pass over P + K tokens with a boolean
(P + K) x (P + K) mask (SDPA with a mask on CPU: no flash attention). Without a cache P <= L (every
decoded token), so a draft or verify call costs about a plain forward over L + k tokens (k = draft
size), and training costs one forward over L + |masked| <= 2L tokens: about 2x the tokens and up to 4x
the attention of an MDLM step. Measured on the `small` preset (8 x 256 tokens, one CPU thread): an
uncached draft call with k = 8 takes 1.2x a plain forward; the training forward 1.3x at 15% masked and
2.75x at 90% masked. With the cache of committed content (the decoders' default), a call only
processes the tokens committed since the last call, the drafts and the queries: O(k) new tokens against
the cached keys, like a speculative step of an autoregressive model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mdlm.model import KVCache

# Rank of a position whose content nobody may see yet (not decoded, padding). A draft query has this
# rank, so it sees every decoded token.
UNDECIDED = 1 << 40


def check_two_stream_model(model) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "blocks"):
        raise ValueError("two-stream decoding needs an MDLMForMaskedLM (custom attention masks and position "
                         "ids); Hugging Face masked LMs cannot express the query stream")
    if config.attention != "bidirectional":
        raise ValueError(f"an any-subset AR model needs attention='bidirectional' (the two-stream mask sets "
                         f"the pattern), got attention={config.attention!r}")
    if config.mask_token_id is None:
        raise ValueError("the model's config has no mask_token_id; the query stream holds the mask id")


def left_align(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, M) of the True entries of `keep` (B, N), in order and left-aligned, with their
    validity (B, M); M = the largest row count. Invalid slots index 0."""
    counts = keep.sum(1)
    width = int(counts.max()) if keep.numel() else 0
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=keep.device)[None] < counts[:, None]
    return torch.where(valid, order, torch.zeros_like(order)), valid


def two_stream_mask(content_rank, content_valid, query_rank, query_valid, cache_valid=None) -> torch.Tensor:
    """Boolean (B, 1, P + K, S + P + K) mask, True = may attend; keys are the S cached contents (all
    visible to every new token), the P new contents, then the K queries."""
    B, P = content_rank.shape
    K = query_rank.shape[1]
    device = content_rank.device
    seen_by_content = content_valid[:, None, :] & (content_rank[:, None, :] <= content_rank[:, :, None])
    seen_by_query = (content_valid[:, None, :] & (content_rank[:, None, :] < query_rank[:, :, None])
                     & query_valid[:, :, None])
    self_content = torch.eye(P, dtype=torch.bool, device=device).expand(B, P, P)
    self_query = torch.eye(K, dtype=torch.bool, device=device).expand(B, K, K)
    content_rows = torch.cat([seen_by_content | self_content, torch.zeros(B, P, K, dtype=torch.bool, device=device)], 2)
    query_rows = torch.cat([seen_by_query, self_query], 2)
    mask = torch.cat([content_rows, query_rows], 1)
    if cache_valid is not None:
        mask = torch.cat([cache_valid[:, None, :].expand(B, P + K, -1), mask], 2)
    return mask[:, None]


def two_stream_forward(model, content_ids, content_positions, content_rank, content_valid,
                       query_positions, query_rank, query_valid, cache: KVCache | None = None,
                       cache_valid: torch.Tensor | None = None, use_cache: bool = False):
    """One forward pass of P content tokens and K query copies (after S cached contents).

    Returns (query logits (B, K, V), new cache or None). The new cache holds the S cached keys followed
    by this call's P + K keys with `valid` all True; callers keep what they need (`keep_in_cache`)."""
    B, K = query_positions.shape
    mask_id = model.config.mask_token_id
    input_ids = torch.cat([content_ids, torch.full((B, K), mask_id, dtype=torch.long, device=content_ids.device)], 1)
    position_ids = torch.cat([content_positions, query_positions], 1)
    if cache is not None and cache_valid is None:
        cache_valid = cache.valid
    mask = two_stream_mask(content_rank, content_valid, query_rank, query_valid,
                           cache_valid if cache is not None else None)
    if cache is not None:  # validity lives in our mask; the model sees an all-valid cache
        cache = KVCache(cache.keys, cache.values, cache.positions, torch.ones_like(cache.positions, dtype=torch.bool))
    out = model(input_ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=use_cache)
    new_cache = None
    if use_cache:
        new_cache = KVCache(out.cache.keys, out.cache.values, out.cache.positions,
                            torch.ones_like(out.cache.positions, dtype=torch.bool))
    return out.logits[:, content_ids.shape[1]:], new_cache


def keep_in_cache(cache: KVCache, keep: torch.Tensor) -> KVCache:
    """The cache of the keys where `keep` (B, S) is True, left-aligned; `valid` marks real keys."""
    index, valid = left_align(keep)
    gather = index[:, None, :, None]
    keys = [k.gather(2, gather.expand(-1, k.shape[1], -1, k.shape[3])) for k in cache.keys]
    values = [v.gather(2, gather.expand(-1, v.shape[1], -1, v.shape[3])) for v in cache.values]
    return KVCache(keys, values, cache.positions.gather(1, index), valid)


def initial_rank(canvas: torch.Tensor, mask_token_id: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rank 0 at the fixed tokens of a canvas (the bidirectional context), UNDECIDED at masks/padding."""
    decided = canvas != mask_token_id
    if valid is not None:
        decided &= valid
    return torch.where(decided, torch.zeros_like(canvas), torch.full_like(canvas, UNDECIDED))


def _canvas_defaults(tokens, rank, valid, position_ids):
    # Position ids of a canvas are computed in one place, the decoders' canvas (imported here, at call
    # time, because mdlm.decode imports this module).
    from mdlm.decode.canvas import default_position_ids

    valid = torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid.bool()
    if position_ids is None:
        position_ids = default_position_ids(valid)
    return valid & (rank < UNDECIDED), position_ids


def draft_logits(model, tokens, rank, targets, target_valid=None, valid=None, position_ids=None) -> torch.Tensor:
    """p(x_t | decoded tokens) for every target t (B, K) at once: logits (B, K, V).

    tokens (B, L): the canvas; rank (B, L): 0 context, 1.. generated in order, UNDECIDED elsewhere
    (`initial_rank` to start). Each query sees every decoded token and nothing else."""
    content_valid, position_ids = _canvas_defaults(tokens, rank, valid, position_ids)
    target_valid = torch.ones_like(targets, dtype=torch.bool) if target_valid is None else target_valid
    query_rank = torch.full_like(targets, UNDECIDED)
    logits, _ = two_stream_forward(model, tokens, position_ids, rank, content_valid,
                                   position_ids.gather(1, targets), query_rank, target_valid)
    return logits


def verify_logits(model, tokens, rank, targets, drafted, target_valid=None, valid=None, position_ids=None):
    """p(y_j | decoded, y_<j) for targets (B, K) in order with drafted tokens y (B, K): logits (B, K, V).

    The drafts become content with ranks after every generated token, in target order; the query of
    target j sees the decoded tokens and y_<j. Row j equals `draft_logits` after committing y_<j."""
    target_valid = torch.ones_like(targets, dtype=torch.bool) if target_valid is None else target_valid
    base = torch.where(rank < UNDECIDED, rank, torch.zeros_like(rank)).amax(1, keepdim=True) + 1
    draft_rank = base + torch.arange(targets.shape[1], device=targets.device)[None]
    draft_rank = torch.where(target_valid, draft_rank, torch.full_like(draft_rank, UNDECIDED))
    rows, slots = target_valid.nonzero(as_tuple=True)
    tokens, rank = tokens.clone(), rank.clone()
    tokens[rows, targets[rows, slots]] = drafted[rows, slots]
    rank[rows, targets[rows, slots]] = draft_rank[rows, slots]
    content_valid, position_ids = _canvas_defaults(tokens, rank, valid, position_ids)
    logits, _ = two_stream_forward(model, tokens, position_ids, rank, content_valid,
                                   position_ids.gather(1, targets), draft_rank, target_valid)
    return logits


def joint_mask_logits(model, input_ids, masked, valid=None):
    """The "joint" training mask in one pass: logits (B, K, V) of every masked position (left-aligned,
    left to right), their true tokens (B, K) and validity (B, K). Target i sees the unmasked tokens
    (bidirectional among themselves) and the masked tokens left of it."""
    B, L = input_ids.shape
    valid = torch.ones_like(input_ids, dtype=torch.bool) if valid is None else valid.bool()
    positions = torch.arange(L, device=input_ids.device).expand(B, L)
    rank = torch.where(masked, positions + 1, torch.zeros_like(positions))  # masked: left to right
    position_ids = (valid.long().cumsum(-1) - 1).clamp_min(0)
    query_index, query_valid = left_align(masked & valid)
    logits, _ = two_stream_forward(model, input_ids, position_ids, rank, valid,
                                   position_ids.gather(1, query_index), rank.gather(1, query_index), query_valid)
    return logits, input_ids.gather(1, query_index), query_valid
