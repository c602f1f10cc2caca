"""d2-AnyOrder: GRPO with the exact likelihood of the sampling trajectory, for an any-order AR model.

Wang, Schiff, Turok, Kuleshov 2025, "d2: Improved Techniques for Training Reasoning Diffusion Language
Models" (arXiv 2509.21474; official code kuleshov-group/d2, `diffu-grpo-ao/`). d1's one-pass estimate and
MDPO's / CJ-GRPO's per-step ratios are surrogates of log pi(completion). For a model that decodes in any
order causally (an any-order AR model: here the two-stream any-subset AR model of `mdlm/as_arm.py`, the
one speculative decoding uses) the log-likelihood of a whole trajectory is exact and takes one pass:

    rollout: x = prompt + T masks
        for j = 1..T:                                      one position per step
            q_t = pi(. | prompt, y_<j)  for every undecided position t     (draft queries)
            sigma_j = argmax_t max_v q_t(v)                  the policy picks where (its most confident position)
            y_j ~ q_{sigma_j} at the rollout temperature     and what
    log pi(trajectory) = sum_j log pi(y_j | prompt, y_<j at sigma_<j)       (the order is a function of the
                                                                             prefix, so it adds nothing)
    one pass: every y_j is content of rank j, and a query copy at sigma_j of rank j sees the prompt and y_<j
              (`mdlm.as_arm.verify_logits`): all T conditionals at once, equal to the rollout's.

The loss is GRPO's on those exact per-step log-probs: ratio_j = pi(y_j | .) / pi_old(y_j | .), A = group-
normalised reward, min(ratio A, clip(ratio) A), beta * KL_k3 to the reference, mean over the steps of a
row, mean over rows. Old log-probs are computed at rollout time with the loss's own one-pass forward, so
the ratio is exactly 1 before an update; the rollout's own step-by-step log-probs are kept too
(`rollout_logps`) and agree with them (tests/test_rl_d2.py).

Departures, on purpose: tokens positioned after the completion's first EOS carry no loss (as in every
trainer here; they still condition later steps); held-out evaluation decodes greedily in the same
confidence order (`mdlm.decode` sampler "assd-sequential", order "confidence", temperature 0). The policy
must be an AS-ARM run (trained with the `as-arm` objective, `mdlm.losses`); a plain MDLM also runs, but
its two-stream conditionals are not the ones it was trained for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mdlm.as_arm import UNDECIDED, check_two_stream_model, draft_logits, initial_rank, verify_logits
from mdlm.decode.config import DecodeConfig
from mdlm.train.rl.base import (DiffusionGRPOConfig, DiffusionGRPOTrainer, Rollout, check_fits_context,
                                check_mask_token, clipped_surrogate, completion_mask_of, k3_kl, masked_mean)


def _canvas(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion: torch.Tensor):
    valid = torch.cat([prompt_mask.bool(), torch.ones_like(completion, dtype=torch.bool)], 1)
    return torch.cat([prompt_ids, completion], 1), valid


@torch.no_grad()
def anyorder_rollout(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_length: int,
                     temperature: float, generator: torch.Generator | None = None):
    """Decode `completion_length` tokens one position per step in the policy's confidence order.

    Returns (completion (B, T), order (B, T): the completion index decoded at each step, step_logps (B, T):
    log pi(y_j | prompt, y_<j) at the temperature, float32, as the loss computes it). Temperature 0 decodes
    greedily (argmax; step_logps are then the argmax's log-probs at temperature 1)."""
    mask_id = check_mask_token(model)
    check_two_stream_model(model)
    check_fits_context(model, prompt_ids.shape[1], completion_length)
    B, P = prompt_ids.shape
    T = completion_length
    tokens, valid = _canvas(prompt_ids, prompt_mask, torch.full((B, T), mask_id, dtype=prompt_ids.dtype,
                                                                 device=prompt_ids.device))
    rank = initial_rank(tokens, mask_id, valid)
    targets = torch.arange(P, P + T, device=tokens.device).expand(B, T)
    order = torch.zeros((B, T), dtype=torch.long, device=tokens.device)
    step_logps = torch.zeros((B, T), dtype=torch.float32, device=tokens.device)
    rows = torch.arange(B, device=tokens.device)
    was_training = model.training
    model.eval()
    try:
        for step in range(T):
            undecided = rank[:, P:] == UNDECIDED
            logits = draft_logits(model, tokens, rank, targets, target_valid=undecided, valid=valid)
            log_probs = torch.log_softmax(logits.float() / (temperature or 1.0), -1)  # (B, T, V)
            # Where: the undecided position whose top token is most probable (a function of the prefix).
            confidence = log_probs.amax(-1).masked_fill(~undecided, float("-inf"))
            where = confidence.argmax(-1)
            chosen = log_probs[rows, where]  # (B, V)
            if temperature == 0:
                token = chosen.argmax(-1)
            else:  # Gumbel-max in float64 (float32 noise skews low-probability draws)
                uniform = torch.rand(chosen.shape, dtype=torch.float64, generator=generator,
                                     device=chosen.device).clamp_(min=1e-300)
                token = (chosen.double() - torch.log(-torch.log(uniform))).argmax(-1)
            order[:, step] = where
            step_logps[:, step] = chosen.gather(-1, token[:, None])[:, 0]
            tokens[rows, P + where] = token.to(tokens.dtype)
            rank[rows, P + where] = step + 1
    finally:
        model.train(was_training)
    return tokens[:, P:], order, step_logps


class _Network:
    """The network as `mdlm.as_arm` calls it: `config` of the model, forward through `forward` (which may
    be the DDP / accelerate wrapper, so gradients synchronise across processes)."""

    def __init__(self, forward, config):
        self.forward, self.config = forward, config

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


def trajectory_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                     order: torch.Tensor, temperature: float, config=None) -> torch.Tensor:
    """(B, T) log pi(y_j | prompt, y_<j) of every step j of recorded trajectories, in ONE forward pass of
    the two-stream model: y_j = completion_ids at order[:, j]. `config`: the model's, when `model` is a
    wrapper without one. float32, logits / temperature."""
    network = _Network(model, config if config is not None else model.config)
    mask_id = network.config.mask_token_id
    P = prompt_ids.shape[1]
    masked = torch.full_like(completion_ids, mask_id)
    tokens, valid = _canvas(prompt_ids, prompt_mask, masked)
    rank = initial_rank(tokens, mask_id, valid)
    drafted = completion_ids.gather(1, order)
    logits = verify_logits(network, tokens, rank, P + order, drafted, valid=valid)
    log_probs = torch.log_softmax(logits.float() / temperature, -1)
    return log_probs.gather(-1, drafted[..., None])[..., 0]


