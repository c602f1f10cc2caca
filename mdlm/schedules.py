"""Masking (noise) schedules alpha_t: the probability that a token is still unmasked at time t.

alpha_0 = 1 (clean), alpha_1 = 0 (all masked). Training weights tokens by -alpha'_t / (1 - alpha_t);
samplers step between times with the reveal probability (alpha_s - alpha_t) / (1 - alpha_t) and invert
alpha for the first-hitting sampler.
"""

from __future__ import annotations

import math

import torch


class MaskingSchedule:
    name: str

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_inverse(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) = -alpha'_t / (1 - alpha_t): the ELBO weight of a masked token's cross-entropy."""
        return -self.alpha_derivative(t) / (1 - self.alpha(t))


class LinearSchedule(MaskingSchedule):
    """alpha_t = 1 - t (MDLM, RADD): the weight is 1/t."""

    name = "linear"

    def alpha(self, t):
        return 1 - t

    def alpha_derivative(self, t):
        return -torch.ones_like(t)

    def alpha_inverse(self, a):
        return 1 - a


class CosineSchedule(MaskingSchedule):
    """alpha_t = cos(pi t / 2): masks slowly at first, which spends more steps on the late, hard tokens."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def alpha_derivative(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def alpha_inverse(self, a):
        return torch.arccos(a.clamp(0, 1)) * (2 / math.pi)


SCHEDULES = {"linear": LinearSchedule, "cosine": CosineSchedule}


def get_schedule(name: str) -> MaskingSchedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown masking schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name]()
