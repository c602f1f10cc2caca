"""Likelihood of a continuation given a context, for evaluation (LLaDA, Nie et al. 2025, "Large
Language Diffusion Models", Appendix B.6 and its evaluation code; Dream, Ye et al. 2025).

A masked diffusion model has no exact likelihood; its negative ELBO is an upper bound on
-log p(continuation | context). With the time-agnostic network it is an expectation over the number k
of masked continuation tokens (k ~ U{1..L}, L = continuation length) and a uniformly random set M of k
of them, the context never masked:

    -ELBO = E_k E_M [ (L / k) * sum_{i in M} -log p(x_i | context, x_{-M}) ]
          = sum_{k=1..L} 1 / (k C(L, k)) * sum_{|M| = k} sum_{i in M} -log p(x_i | context, x_{-M})

Monte Carlo (LLaDA), per group of b samples (the MC batch):
    k0 ~ U{1..L}                                   # once per group
    k_j = ((k0 - 1 + floor(j L / b)) mod L) + 1    # mask counts spread evenly over the group
    mask exactly k_j continuation tokens;  estimate_j = (L / k_j) * sum of CE over them
    -ELBO estimate = mean of estimate_j over the mc_num samples
Every k_j is marginally uniform, so the estimator is unbiased; spreading the counts stratifies the
variance that comes from how many tokens are masked, which dominates for a trained model (few masks:
low loss; all masked: high loss).

Our addition (`tiled_positions`, default on): LLaDA draws each row's positions independently. We draw
one random permutation of the L positions per group and give row j the next k_j positions of it,
cyclically (row j starts where row j-1 stopped). Each row is still a uniformly random k_j-subset (a
cyclic window of a uniform permutation), so the estimator stays unbiased, but neighbouring rows cover
disjoint positions, which removes most of the variance that comes from *which* tokens are masked
(dominant for weak models). On the tiny test model at L = 6 and 32 samples the standard deviation is
about 4x below both the naive and the LLaDA estimator (tests/test_likelihood.py, eval/bench/lm_eval.py).

`naive_monte_carlo_nll` (independent k and positions per sample) is there for comparison. A
single-token continuation needs one sample: k = 1, M is that token, the estimate is exact. More
generally, when enumerating all 2^L - 1 masks costs no more network rows than mc_num samples, the
exact value is computed instead.

For the autoregressive baseline (causal attention) the log-likelihood is exact: the sum of next-token
log-probabilities of the continuation, and `is_greedy` is free (every continuation token is the argmax).

All functions take token id lists and return nats (negative log-likelihood, summed over the
continuation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mdlm.decode.canvas import pad_rows
from mdlm.decode.denoiser import active_positions, as_denoiser

Request = tuple[list[int], list[int]]  # (context token ids, continuation token ids)


# ----------------------------------------------------------------------------- mask counts and masks
def stratified_mask_counts(length: int, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k0 ~ U{1..length} drawn once; the batch's counts spread evenly from it, modulo length."""
    k0 = int(torch.randint(1, length + 1, (), generator=generator))
    offsets = torch.arange(batch) * length // batch  # floor(j L / b): exact integers, no rounding ties
    return (k0 - 1 + offsets) % length + 1


