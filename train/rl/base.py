"""What every RL trainer of a masked diffusion LM shares (diffu-GRPO, MDPO, CJ-GRPO).

A TRL `GRPOTrainer` samples autoregressively and scores tokens with a causal LM head; neither applies to
a diffusion LM. `DiffusionGRPOTrainer` keeps TRL's loop (data, repeat sampler, grouping across
processes, optimizer, clipped loss, logging, checkpoints) and replaces the three places where a causal
LM is assumed:

- rollouts run through `mdlm.decode` (the confidence decoder with any schedule/remasking/blocks), in
  eval mode, optionally recorded as a `mdlm.decode.trace.Trajectory`;
- rewards are scored here (`score_rewards`): a reward function that raises, returns NaN/None or the
  wrong number of values stops training with its name; group advantages follow TRL's `scale_rewards`;
- the reference model is a copy made here before TRL's `__init__` (TRL would rebuild one by class name,
  which needs `auto_map`, and since 1.15 its fused-head patch closes over the policy, so a late copy is
  the policy itself: KL 0).

Subclasses define `policy_statistics(batch)` (what to compute at rollout time: old and reference
log-probs under the algorithm's estimator) and the per-token log-prob of the loss
(`_get_per_token_logps_and_entropies`). `completion_logps` below is the shared masked forward: the
log-probabilities of completion tokens on a canvas where some positions are masked;
`step_logps` applies it to recorded trajectory steps (MDPO and CJ-GRPO score the step the rollout took).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import torch
from trl import GRPOConfig, GRPOTrainer

from mdlm.decode.config import DecodeConfig
from mdlm.decode.denoiser import default_position_ids
from mdlm.decode.trace import Trajectory
from mdlm.trainable import AdapterDisabled, denoiser_for, is_lora, training_logits


def check_mask_token(model) -> int:
    mask_id = getattr(getattr(model, "config", None), "mask_token_id", None)
    if mask_id is None:
        raise ValueError("the model has no mask token (config.mask_token_id is None): RL here finetunes masked "
                         "diffusion models; pass a run trained by train/pretrain.py or train/sft.py")
    return int(mask_id)


def check_fits_context(model, prompt_length: int, completion_length: int) -> None:
    context = int(model.config.max_position_embeddings)
    if prompt_length + completion_length > context:
        raise ValueError(f"the longest prompt is {prompt_length} tokens; with max_completion_length="
                         f"{completion_length} that is {prompt_length + completion_length} tokens, beyond the "
                         f"model's context of {context}; lower max_completion_length to at most "
                         f"{context - prompt_length} or shorten the prompts")


def completion_mask_of(completion_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after (tokens after EOS are not actions: no loss)."""
    if eos_token_id is None:
        return torch.ones_like(completion_ids, dtype=torch.long)
    is_eos = completion_ids == eos_token_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after_eos).long()


