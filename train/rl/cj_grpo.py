"""CJ-GRPO: consistency-trajectory GRPO, trained along the rollout's own denoising steps.

Yang et al. 2025, "Taming Masked Diffusion Language Models via Consistency Trajectory Reinforcement
Learning with Fewer Decoding Step" (official code yjyddq/EOSER-ASS-RL). Rollouts decode with the
ascending step-size schedule (ASS: 1, 2, 4, ... tokens per step, S = floor(log2 L) steps) and EOS early
rejection (EOSER: a drawn EOS's confidence is scaled by a gamma rising from 0.01 to 1). The S + 1
canvases x^(0..S) and each step's reveal mask are stored, and the loss follows exactly that trajectory:

    ratio_s,i = pi(x^(s+1)_i | x^(s)) / pi_old(x^(s+1)_i | x^(s))     for the tokens i revealed at step s
    A = r - mean_G r                                                 (no division by the std)
    J = (1/S) sum_s mean_i [ min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) - beta KL_k3 ]

with KL_k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 on the same tokens. Before any update the
old log-probs are the policy's own (recomputed at rollout time with the loss's forward), so the ratio is
exactly 1.

Departures from the official code, on purpose: tokens revealed after the completion's first EOS carry no
loss (the official code computes the completion mask and then does not use it, so padding after EOS is
trained); a step none of whose revealed tokens is trained is left out of the 1/S average instead of adding
0; rollouts draw with float64 Gumbel noise. A schedule other than ascending is allowed (with a warning):
the loss then follows that schedule's steps.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import torch

from mdlm.decode.config import DecodeConfig
from mdlm.train.rl.base import (DiffusionGRPOConfig, DiffusionGRPOTrainer, clipped_surrogate, k3_kl, masked_mean,
                                step_logps)


@dataclass
class CJGRPOConfig(DiffusionGRPOConfig):
    """GRPOConfig with the paper's defaults (ascending schedule + EOSER, eps 0.5, beta 0.04, mu 8,
    lr 3e-6, EOSER gamma_min 0.01, A = r - group mean)."""

    unmasking_schedule: str = field(default="ascending", metadata={"help": "paper: ascending (log2 L steps)"})
    eoser: bool = field(default=True, metadata={"help": "EOS early rejection in rollouts (paper: on)"})
    eoser_gamma_min: float = field(default=0.01, metadata={"help": "EOSER's starting factor (paper: 0.01)"})
    scale_rewards: str = field(default="none", metadata={"help": "A = r - group mean, no std (paper)"})
    learning_rate: float = field(default=3e-6, metadata={"help": "paper: 3e-6"})
    epsilon: float = field(default=0.5, metadata={"help": "clipping range of the ratio (paper: 0.5)"})
    beta: float = field(default=0.04, metadata={"help": "KL coefficient (paper: 0.04)"})
    num_iterations: int = field(default=8, metadata={"help": "mu: passes per generation (paper: 8-12)"})
    num_generations: int | None = field(default=6, metadata={"help": "G: rollouts per prompt (d1's 6)"})

    def __post_init__(self):
        super().__post_init__()
        if self.unmasking_schedule != "ascending":
            warnings.warn(f"unmasking_schedule={self.unmasking_schedule!r}: CJ-GRPO (Yang et al. 2025) rolls out "
                          "with the ascending step-size schedule (floor(log2 L) steps) and EOSER; the loss will "
                          "follow this schedule's steps instead", UserWarning, stacklevel=2)
        if self.unmasking_schedule == "ascending" and self.diffusion_steps is not None:
            from mdlm.decode.unmasking import ascending_num_steps

            expected = ascending_num_steps(self.max_completion_length)
            if self.block_length is not None or self.diffusion_steps != expected:
                raise ValueError(f"diffusion_steps={self.diffusion_steps}: the ascending schedule fixes its own step "
                                 f"count (floor(log2 {self.max_completion_length}) = {expected} without blocks); "
                                 "leave diffusion_steps unset")

    def decode_config(self) -> DecodeConfig:
        config = replace(super().decode_config(), eoser_gamma_min=self.eoser_gamma_min)
        if self.unmasking_schedule == "ascending":
            config = replace(config, steps=None)
        return config


class CJGRPOTrainer(DiffusionGRPOTrainer):
    """TRL GRPOTrainer for CJ-GRPO (see the module docstring)."""

    record_trajectories = True

    def policy_statistics(self, batch: dict) -> dict:
        trajectory, T = batch["trajectory"], batch["completion_ids"].shape[1]
        per_row = lambda x: x[:, :, -T:].permute(1, 0, 2).contiguous()  # noqa: E731  (S, B, L) -> (B, S, T)
        canvases = per_row(trajectory.canvases)
        targets = torch.stack([trajectory.after(s) for s in range(trajectory.num_steps)])
        targets = per_row(targets)
        revealed = per_row(trajectory.revealed)
        args = (batch["prompt_ids"], batch["prompt_mask"], canvases, targets, self.mask_token_id, self.temperature)
        out = {"step_canvases": canvases, "step_targets": targets, "step_revealed": revealed,
               "old_step_logps": step_logps(self.model, *args)[0]}
        if self.beta != 0.0:
            out["ref_step_logps"] = step_logps(self.ref_model, *args)[0]
        return out

    def trained_tokens(self, inputs) -> torch.Tensor:
        """(B, S, T) bool: revealed at the step, and at or before the completion's first EOS."""
        return inputs["step_revealed"].bool() & inputs["completion_mask"].bool()[:, None, :]

    def _compute_loss(self, model, inputs):
        canvases, targets = inputs["step_canvases"], inputs["step_targets"]
        B = canvases.shape[0]
        logps, entropy = step_logps(model, inputs["prompt_ids"], inputs["prompt_mask"], canvases, targets,
                                    self.mask_token_id, self.temperature, compute_entropy=True)
        trained = self.trained_tokens(inputs)
        surrogate, clipped = clipped_surrogate(logps, inputs["old_step_logps"], inputs["advantages"][:, None, None],
                                               self.epsilon_low, self.epsilon_high)
        kl = k3_kl(inputs["ref_step_logps"], logps) if self.beta != 0.0 else None
        per_token = -surrogate if kl is None else -surrogate + self.beta * kl
        per_step = masked_mean(per_token, trained)  # (B, S)
        has_tokens = trained.any(-1).float()
        per_row = (per_step * has_tokens).sum(1) / has_tokens.sum(1).clamp(min=1.0)
        loss = per_row.sum() / B
        if self.model.training:
            loss = loss / self.current_gradient_accumulation_steps
        self.log_loss_metrics(trained, kl, entropy, clipped)
        return loss