@dataclass
class D2AnyOrderConfig(DiffusionGRPOConfig):
    """GRPOConfig for d2-AnyOrder. One position per step, so a rollout takes max_completion_length network
    calls (`diffusion_steps` does not apply). Defaults: G 6 (d1's, the batch follows it), mu 2, eps 0.2,
    beta 0.04, lr 3e-5 (the benchmark's sweep range on these small runs)."""

    num_generations: int | None = field(default=6, metadata={"help": "G: rollouts per prompt"})
    num_iterations: int = field(default=2, metadata={"help": "mu: passes per generation"})
    epsilon: float = field(default=0.2, metadata={"help": "clipping range of the ratio"})
    beta: float = field(default=0.04, metadata={"help": "KL coefficient (k3 estimator)"})
    learning_rate: float = field(default=3e-5, metadata={"help": "optimizer step size"})

    def __post_init__(self):
        super().__post_init__()
        if self.diffusion_steps is not None and self.diffusion_steps != self.max_completion_length:
            raise ValueError(f"diffusion_steps={self.diffusion_steps}: d2-AnyOrder decodes one position per step "
                             f"({self.max_completion_length} steps); leave diffusion_steps unset")
        if self.block_length is not None or self.remasking != "low-confidence" or self.eoser:
            raise ValueError("d2-AnyOrder decodes one position at a time in its own confidence order: leave "
                             "block_length, remasking and eoser unset")


class D2AnyOrderTrainer(DiffusionGRPOTrainer):
    """TRL GRPOTrainer for d2-AnyOrder (see the module docstring)."""

    @classmethod
    def evaluation_config(cls, completion_length: int) -> DecodeConfig:
        """Greedy decoding in the policy's own confidence order, one position per network call."""
        return DecodeConfig(sampler="assd-sequential", order="confidence", temperature=0.0, steps=completion_length)

    def generate_rollouts(self, policy, prompt_ids, prompt_mask) -> Rollout:
        completion, order, step_logps = anyorder_rollout(policy, prompt_ids, prompt_mask, self.max_completion_length,
                                                         self.temperature, self.rollout_generator)
        mask = completion_mask_of(completion, self.eos_token_id).to(completion.device)
        return Rollout(completion, mask, nfe=completion.shape[1],
                       extras={"order": order, "rollout_logps": step_logps})

    def _logps(self, model, inputs) -> torch.Tensor:
        config = self.accelerator.unwrap_model(model).config
        return trajectory_logps(model, inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"],
                                inputs["order"], self.temperature, config)

    def policy_statistics(self, batch: dict) -> dict:
        out = {"old_logps": self._logps(self.model, batch),
               # Step j is trained when the token it decoded sits at or before the completion's first EOS.
               "step_mask": batch["completion_mask"].gather(1, batch["order"])}
        if self.beta != 0.0:
            out["ref_logps"] = self._logps(self.ref_model, batch)
        return out

    def _compute_loss(self, model, inputs):
        logps = self._logps(model, inputs)
        trained = inputs["step_mask"].bool()
        surrogate, clipped = clipped_surrogate(logps, inputs["old_logps"], inputs["advantages"][:, None],
                                               self.epsilon_low, self.epsilon_high)
        kl = k3_kl(inputs["ref_logps"], logps) if self.beta != 0.0 else None
        per_token = -surrogate if kl is None else -surrogate + self.beta * kl
        loss = masked_mean(per_token, trained).sum() / logps.shape[0]
        if self.model.training:
            loss = loss / self.current_gradient_accumulation_steps
        self.log_loss_metrics(trained, kl, None, clipped)
        return loss
