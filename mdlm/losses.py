"""Training objectives, side by side (RADD, Ou et al. 2024, "Your Absorbing Discrete Diffusion Secretly
Models the Conditional Distributions of Clean Data"; MDLM, Sahoo et al. 2024).

The three masked losses are unbiased estimates of the same negative ELBO, which equals the expected
negative log-likelihood of an any-order autoregressive model over uniformly random orders:

    t-DCE       t ~ U(eps, 1), low-discrepancy over the batch; mask each token w.p. 1 - alpha_t;
                loss = w(t) * sum_{i in M} -log p(x_i | x_t),   w(t) = -alpha'_t / (1 - alpha_t)
    lambda-DCE  lambda stratified (u_b + b) / B; mask each token w.p. lambda;
                loss = (1 / lambda) * sum_{i in M} -log p(x_i | x_lambda)        (float64)
    k-DCE       k ~ U{1..n}; mask exactly k of the n eligible tokens;
                loss = (n / k) * sum_{i in M} -log p(x_i | x_k)

Every function returns the negative ELBO in nats per eligible token. `fixed` marks positions (a prompt,
padding) that are never masked and never scored. The autoregressive baseline's loss (next-token
cross-entropy on the same backbone with causal attention) is here too, in the same unit, and so is
the any-subset AR model's (AS-ARM, Guo & Ermon 2025): cross-entropy under the "joint" two-stream mask
(`mdlm/as_arm.py` builds the streams), a mask rate per sequence ~ U[low, high] on a curriculum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F

from mdlm.as_arm import check_two_stream_model, joint_mask_logits
from mdlm.schedules import LinearSchedule, MaskingSchedule


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, nats per eligible token (what the optimiser sees)
    num_tokens: torch.Tensor  # eligible tokens in the batch
    sum_nll: torch.Tensor  # weighted sum over the batch (loss * num_tokens), for exact aggregation


def _eligible(input_ids: torch.Tensor, fixed: torch.Tensor | None) -> torch.Tensor:
    if fixed is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    return ~fixed.to(torch.bool)


def _masked_cross_entropy(model, input_ids, masked, mask_token_id, attention_mask=None):
    """-log p(x_i | x with `masked` replaced by the mask id) at each masked position, shape (B, L)."""
    noisy = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    logits = model(noisy, attention_mask=attention_mask).logits
    nll = torch.zeros(input_ids.shape, dtype=logits.dtype, device=logits.device)
    if masked.any():
        nll[masked] = F.cross_entropy(logits[masked], input_ids[masked], reduction="none")
    return nll


def _finish(per_sequence: torch.Tensor, eligible: torch.Tensor) -> LossOutput:
    num_tokens = eligible.sum()
    total = per_sequence.sum()
    return LossOutput(loss=(total / num_tokens.clamp(min=1)).float(), num_tokens=num_tokens, sum_nll=total)


def low_discrepancy_uniform(batch: int, device, generator=None, dtype=torch.float32) -> torch.Tensor:
    """(u0 + i / B) mod 1: one uniform shared by the batch, spread evenly (antithetic sampling)."""
    u0 = torch.rand((), generator=generator, dtype=dtype, device=device)
    return (u0 + torch.arange(batch, device=device, dtype=dtype) / batch) % 1


def t_dce_loss(model, input_ids, fixed=None, attention_mask=None, schedule: MaskingSchedule | None = None,
               eps: float = 1e-3, generator=None) -> LossOutput:
    schedule = schedule or LinearSchedule()
    B, L = input_ids.shape
    eligible = _eligible(input_ids, fixed)
    t = eps + (1 - eps) * low_discrepancy_uniform(B, input_ids.device, generator)
    mask_prob = (1 - schedule.alpha(t))[:, None]
    masked = (torch.rand(B, L, generator=generator, device=input_ids.device) < mask_prob) & eligible
    nll = _masked_cross_entropy(model, input_ids, masked, model.config.mask_token_id, attention_mask)
    return _finish(schedule.loss_weight(t) * nll.sum(1), eligible)


def lambda_dce_loss(model, input_ids, fixed=None, attention_mask=None, generator=None) -> LossOutput:
    B, L = input_ids.shape
    eligible = _eligible(input_ids, fixed)
    u = torch.rand(B, generator=generator, dtype=torch.float64, device=input_ids.device)
    lam = (u + torch.arange(B, dtype=torch.float64, device=input_ids.device)) / B
    masked = (torch.rand(B, L, generator=generator, dtype=torch.float64, device=input_ids.device)
              < lam[:, None]) & eligible
    nll = _masked_cross_entropy(model, input_ids, masked, model.config.mask_token_id, attention_mask)
    per_sequence = nll.double().sum(1) / lam
    return _finish(per_sequence, eligible)


def k_dce_loss(model, input_ids, fixed=None, attention_mask=None, generator=None) -> LossOutput:
    B, L = input_ids.shape
    eligible = _eligible(input_ids, fixed)
    n = eligible.sum(1)  # eligible tokens per sequence
    k = (torch.rand(B, generator=generator, device=input_ids.device) * n).floor().long() + 1
    k = torch.minimum(k, n.clamp(min=1))
    # Mask exactly k eligible positions: rank eligible positions by a random key and keep the first k.
    keys = torch.rand(B, L, generator=generator, device=input_ids.device).masked_fill(~eligible, 2.0)
    ranks = keys.argsort(1).argsort(1)
    masked = (ranks < k[:, None]) & eligible
    nll = _masked_cross_entropy(model, input_ids, masked, model.config.mask_token_id, attention_mask)
    per_sequence = torch.where(n > 0, nll.sum(1) * n / k, torch.zeros_like(nll[:, 0]))
    return _finish(per_sequence, eligible)


def ar_loss(model, input_ids, fixed=None, attention_mask=None, generator=None) -> LossOutput:
    """Next-token cross-entropy of the causal baseline; the first token of each sequence is not
    predicted, so it is not eligible (the unit stays nats per scored token)."""
    logits = model(input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    eligible = _eligible(input_ids, fixed)[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    nll = nll.view_as(targets) * eligible
    return _finish(nll.sum(1), eligible)


# Per-sequence mask rate of the AS-ARM curriculum: U[low, high] from (0.15, 0.15) to (0.85, 0.99).
MASK_RATE_START = 0.15
MASK_RATE_FINAL = (0.85, 0.99)


def mask_rate_bounds(step: int, curriculum_steps: int) -> tuple[float, float]:
    """(low, high) of the per-sequence mask rate at `step`: from (0.15, 0.15) linearly to (0.85, 0.99)."""
    progress = 1.0 if curriculum_steps <= 0 else min(1.0, max(step, 0) / curriculum_steps)
    low = MASK_RATE_START + (MASK_RATE_FINAL[0] - MASK_RATE_START) * progress
    high = MASK_RATE_START + (MASK_RATE_FINAL[1] - MASK_RATE_START) * progress
    return low, high


def as_arm_loss(model, input_ids, fixed=None, attention_mask=None, generator=None, step: int = 0,
                curriculum_steps: int = 100) -> LossOutput:
    """Cross-entropy of the any-subset AR model under the "joint" mask, nats per masked token.

    fixed (B, L) bool: never masked, never scored (a prompt). attention_mask (B, L): padding (False =
    pad). step: the optimiser step, for the mask-rate curriculum over `curriculum_steps` steps."""
    check_two_stream_model(model)
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError("as_arm_loss takes a 2-D padding mask (batch, length); the two-stream mask is built here")
    B, L = input_ids.shape
    device = input_ids.device
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    eligible = valid if fixed is None else valid & ~fixed.bool()
    n = eligible.sum(1)

    low, high = mask_rate_bounds(step, curriculum_steps)
    u0 = torch.rand((), generator=generator, device=device)
    stratified = (u0 + torch.arange(B, device=device) / B) % 1  # spread the rates over the batch
    rate = low + (high - low) * stratified
    count = torch.minimum(torch.maximum((rate * n).round().long(), torch.ones_like(n)), n)
    keys = torch.rand(B, L, generator=generator, device=device).masked_fill(~eligible, 2.0)
    masked = (keys.argsort(1).argsort(1) < count[:, None]) & eligible

    logits, targets, query_valid = joint_mask_logits(model, input_ids, masked, valid)
    nll = F.cross_entropy(logits[query_valid], targets[query_valid], reduction="none")
    num_tokens = query_valid.sum()
    total = nll.sum()
    return LossOutput(loss=total / num_tokens.clamp(min=1), num_tokens=num_tokens, sum_nll=total)


MASKED_LOSSES = {"t-dce": t_dce_loss, "lambda-dce": lambda_dce_loss, "k-dce": k_dce_loss}


def compute_loss(model, input_ids, objective: str = "mdlm", loss: str = "t-dce", **kwargs) -> LossOutput:
    """The training loss of `objective` (`mdlm` with one of MASKED_LOSSES, `ar`, or `as-arm`)."""
    if objective == "ar":
        return ar_loss(model, input_ids, **kwargs)
    if objective == "mdlm":
        if loss not in MASKED_LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(MASKED_LOSSES)}")
        return MASKED_LOSSES[loss](model, input_ids, **kwargs)
    if objective == "as-arm":
        return as_arm_loss(model, input_ids, **kwargs)
    raise ValueError(f"unknown objective {objective!r}; choose one of mdlm, ar, as-arm")


@torch.no_grad()
def exact_negative_elbo(model, input_ids: torch.Tensor, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """The exact negative ELBO per eligible token of each sequence, by enumerating every mask.

    -ELBO = sum_{k=1..n} 1 / (k C(n, k)) sum_{|M| = k} sum_{i in M} -log p(x_i | x_{-M}).
    Exponential in n: for tests on very short sequences.
    """
    out = []
    for b in range(input_ids.shape[0]):
        x = input_ids[b : b + 1]
        positions = _eligible(x, None if fixed is None else fixed[b : b + 1])[0].nonzero().flatten().tolist()
        n = len(positions)
        total = 0.0
        for k in range(1, n + 1):
            subsets = list(combinations(positions, k))
            masked = torch.zeros(len(subsets), x.shape[1], dtype=torch.bool, device=x.device)
            for row, subset in enumerate(subsets):
                masked[row, list(subset)] = True
            nll = _masked_cross_entropy(model, x.expand(len(subsets), -1), masked, model.config.mask_token_id)
            total += nll.double().sum().item() / (k * math.comb(n, k))
        out.append(total / max(n, 1))
    return torch.tensor(out, dtype=torch.float64)
