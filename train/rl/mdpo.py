"""MDPO: Masked Diffusion Policy Optimization, decoding as a Markov decision process.

He et al. 2025, "MDPO: Overcoming the Training-Inference Divide of Masked Diffusion Language Models"
(official code autonomousvision/mdpo, mirrored as jwkirchenbauer/mdpo, `src/open_r1/mdpo/mdpo_trainer.py`).
A rollout is one run of our confidence decoder (optionally with running confidence remasking, RCR). At
every step t the decoder's full prediction x0-hat_t (the drawn token at every still-masked position) is
scored with the task reward, giving intermediate rewards R_1..R_S. The advantage of step t is the
official trainer's "adv-v4":

    A_t = (R_t - R_{t-1}) + 1 + mean(R_{t+1}, ..., R_S)      (R_0 = 0; for t = S the last term is R_S)
    A_t <- (A_t - mean_G A_t) / (std_G A_t + 1e-4)           per step, over the G rollouts of a prompt

Only the k steps with the largest summed |A_t| over the group are trained. The action of step t is
x0-hat_t at every position still masked in the canvas before the step (of the step's block, when the
rollout decodes semi-autoregressive blocks: later blocks are not drawn yet); its loss is the clipped ratio
pi(x0-hat_t | x_t) / pi_old, weighted by the step's confidence at the position and lambda_t = T / n_masked,
averaged over the n_masked positions, plus beta * KL with KL = 1/2 (log pi_ref - log pi)^2 per token.
Optionally only groups where some rollout "over-denoises" (its x0-hat was right at an intermediate step,
the final answer is wrong) are trained.

Departures from the official code, on purpose: tokens after the final completion's first EOS get no loss
(the official trains every masked position); the k steps are chosen per group of G rollouts, not per
process batch (so the choice does not depend on how many GPUs share a group); the loss is normalised per
(rollout, step) and then averaged, rather than summed over the process batch and divided by its masked
count; the over-denoising filter acts on the groups of the current generation instead of a separate
greedy pass over the dataset; rollouts draw with float64 Gumbel noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mdlm.train.rl.base import (DiffusionGRPOConfig, DiffusionGRPOTrainer, _params, clipped_surrogate,
                                score_rewards, step_logps)


def mdpo_advantages(step_rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """(N, S) per-step advantages from (N, S) intermediate rewards laid out as consecutive groups of
    `num_generations` rollouts (see the module docstring). A group whose steps all score alike gets 0."""
    N, S = step_rewards.shape
    if N % num_generations:
        raise ValueError(f"{N} rollouts do not split into groups of {num_generations}")
    R = step_rewards.float()
    gain = torch.cat([R[:, :1], R[:, 1:] - R[:, :-1]], 1)
    later = R[:, 1:].flip(-1).cumsum(-1) / torch.arange(1, S, device=R.device, dtype=R.dtype)
    future = torch.cat([later.flip(-1), R[:, -1:]], 1)
    A = (gain + 1.0 + future).view(-1, num_generations, S)
    std = A.std(1, keepdim=True) if num_generations > 1 else torch.zeros_like(A[:, :1])
    return ((A - A.mean(1, keepdim=True)) / (std + 1e-4)).view(N, S)


def select_steps(advantages: torch.Tensor, num_generations: int, k: int) -> torch.Tensor:
    """(N, k) step indices per rollout: the k steps of its group with the largest summed |A_t|, in
    step order. Ties go to the earlier step (stable sort)."""
    N, S = advantages.shape
    if k > S:
        raise ValueError(f"sample_train_steps={k} exceeds the {S} denoising steps of the rollouts; choose at "
                         f"most {S} (or raise diffusion_steps)")
    score = advantages.abs().view(-1, num_generations, S).sum(1)
    order = torch.sort(-score, dim=1, stable=True).indices[:, :k]
    return order.sort(1).values.repeat_interleave(num_generations, 0)


def action_logps(model, drawn: torch.Tensor, *args, compute_entropy: bool = False):
    """`step_logps` at the (B, K, T) `drawn` positions (the step's actions), 0 elsewhere. An undrawn
    position's target is the mask token, log p = -inf; left in, its inf - inf in the ratio and the KL
    would send NaN gradients through the `where` that drops it from the loss."""
    logps, entropy = step_logps(model, *args, compute_entropy=compute_entropy)
    return torch.where(drawn, logps, torch.zeros((), device=logps.device)), entropy


def over_denoised(correct: torch.Tensor) -> torch.Tensor:
    """(N,) bool from (N, S) per-step correctness: right at some step before the last, wrong at the end."""
    return correct[:, :-1].any(1) & ~correct[:, -1]


@dataclass
class MDPOConfig(DiffusionGRPOConfig):
    """GRPOConfig with the paper's defaults (lr 7e-7, temperature 0.4, beta 0.02, k = 8 trained steps)
    and MDPO's knobs. `remasking="rcr"` rolls out with running confidence remasking."""

    sample_train_steps: int = field(default=8, metadata={"help": "k: steps trained per rollout, the largest "
                                    "summed |A_t| of the group (paper: 8)"})
    over_denoising_filter: bool = field(default=False, metadata={"help": "train only groups where some rollout "
                                        "was right at an intermediate step and wrong at the end"})
    confidence_weighting: bool = field(default=True, metadata={"help": "weight each position's loss by the "
                                       "step's confidence at it (MDPO); False: weight 1"})
    learning_rate: float = field(default=7e-7, metadata={"help": "paper: 7e-7"})
    temperature: float = field(default=0.4, metadata={"help": "rollout temperature (paper: 0.4)"})
    beta: float = field(default=0.02, metadata={"help": "KL coefficient (paper: 0.02)"})
    epsilon: float = field(default=0.2, metadata={"help": "clipping range of the ratio (official: 0.2)"})
    num_generations: int | None = field(default=8, metadata={"help": "G: rollouts per prompt (official: 8)"})
    num_iterations: int = field(default=1, metadata={"help": "mu: passes per generation (official: 1)"})

    def __post_init__(self):
        super().__post_init__()
        steps = self.decode_config().steps
        if self.sample_train_steps < 1 or self.sample_train_steps > steps:
            raise ValueError(f"sample_train_steps={self.sample_train_steps} must be between 1 and the {steps} "
                             "denoising steps of a rollout (diffusion_steps); lower it or raise diffusion_steps")


class MDPOTrainer(DiffusionGRPOTrainer):
    """TRL GRPOTrainer that trains MDPO along the decoder's own trajectory (see the module docstring)."""

    record_trajectories = True
    keep_x0 = True

    def step_rewards(self, trajectory, completion_length: int, prompts: list[str],
                     columns: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, S) task reward of each step's x0-hat (reward weights applied) and (B, S) its correctness
        under the task's accuracy metric (None without one)."""
        weights = self.reward_weights.float()
        rewards, correct = [], []
        for s in range(trajectory.num_steps):
            lists, texts = self.texts_of(trajectory.x0[s][:, -completion_length:])
            per_func = score_rewards(self.user_reward_funcs, prompts, texts, lists, columns)
            rewards.append((per_func * weights.cpu()).sum(1))
            if self.accuracy_fn is not None:
                used = {k: v for k, v in columns.items() if k in _params(self.accuracy_fn)}
                correct.append(torch.tensor(self.accuracy_fn(texts, **used), dtype=torch.float32) > 0.5)
        return torch.stack(rewards, 1), torch.stack(correct, 1) if correct else None

    def policy_statistics(self, batch: dict) -> dict:
        from accelerate.utils import gather

        trajectory, T = batch["trajectory"], batch["completion_ids"].shape[1]
        device = self.accelerator.device
        ctx = self.rollout_context
        rewards, correct = self.step_rewards(trajectory, T, ctx["prompts"], ctx["columns"])
        all_rewards = gather(rewards.to(device))
        advantages = mdpo_advantages(all_rewards, self.num_generations)
        steps = select_steps(advantages, self.num_generations, self.args.sample_train_steps)
        weight = torch.ones(all_rewards.shape[0], device=device)
        mode = ctx["mode"]
        if correct is not None:
            all_over = gather(over_denoised(correct).to(device))
            self._metrics[mode]["over_denoising_rate"].append(all_over.float().mean().item())
            if self.args.over_denoising_filter:
                weight = all_over.view(-1, self.num_generations).any(1).float().repeat_interleave(self.num_generations)
        self._metrics[mode]["intermediate_reward"].append(all_rewards.mean().item())
        start = self.accelerator.process_index * rewards.shape[0]
        local = slice(start, start + rewards.shape[0])
        steps, advantages, weight = steps[local], advantages[local].gather(1, steps[local]), weight[local]

        pick = lambda x: x[:, :, -T:].permute(1, 0, 2).gather(1, steps[..., None].expand(-1, -1, T))  # noqa: E731
        canvases, targets = pick(trajectory.canvases), pick(trajectory.x0)
        confidence = pick(trajectory.confidence).float()
        # The actions: the positions the step drew x0-hat at (a finite score). With semi-autoregressive
        # blocks (a block-causal model's attention blocks, or block_length) that is the current block's
        # masked positions; the masks of later blocks were not drawn, their x0-hat is the mask token.
        drawn = (canvases == self.mask_token_id) & torch.isfinite(confidence)
        confidence = torch.where(drawn, confidence, torch.zeros((), device=device))
        args = (batch["prompt_ids"], batch["prompt_mask"], canvases, targets, self.mask_token_id, self.temperature)
        out = {"step_index": steps, "step_canvases": canvases, "step_targets": targets, "step_drawn": drawn,
               "step_confidence": confidence, "advantages": advantages, "row_weight": weight,
               "old_step_logps": action_logps(self.model, drawn, *args)[0]}
        if self.beta != 0.0:
            out["ref_step_logps"] = action_logps(self.ref_model, drawn, *args)[0]
        return out

    def _compute_loss(self, model, inputs):
        canvases, targets = inputs["step_canvases"], inputs["step_targets"]
        B, K, T = canvases.shape
        logps, entropy = action_logps(model, inputs["step_drawn"], inputs["prompt_ids"], inputs["prompt_mask"],
                                      canvases, targets, self.mask_token_id, self.temperature, compute_entropy=True)
        trained = inputs["step_drawn"] & inputs["completion_mask"].bool()[:, None, :]
        n = trained.sum(-1).clamp(min=1).float()  # (B, K)
        surrogate, clipped = clipped_surrogate(logps, inputs["old_step_logps"], inputs["advantages"][..., None],
                                               self.epsilon_low, self.epsilon_high)
        per_token = -surrogate * (T / n)[..., None]
        kl = None
        if self.beta != 0.0:
            kl = 0.5 * (inputs["ref_step_logps"] - logps) ** 2
            per_token = per_token + self.beta * kl
        weight = inputs["step_confidence"] if self.args.confidence_weighting else torch.ones_like(per_token)
        zero = torch.zeros((), device=per_token.device)
        per_step = torch.where(trained, per_token * weight, zero).sum(-1) / n
        loss = (per_step.mean(1) * inputs["row_weight"]).sum() / B
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            loss = loss / self.current_gradient_accumulation_steps
        self.log_loss_metrics(trained, kl, entropy, clipped)
        return loss