def independent_mask_counts(length: int, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k_j ~ U{1..length} independently (the naive, unstratified estimator)."""
    return torch.randint(1, length + 1, (batch,), generator=generator)


def independent_masks(counts: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, length) bool: row j masks exactly counts[j] positions, each row drawn independently."""
    ranks = torch.rand(len(counts), length, generator=generator).argsort(1).argsort(1)
    return ranks < counts[:, None]


def tiled_masks(counts: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, length) bool: row j masks the counts[j] positions of one random permutation that follow
    the previous row's, cyclically. Each row alone is a uniformly random subset of its size."""
    order = torch.randperm(length, generator=generator)
    starts = torch.cumsum(counts, 0) - counts
    steps = torch.arange(length)
    window = (steps[None, :] - starts[:, None]) % length < counts[:, None]  # over permutation slots
    masks = torch.zeros(len(counts), length, dtype=torch.bool)
    masks[:, order] = window
    return masks


def sample_masks(length: int, batch: int, generator: torch.Generator | None = None,
                 stratified_counts: bool = True, tiled_positions: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The masks (batch, length) and mask counts (batch,) of one MC group."""
    counts = (stratified_mask_counts if stratified_counts else independent_mask_counts)(length, batch, generator)
    masks = (tiled_masks if tiled_positions else independent_masks)(counts, length, generator)
    return masks, counts


def all_masks(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-empty mask of `length` positions and its weight 1 / (k C(L, k)) in the exact -ELBO."""
    rows, weights = [], []
    for k in range(1, length + 1):
        weight = 1.0 / (k * math.comb(length, k))
        for subset in combinations(range(length), k):
            row = torch.zeros(length, dtype=torch.bool)
            row[list(subset)] = True
            rows.append(row)
            weights.append(weight)
    return torch.stack(rows), torch.tensor(weights, dtype=torch.float64)


# ----------------------------------------------------------------------------- scoring rows
@dataclass
class _Row:
    request: int  # index of the request this row contributes to
    mask: torch.Tensor  # (L,) bool over the continuation
    weight: float  # contribution = weight * sum of CE over the masked tokens


def _pad_id(model) -> int:
    """The config's pad id, else the mask id (padding is never attended to, so any id does)."""
    denoiser = as_denoiser(model)
    pad = getattr(getattr(denoiser, "config", None) or getattr(model, "config", None), "pad_token_id", None)
    return pad if pad is not None else denoiser.require_mask_id()


@torch.no_grad()
def _score_rows(model, requests: list[Request], rows: list[_Row], batch_size: int, progress: bool,
                desc: str) -> list[float]:
    """Sum over rows of weight * (sum of -log p at the row's masked continuation tokens)."""
    denoiser = as_denoiser(model)
    device, mask_id, pad_id = denoiser.device, denoiser.require_mask_id(), _pad_id(model)
    totals = [0.0] * len(requests)
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = rows[start : start + batch_size]
        clean, valid = pad_rows([requests[r.request][0] + requests[r.request][1] for r in chunk], pad_id, "right")
        masked = torch.zeros_like(valid)
        for i, r in enumerate(chunk):
            context_len = len(requests[r.request][0])
            masked[i, context_len : context_len + len(r.mask)] = r.mask
        clean, valid, masked = clean.to(device), valid.to(device), masked.to(device)
        noisy = torch.where(masked, torch.full_like(clean, mask_id), clean)  # (B, L)
        # the head runs at the masked positions only (a large vocabulary never makes a (B, L, V) tensor);
        # positions None: the model's own
        at, present = active_positions(masked)
        logits = denoiser.logits(noisy, valid, None, at=at)  # (B, K, V)
        nll = torch.zeros(at.shape, dtype=torch.float64, device=device)
        nll[present] = F.cross_entropy(logits[present].float(), clean.gather(1, at)[present], reduction="none").double()
        per_row = nll.sum(1).cpu()
        for i, r in enumerate(chunk):
            totals[r.request] += r.weight * float(per_row[i])
    return totals


def _check_requests(model, requests: list[Request]) -> None:
    limit = as_denoiser(model).context  # None: the model states no limit
    for context, continuation in requests:
        if not context:
            raise ValueError("the context is empty: start it with a BOS/EOS token (as lm-eval does)")
        if limit is not None and len(context) + len(continuation) > limit:
            raise ValueError(
                f"context + continuation is {len(context) + len(continuation)} tokens, beyond the model's "
                f"context of {limit}; truncate the context from the left first"
            )


# ----------------------------------------------------------------------------- masked diffusion
def diffusion_nll(model, requests: list[Request], mc_num: int = 128, batch_size: int = 32,
                  generator: torch.Generator | list[torch.Generator] | None = None, stratified_counts: bool = True,
                  tiled_positions: bool = True, exact_when_cheaper: bool = True,
                  progress: bool = False) -> list[float]:
    """The negative ELBO (nats) of each continuation given its context, by Monte Carlo over masks of
    the continuation (module docstring). Rows of several requests share forward passes.

    mc_num: samples per request (in groups of `batch_size`, one stratified draw of k per group).
    generator: one for all requests, or a list with one per request (results then do not depend on
        which requests share a call).
    exact_when_cheaper: enumerate every mask when 2^L - 1 <= mc_num (always for L = 1), which is exact.
    """
    if mc_num < 1:
        raise ValueError(f"mc_num must be >= 1, got {mc_num}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_requests(model, requests)
    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator] * len(requests)
    if len(generators) != len(requests):
        raise ValueError(f"got {len(generators)} generators for {len(requests)} requests; give one per request")
    rows: list[_Row] = []
    for index, (_, continuation) in enumerate(requests):
        length = len(continuation)
        if length == 0:
            continue
        if exact_when_cheaper and (length == 1 or 2**length - 1 <= mc_num):
            masks, weights = all_masks(length)
            rows += [_Row(index, m, float(w)) for m, w in zip(masks, weights)]
            continue
        for group_start in range(0, mc_num, batch_size):
            group = min(batch_size, mc_num - group_start)
            masks, counts = sample_masks(length, group, generators[index], stratified_counts, tiled_positions)
            rows += [_Row(index, m, length / int(k) / mc_num) for m, k in zip(masks, counts)]
    return _score_rows(model, requests, rows, batch_size, progress, "MC ELBO")


def monte_carlo_nll(model, context: list[int], continuation: list[int], mc_num: int = 128,
                    batch_size: int = 32, generator: torch.Generator | None = None,
                    stratified_counts: bool = True, tiled_positions: bool = True) -> float:
    """The pure Monte Carlo estimate for one request (no exact shortcut): what the estimator tests use.
    `tiled_positions=False` is LLaDA's estimator exactly."""
    return diffusion_nll(model, [(context, continuation)], mc_num, batch_size, generator, stratified_counts,
                         tiled_positions, exact_when_cheaper=False)[0]


def naive_monte_carlo_nll(model, context: list[int], continuation: list[int], mc_num: int = 128,
                          batch_size: int = 32, generator: torch.Generator | None = None) -> float:
    """The unstratified estimator: an independent k ~ U{1..L} for every sample."""
    return monte_carlo_nll(model, context, continuation, mc_num, batch_size, generator,
                           stratified_counts=False, tiled_positions=False)


def exact_diffusion_nll(model, context: list[int], continuation: list[int], batch_size: int = 64) -> float:
    """The exact negative ELBO by enumerating all 2^L - 1 masks of the continuation (tests, tiny L)."""
    if len(continuation) > 16:
        raise ValueError(f"exact enumeration of {len(continuation)} tokens needs 2^{len(continuation)} passes")
    if not continuation:
        return 0.0
    masks, weights = all_masks(len(continuation))
    rows = [_Row(0, m, float(w)) for m, w in zip(masks, weights)]
    _check_requests(model, [(context, continuation)])
    return _score_rows(model, [(context, continuation)], rows, batch_size, False, "exact ELBO")[0]


# ----------------------------------------------------------------------------- autoregressive
@torch.no_grad()
def autoregressive_nll(model, requests: list[Request], batch_size: int = 32,
                       progress: bool = False) -> list[tuple[float, bool]]:
    """Exact -log p(continuation | context) of a causal model, and whether greedy decoding would
    produce the continuation (every token the argmax of its next-token distribution)."""
    _check_requests(model, requests)
    denoiser = as_denoiser(model)
    device, pad_id = denoiser.device, _pad_id(model)
    out: list[tuple[float, bool]] = []
    for start in tqdm(range(0, len(requests), batch_size), desc="AR log-lik", disable=not progress, leave=False):
        chunk = requests[start : start + batch_size]
        inputs, valid = pad_rows([(c + x)[:-1] for c, x in chunk], pad_id, "right", device)
        logits = denoiser.logits(inputs, valid, None)  # (B, L, V)
        logprobs = logits.double().log_softmax(-1)
        for i, (context, continuation) in enumerate(chunk):
            if not continuation:
                out.append((0.0, True))
                continue
            positions = torch.arange(len(context) - 1, len(context) - 1 + len(continuation), device=device)
            target = torch.tensor(continuation, device=device)
            row = logprobs[i, positions]
            nll = -float(row.gather(1, target[:, None]).sum())
            out.append((nll, bool((row.argmax(-1) == target).all())))
    return out
