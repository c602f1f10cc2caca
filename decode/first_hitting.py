"""First-hitting sampler (Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked
Models and Exploit Inaccurate Categorical Sampling").

The continuous-time reverse process of a masked diffusion model reveals tokens one at a time. With n
masked tokens at time t, the next time a token is revealed is drawn analytically, the position is
uniform over the masked ones, and its value comes from p(x0_i | x):

    t = 1
    while n = |M| > 0:
        u ~ U(0, 1);  t = alpha^-1(1 - (1 - alpha_t) u^(1/n))       # linear schedule: t = t u^(1/n)
        i ~ Uniform(M);  x_i ~ p(. | x)                               # float64 categorical
        (one network call per revealed token; no time input to the network)

It simulates the continuous-time process exactly: with a time-agnostic network it is random-order
autoregressive sampling, the many-step limit of the ancestral sampler. Only one categorical row per
sequence is drawn per step (instead of L x V), which is where its speed comes from; the position is
chosen before the call, so the network's LM head runs at that one position (`logits(..., at=i)`).
Every call changes its rows, so there is nothing for the RADD cache to reuse.
"""

from __future__ import annotations

import torch

from mdlm.decode.config import DecodeConfig, DecodeResult, refuse_block_length
from mdlm.decode.canvas import Canvas
from mdlm.decode.denoiser import as_denoiser, gather_at
from mdlm.decode.draw import reveal_drawn
from mdlm.decode.trace import TraceRecorder
from mdlm.schedules import get_schedule


def first_hitting_decode(denoiser, canvas, config: DecodeConfig, valid=None, position_ids=None, generator=None):
    """Reveal one uniformly chosen masked position per row per network call -> DecodeResult.

    stats["times"]: (B, steps) float64 first-hitting times (NaN once a row is done)."""
    denoiser = as_denoiser(denoiser)
    canvas = Canvas.of(denoiser, canvas, valid, position_ids)
    refuse_block_length(config)
    valid, mask_id = canvas.valid, canvas.mask_token_id
    schedule = get_schedule(config.masking_schedule)
    meter = denoiser.meter()
    recorder = TraceRecorder(config.trace, config.step_callback)
    x = canvas.tokens.clone()
    B = x.shape[0]
    t = torch.ones(B, dtype=torch.float64)
    times = []
    while True:
        masked = (x == mask_id) & valid
        n = masked.sum(-1)
        active = n > 0
        if not active.any():
            break
        u = torch.rand(B, generator=generator, dtype=torch.float64)
        alpha_t = schedule.alpha(t)
        next_t = schedule.alpha_inverse(1 - (1 - alpha_t) * u ** (1.0 / n.clamp_min(1).double().cpu()))
        t = torch.where(active.cpu(), next_t, torch.full_like(t, float("nan")))
        times.append(t.clone())
        # Uniform position among the masked ones: the argmax of i.i.d. uniform scores.
        scores = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        position = scores.masked_fill(~masked, -1.0).argmax(-1)
        rows = active.nonzero()[:, 0]
        reveal = torch.zeros_like(masked)
        reveal[rows, position[rows]] = True
        at = position[rows, None]  # (R, 1)
        if config.full_logits:  # a hook on the network's whole output (schema constraints) needs every position
            logits = gather_at(denoiser.logits(x[rows], valid[rows], canvas.positions[rows]), at)
        else:
            logits = denoiser.logits(x[rows], valid[rows], canvas.positions[rows], at=at)  # (R, 1, V)
        x = reveal_drawn(x, reveal, logits[:, 0], config, generator, recorder)
    return DecodeResult(tokens=x, nfe=meter.nfe, trace=recorder.result(),
                        stats={"times": torch.stack(times, 1) if times else torch.empty(B, 0, dtype=torch.float64),
                               "row_evaluations": meter.row_evaluations})
