"""Ancestral (tau-leaping) sampler of a masked diffusion model with the RADD cache.

MDLM (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models") / RADD (Ou et al.
2024, "Your Absorbing Discrete Diffusion Secretly Models the Conditional Distributions of Clean Data"):
T steps over a grid 1 = t_0 > t_1 > ... > t_T = 0 of a masking schedule alpha_t. In the step from t to
s < t each masked token is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t), its value
drawn from p(x0_i | x_t) (float64 Gumbel-max, `mdlm.kernels.sample_categorical`). The network has no
time input, so if no token of a sequence changed since its last evaluation its output is reused (the
RADD cache): expected network calls with n uniform steps n (1 - (1 - 1/n)^L) <= L.

    for k in 0..T-1:
        p = (alpha(t_{k+1}) - alpha(t_k)) / (1 - alpha(t_k))
        reveal_i ~ Bernoulli(p) for masked i
        if any reveal in the row: logits = f(x) unless x unchanged since the last call   # RADD cache
        x_i ~ Categorical(softmax(logits_i / temperature)) for revealed i
"""

from __future__ import annotations

import torch

from mdlm.decode.config import DecodeConfig, DecodeResult, refuse_block_length
from mdlm.decode.canvas import Canvas
from mdlm.decode.denoiser import RowOutputCache, as_denoiser
from mdlm.decode.draw import reveal_tokens
from mdlm.decode.trace import TraceRecorder
from mdlm.schedules import get_schedule

DEFAULT_STEPS = 1000


def reveal_probabilities(schedule_name: str, steps: int) -> torch.Tensor:
    """(T,) float64: per step the probability that a still-masked token is revealed (the last is 1)."""
    schedule = get_schedule(schedule_name)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    alpha = schedule.alpha(times).clamp(0.0, 1.0)
    alpha[0], alpha[-1] = 0.0, 1.0
    prob = (alpha[1:] - alpha[:-1]) / (1.0 - alpha[:-1])
    return prob.clamp(0.0, 1.0)


def ancestral_decode(denoiser, canvas, config: DecodeConfig, valid=None, position_ids=None, generator=None):
    """Tau-leaping over `config.steps` (default 1000) steps of `config.masking_schedule` -> DecodeResult.

    stats: "row_evaluations" (rows through the network) and "steps"."""
    denoiser = as_denoiser(denoiser)
    canvas = Canvas.of(denoiser, canvas, valid, position_ids)
    refuse_block_length(config)
    valid, mask_id = canvas.valid, canvas.mask_token_id
    steps = config.steps or DEFAULT_STEPS
    meter = denoiser.meter()
    outputs = RowOutputCache(denoiser, valid, canvas.positions, enabled=config.use_cache)
    recorder = TraceRecorder(config.trace, config.step_callback)
    x = canvas.tokens.clone()
    for p in reveal_probabilities(config.masking_schedule, steps).tolist():
        masked = (x == mask_id) & valid  # (B, L)
        if not masked.any():
            break
        uniforms = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        reveal = masked & (uniforms < p)
        # The standard sampler evaluates every unfinished row at every step; the cached one only rows
        # that reveal something now and changed since their last evaluation.
        needed = reveal.any(-1) if config.use_cache else masked.any(-1)
        if not needed.any():
            continue
        logits = outputs.logits(x, needed)  # (B, L, V)
        if not reveal.any():
            continue
        x = reveal_tokens(x, reveal, logits, config, generator, recorder)
    return DecodeResult(tokens=x, nfe=meter.nfe, trace=recorder.result(),
                        stats={"steps": steps, "row_evaluations": meter.row_evaluations})
