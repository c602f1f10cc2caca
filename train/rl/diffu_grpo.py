"""diffu-GRPO: GRPO for masked diffusion LMs with a one-pass log-probability estimator.

Zhao, Gupta, Zheng, Grover 2025, "d1: Scaling Reasoning in Diffusion Large Language Models via
Reinforcement Learning" (official code dllm-reasoning/d1). A diffusion LM has no cheap exact
log-likelihood of a completion, so d1 estimates every completion token's log-prob with one forward pass:

    x~ = prompt with each prompt token masked with p = 0.15, completion fully masked
    log pi(o_k | q) ~= log p_theta(o_k | x~)         for every completion position k

The prompt mask is drawn afresh for each of the num_iterations (mu) passes over a generation and is the
same for the old, reference and current policies of that pass, so the ratio pi/pi_old compares like with
like (before any update it is exactly 1). The loss is TRL's clipped GRPO objective with KL_k3 to the
reference (the GRPOConfig fields mean what they mean in TRL: num_generations G, num_iterations mu,
epsilon, beta, loss_type, scale_rewards, ...). Tokens after the first EOS carry no loss.

Departures from the official code, on purpose: rollouts draw with float64 Gumbel noise (d1's bf16 noise
lowers the effective temperature); the iteration index is TRL's own step counter (d1's is off by one);
no set_seed inside the loss; the prompt masks are stored with the batch rows rather than re-drawn from
a seed, so TRL's shuffling of rows cannot pair a row with another row's mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mdlm.train.rl.base import DiffusionGRPOConfig, DiffusionGRPOTrainer, completion_logps


@dataclass
class DiffuGRPOConfig(DiffusionGRPOConfig):
    """GRPOConfig with d1's defaults (G 6, mu 12, eps 0.5, beta 0.04; per-sequence mean "grpo" loss) and
    the prompt mask probability of the estimator."""

    prompt_mask_prob: float = field(default=0.15, metadata={"help": "each prompt token is masked with this "
                                    "probability in the log-prob estimator (d1: 0.15)"})
    num_generations: int | None = field(default=6, metadata={"help": "G: completions per prompt"})
    num_iterations: int = field(default=12, metadata={"help": "mu: optimisation passes per generation"})
    epsilon: float = field(default=0.5, metadata={"help": "clipping range of the ratio"})
    beta: float = field(default=0.04, metadata={"help": "KL coefficient"})
    loss_type: str = field(default="grpo", metadata={"help": "TRL loss aggregation (d1: grpo)"})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.prompt_mask_prob < 1.0:
            raise ValueError(f"prompt_mask_prob={self.prompt_mask_prob} must be in [0, 1)")


class DiffuGRPOTrainer(DiffusionGRPOTrainer):
    """TRL GRPOTrainer for masked diffusion LMs with d1's estimator (see the module docstring)."""

    def __init__(self, model, reward_funcs, args: DiffuGRPOConfig, train_dataset, processing_class,
                 accuracy_fn=None, callbacks=None):
        super().__init__(model, reward_funcs, args, train_dataset, processing_class, accuracy_fn, callbacks)
        self._prompt_noise = None  # (B, P) bool: the prompt mask of the current pass, set by _compute_loss

    def draw_prompt_noise(self, prompt_mask: torch.Tensor) -> torch.Tensor:
        """(B, mu, P) bool: one fresh prompt mask per pass, over real (non-padding) prompt tokens."""
        B, P = prompt_mask.shape
        u = torch.rand((B, self.num_iterations, P), generator=self.rollout_generator)
        return (u.to(prompt_mask.device) < self.args.prompt_mask_prob) & prompt_mask.bool()[:, None]

    def estimator_logps(self, model, input_ids, attention_mask, completion_length, prompt_noise,
                        compute_entropy=False):
        """d1's one-pass estimate at the completion positions; every completion position stays visible
        (as a mask) whatever the completion mask, as it was when the rollout started."""
        valid = attention_mask.bool().clone()
        valid[:, -completion_length:] = True
        masked = torch.zeros_like(valid)
        masked[:, :-completion_length] = prompt_noise
        masked[:, -completion_length:] = True
        return completion_logps(model, input_ids, valid, masked, completion_length, self.mask_token_id,
                                self.temperature, compute_entropy)

    def policy_statistics(self, batch: dict) -> dict:
        noise = self.draw_prompt_noise(batch["prompt_mask"])
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        T = batch["completion_ids"].shape[1]
        old, ref = [], []
        for it in range(self.num_iterations):
            old.append(self.estimator_logps(self.model, input_ids, attention, T, noise[:, it])[0])
            if self.beta != 0.0:
                ref.append(self.estimator_logps(self.ref_model, input_ids, attention, T, noise[:, it])[0])
        out = {"prompt_noise": noise, "old_per_token_logps_all": torch.stack(old, 1)}
        if ref:
            out["ref_per_token_logps_all"] = torch.stack(ref, 1)
        return out

    # --- TRL hooks -----------------------------------------------------------------------------------

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, **kwargs):
        if self._prompt_noise is None:
            raise RuntimeError("diffu-GRPO log-probs need the pass's prompt mask; they are computed in "
                               "_compute_loss and policy_statistics only")
        logps, entropy = self.estimator_logps(model, input_ids, attention_mask, logits_to_keep, self._prompt_noise,
                                              compute_entropy)
        return logps, entropy, None

    def _compute_loss(self, model, inputs):
        it = self.iteration_index()
        inputs = dict(inputs)
        inputs["old_per_token_logps"] = inputs.pop("old_per_token_logps_all")[:, it]
        if "ref_per_token_logps_all" in inputs:
            inputs["ref_per_token_logps"] = inputs.pop("ref_per_token_logps_all")[:, it]
        self._prompt_noise = inputs.pop("prompt_noise")[:, it]
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._prompt_noise = None