def left_padded(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of the prompts, left-padded to the longest (the completion follows every prompt directly)."""
    rows = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


@dataclass
class Rollout:
    completion_ids: torch.Tensor  # (B, T) every generated token, EOS and what follows included
    completion_mask: torch.Tensor  # (B, T) 1 up to and including the first EOS
    trajectory: Trajectory | None = None
    nfe: int = 0
    extras: dict = field(default_factory=dict)  # (B, ...) tensors an algorithm's rollout adds to the batch


@torch.no_grad()
def rollout(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_length: int,
            config: DecodeConfig, eos_token_id: int | None, generator: torch.Generator | None = None,
            record: bool = False, keep_x0: bool = False) -> Rollout:
    """Decode `completion_length` tokens after each left-padded prompt with `mdlm.decode`, in eval mode
    (no dropout), optionally recording the trajectory."""
    from mdlm.decode.registry import decode

    mask_id = check_mask_token(model)
    check_fits_context(model, prompt_ids.shape[1], completion_length)
    if record and config.sampler != "confidence":
        raise ValueError(f"recording a trajectory needs sampler='confidence', not {config.sampler!r}")
    B = prompt_ids.shape[0]
    masks = torch.full((B, completion_length), mask_id, dtype=prompt_ids.dtype, device=prompt_ids.device)
    canvas = torch.cat([prompt_ids, masks], 1)
    valid = torch.cat([prompt_mask.bool(), torch.ones_like(masks, dtype=torch.bool)], 1)
    config = replace(config, trace=record, eos_token_id=eos_token_id if config.eos_token_id is None
                     else config.eos_token_id)
    was_training = model.training
    model.eval()
    try:
        result = decode(denoiser_for(model), canvas, config, valid=valid, generator=generator)
    finally:
        model.train(was_training)
    completion = result.tokens[:, prompt_ids.shape[1]:]
    trajectory = None
    if record:
        trajectory = Trajectory.from_steps(result.trace, result.tokens, config.temperature, keep_x0=keep_x0)
    return Rollout(completion, completion_mask_of(completion, eos_token_id).to(completion.device), trajectory,
                   result.nfe)


def completion_logps(model, input_ids: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor,
                     completion_length: int, mask_token_id: int, temperature: float = 1.0,
                     compute_entropy: bool = False):
    """log p(x_i | x with `masked` positions replaced by the mask) at the last `completion_length`
    columns, with logits / temperature, in float32; and the entropies when asked. A mask logit of -inf
    contributes 0 to the entropy (never NaN). `model` may be a DDP wrapper (so the mask id is given)."""
    noisy = input_ids.masked_fill(masked, mask_token_id)
    logits = training_logits(model, noisy, valid, default_position_ids(valid))  # any family, its convention
    logits = logits[:, -completion_length:].float() / temperature
    log_probs = torch.log_softmax(logits, -1)
    logps = log_probs.gather(-1, input_ids[:, -completion_length:, None])[..., 0]
    entropy = None
    if compute_entropy:
        p = log_probs.exp()
        entropy = -torch.where(p > 0, p * log_probs, torch.zeros((), device=p.device)).sum(-1)
    return logps, entropy


def step_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, canvases: torch.Tensor,
               targets: torch.Tensor, mask_token_id: int, temperature: float, compute_entropy: bool = False):
    """(B, K, T) log p(targets | canvas) at the completion positions of K recorded steps per row, in one
    batched forward: canvases are the completion part of each step's input (mask id where still masked),
    targets what the step put there (x0-hat for MDPO, the next canvas for CJ-GRPO). The prompt is never
    masked and every completion position is attended, as in the rollout. Entropies (B, K, T) on request."""
    B, K, T = canvases.shape
    prompt = prompt_ids[:, None].expand(B, K, -1).reshape(B * K, -1)
    valid = torch.cat([prompt_mask.bool()[:, None].expand(B, K, -1).reshape(B * K, -1),
                       torch.ones((B * K, T), dtype=torch.bool, device=canvases.device)], 1)
    input_ids = torch.cat([prompt, targets.reshape(B * K, T)], 1)
    masked = torch.cat([torch.zeros_like(prompt, dtype=torch.bool), canvases.reshape(B * K, T) == mask_token_id], 1)
    logps, entropy = completion_logps(model, input_ids, valid, masked, T, mask_token_id, temperature, compute_entropy)
    return logps.view(B, K, T), None if entropy is None else entropy.view(B, K, T)


def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, eps_low: float,
                      eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token min(ratio A, clip(ratio) A) (to maximise) and whether the clip was active; masked-out
    tokens must be handled by the caller. The log-ratio is clamped before exp so that a -inf old log-prob
    (a token the old policy could not draw) gives a clipped ratio, never NaN."""
    ratio = torch.exp((logps - old_logps).clamp(-20.0, 20.0))
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    surrogate = torch.minimum(ratio * advantages, clipped * advantages)
    return surrogate, (ratio * advantages) > (clipped * advantages)


def k3_kl(ref_logps: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(d) - d - 1 with d = log pi_ref - log pi (>= 0; d is
    clamped so that a -inf never reaches exp)."""
    log_ratio = (ref_logps - logps).clamp(-20.0, 20.0)
    return torch.exp(log_ratio) - log_ratio - 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=-1) -> torch.Tensor:
    """Mean of x over mask along dim; 0 (never NaN) where the mask is empty."""
    mask = mask.to(x.dtype)
    return (torch.where(mask > 0, x, torch.zeros((), dtype=x.dtype, device=x.device)) * mask).sum(dim) / \
        mask.sum(dim).clamp(min=1.0)


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group",
                     positive_only: bool = False) -> torch.Tensor:
    """GRPO advantages of rewards laid out as consecutive groups of `num_generations` (TRL's layout):
    r - group mean, divided by (group std + 1e-4) with "group", by (batch std + 1e-4) with "batch", not
    divided with "none" (Dr. GRPO / CJ-GRPO). std is the unbiased one, as TRL's. A group of equal
    rewards gets exactly 0. `positive_only` zeroes the negative ones: only the better-than-average draws
    are pushed up (the filtered, RFT-like half of GRPO; a diagnosis of what the other half does)."""
    if num_generations < 2:
        raise ValueError(f"num_generations={num_generations}: GRPO needs a group of at least 2 completions per "
                         "prompt to compare them")
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}")
    grouped = rewards.view(-1, num_generations)
    advantages = (grouped - grouped.mean(1, keepdim=True)).view(-1)
    if scale_rewards == "group":
        advantages = advantages / (grouped.std(1).repeat_interleave(num_generations) + 1e-4)
    elif scale_rewards == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        advantages = advantages / (std + 1e-4)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards={scale_rewards!r}; choose group, batch or none")
    return advantages.clamp(min=0) if positive_only else advantages


def _name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def score_rewards(reward_funcs, prompts, completions, completion_ids, columns: dict) -> torch.Tensor:
    """(N, F) rewards of N completions under F reward functions (TRL signature). Errors name the function."""
    out = torch.zeros(len(completions), len(reward_funcs), dtype=torch.float32)
    for j, fn in enumerate(reward_funcs):
        try:
            values = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        except Exception as error:
            raise RuntimeError(f"reward function {_name(fn)} raised {type(error).__name__}: {error}") from error
        values = list(values) if values is not None else None
        if values is None or len(values) != len(completions):
            got = "None" if values is None else f"{len(values)} values"
            raise ValueError(f"reward function {_name(fn)} returned {got} for {len(completions)} completions; "
                             "return one float per completion")
        bad = [i for i, v in enumerate(values) if v is None or not math.isfinite(float(v))]
        if bad:
            raise ValueError(f"reward function {_name(fn)} returned {values[bad[0]]} for completion {bad[0]} "
                             f"({len(bad)} non-finite values); return a finite float for every completion")
        out[:, j] = torch.tensor([float(v) for v in values])
    return out


def make_reference(model):
    """The frozen reference policy: a LoRA policy's base with the adapter switched off (no second copy in
    memory), else a copy made before TRL patches the policy's forward."""
    if is_lora(model):
        return AdapterDisabled(model)
    reference = copy.deepcopy(model)
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


@dataclass
class DiffusionGRPOConfig(GRPOConfig):
    """GRPOConfig (every field keeps its TRL meaning) plus how rollouts decode.

    TRL's `temperature` is the rollout temperature and the one the loss's log-probs use;
    `max_completion_length` is the number of positions decoded after the prompt."""

    diffusion_steps: int | None = field(default=None, metadata={"help": "denoising steps of a rollout "
                                        "(default: max_completion_length // 2, d1's)"})
    block_length: int | None = field(default=None, metadata={"help": "semi-autoregressive block length"})
    unmasking_schedule: str = field(default="uniform", metadata={"help": "uniform | cosine | ascending"})
    remasking: str = field(default="low-confidence", metadata={"help": "low-confidence | random | margin | "
                           "entropy | rcr"})
    eoser: bool = field(default=False, metadata={"help": "EOS early rejection in rollouts"})
    positive_advantages_only: bool = field(default=False, metadata={
        "help": "zero the negative advantages: only draws better than their group's mean are pushed up"})
    disable_dropout: bool = field(default=True, metadata={"help": "no dropout (old and current log-probs agree)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "not supported by the mdlm model"})
    bf16: bool = field(default=False, metadata={"help": "float32 on CPU"})
    report_to: str | list[str] = field(default="none", metadata={"help": "integrations to report to"})

    def __post_init__(self):
        super().__post_init__()
        if self.num_generations is None or self.num_generations < 2:
            raise ValueError(f"num_generations={self.num_generations}: GRPO needs a group of at least 2 "
                             "completions per prompt")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: RL rollouts sample (temperature > 0)")
        if self.gradient_checkpointing:
            raise ValueError("gradient_checkpointing=True is not supported by the mdlm model; leave it False")
        if self.top_k not in (None, 0, -1) or self.top_p not in (None, 1.0):
            raise ValueError("top_k / top_p change the rollout distribution away from the policy; RL rollouts "
                             "here sample the tempered model (leave them unset)")
        if self.block_length is not None and (self.block_length <= 0 or
                                              self.max_completion_length % self.block_length):
            raise ValueError(f"block_length={self.block_length} does not divide max_completion_length="
                             f"{self.max_completion_length}; pick a divisor of {self.max_completion_length} (or "
                             "leave block_length unset for one block)")

    def decode_config(self) -> DecodeConfig:
        steps = self.diffusion_steps or max(1, self.max_completion_length // 2)
        return DecodeConfig(sampler="confidence", steps=steps, schedule=self.unmasking_schedule,
                            remasking=self.remasking, block_length=self.block_length,
                            temperature=self.temperature, eoser=self.eoser)


class DiffusionGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose rollouts, rewards and reference model suit a masked diffusion LM (see the
    module docstring). `accuracy_fn(completions, **columns) -> list[0/1]` is logged as `accuracy`."""

    record_trajectories = False  # MDPO / CJ-GRPO train on the trajectory; diffu-GRPO does not need it
    keep_x0 = False

    def __init__(self, model, reward_funcs, args: DiffusionGRPOConfig, train_dataset, processing_class,
                 accuracy_fn=None, callbacks=None):
        from transformers import GenerationConfig

        self.mask_token_id = check_mask_token(model)
        if not isinstance(reward_funcs, (list, tuple)):
            reward_funcs = [reward_funcs]
        if getattr(model, "generation_config", None) is None:
            # every id the tokenizer defines: TRL aligns the model to the tokenizer and warns about any it adds
            model.generation_config = GenerationConfig(bos_token_id=processing_class.bos_token_id,
                                                       eos_token_id=processing_class.eos_token_id,
                                                       pad_token_id=processing_class.pad_token_id)
        beta = args.beta
        reference = make_reference(model) if beta != 0.0 else None
        args.beta = 0.0  # TRL builds no reference; ours is installed below
        try:
            super().__init__(model=model, reward_funcs=list(reward_funcs), args=args, train_dataset=train_dataset,
                             processing_class=processing_class, callbacks=callbacks)
        finally:
            args.beta = beta
        self.beta = beta
        if isinstance(reference, AdapterDisabled):
            reference.policy = self.model  # the prepared policy, run with its adapter off
            self.ref_model = reference
        elif reference is not None:
            self.ref_model = self.accelerator.prepare_model(reference, evaluation_mode=True)
        self.accuracy_fn = accuracy_fn
        self.user_reward_funcs = list(reward_funcs)
        self.rollout_generator = torch.Generator().manual_seed(args.seed + 1000 * self.accelerator.process_index)

    # --- helpers -------------------------------------------------------------------------------------

    @property
    def eos_token_id(self) -> int | None:
        return self.processing_class.eos_token_id

    def tokenize_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = left_padded(self.processing_class, prompts)
        return ids.to(self.accelerator.device), mask.to(self.accelerator.device)

    def texts_of(self, completion_ids: torch.Tensor) -> tuple[list[list[int]], list[str]]:
        """The token lists (up to and including the first EOS) and texts (EOS dropped) the rewards see."""
        mask = completion_mask_of(completion_ids, self.eos_token_id)
        lists = [row[: int(m.sum())] for row, m in zip(completion_ids.tolist(), mask)]
        texts = self.processing_class.batch_decode([[t for t in row if t != self.eos_token_id] for row in lists],
                                                   skip_special_tokens=True)
        return lists, texts

    def iteration_index(self) -> int:
        """Which of the num_iterations passes over the current generation this micro-step belongs to
        (TRL regenerates every steps_per_generation * num_iterations micro-steps; `_step` counts them)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return (self._step % generate_every) // self.args.steps_per_generation

    def log_loss_metrics(self, mask: torch.Tensor, kl: torch.Tensor | None = None,
                         entropy: torch.Tensor | None = None, clipped: torch.Tensor | None = None) -> None:
        """TRL's kl / entropy / clip_ratio metrics, as token means over `mask` across processes."""
        mode = "train" if self.model.training else "eval"

        def global_mean(x):
            m = mask.float()
            local = torch.stack([torch.where(m > 0, x.float(), torch.zeros((), device=x.device)).sum(), m.sum()])
            totals = self.accelerator.reduce(local, reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        if kl is not None:
            self._metrics[mode]["kl"].append(global_mean(kl.detach()))
        if entropy is not None:
            self._metrics[mode]["entropy"].append(global_mean(entropy.detach()))
        if clipped is not None:
            self._metrics[mode]["clip_ratio/region_mean"].append(global_mean(clipped.float()))

    @classmethod
    def evaluation_config(cls, completion_length: int) -> DecodeConfig | None:
        """How held-out accuracy decodes a policy of this algorithm; None: the task's greedy confidence
        decoding (`mdlm.train.tasks.greedy_config`)."""
        return None

    def generate_rollouts(self, policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Rollout:
        """One batch of rollouts of the (unwrapped) policy: `mdlm.decode` with the config's decoder."""
        return rollout(policy, prompt_ids, prompt_mask, self.max_completion_length, self.args.decode_config(),
                       self.eos_token_id, self.rollout_generator, record=self.record_trajectories,
                       keep_x0=self.keep_x0)

    def policy_statistics(self, batch: dict) -> dict:
        """Algorithm-specific tensors computed at rollout time (old / reference log-probs), added to
        the batch. Every tensor's first axis must be the batch (TRL shuffles and splits along it)."""
        raise NotImplementedError

    # --- TRL hook ------------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        from accelerate.utils import gather

        mode = "train" if self.model.training else "eval"
        prompts = [x["prompt"] for x in inputs]
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be plain text (the `prompt` column); conversational prompts need a "
                             "chat template, which these models do not have")
        prompt_ids, prompt_mask = self.tokenize_prompts(prompts)
        result = self.generate_rollouts(self.accelerator.unwrap_model(self.model), prompt_ids, prompt_mask)
        completion_ids, completion_mask = result.completion_ids, result.completion_mask
        completion_lists, completions = self.texts_of(completion_ids)
        columns = {k: [x[k] for x in inputs] for k in inputs[0] if k not in ("prompt", "completion",
                                                                              "completion_ids")}
        local_rewards = score_rewards(self.user_reward_funcs, prompts, completions, completion_lists, columns)
        rewards_per_func = gather(local_rewards.to(self.accelerator.device))
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights).sum(1)
        # Groups may straddle processes: advantages over the gathered batch, then this process's slice.
        advantages = group_advantages(rewards, self.num_generations, self.scale_rewards,
                                      self.args.positive_advantages_only)
        start = self.accelerator.process_index * len(prompts)
        advantages = advantages[start:start + len(prompts)]

        metrics = self._metrics[mode]
        for j, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(rewards_per_func[:, j].mean().item())
        metrics["reward"].append(rewards.mean().item())
        metrics["reward_std"].append(rewards.std().item() if rewards.numel() > 1 else 0.0)
        grouped_std = rewards.view(-1, self.num_generations).std(1)
        metrics["frac_reward_zero_std"].append((grouped_std == 0).float().mean().item())
        lengths = gather(completion_mask.sum(1).float())
        metrics["completions/mean_length"].append(lengths.mean().item())
        metrics["nfe_per_rollout"].append(float(result.nfe))
        metrics["rollouts"].append(float(rewards.numel()))  # over all processes: the groups they share
        if self.accuracy_fn is not None:
            accuracy = torch.tensor(self.accuracy_fn(completions, **{k: columns[k] for k in columns
                                                                      if k in _params(self.accuracy_fn)}),
                                    dtype=torch.float32, device=self.accelerator.device)
            metrics["accuracy"].append(gather(accuracy).mean().item())
        self._logs["prompt"].extend(prompts)
        self._logs["completion"].extend(completions)
        for j, name in enumerate(self.reward_func_names):
            self._logs["rewards"][name].extend(local_rewards[:, j].tolist())
        self._logs["advantages"].extend(advantages.tolist())

        batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                 "completion_mask": completion_mask, "advantages": advantages,
                 "num_items_in_batch": self.accelerator.gather(completion_mask.sum()).sum()}
        batch.update(result.extras)
        if result.trajectory is not None:
            batch["trajectory"] = result.trajectory.to(self.accelerator.device)
        # What an algorithm that scores intermediate steps (MDPO) needs besides the batch tensors.
        self.rollout_context = {"prompts": prompts, "columns": columns, "rewards": rewards, "mode": mode,
                                "nfe": result.nfe}
        try:
            with torch.no_grad():
                batch.update(self.policy_statistics(batch))
        finally:
            self.rollout_context = None
        batch.pop("trajectory", None)
        return batch


def _params(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)
