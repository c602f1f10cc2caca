"""The autoregressive control: the same backbone with causal attention, SFT-ed the same way
(`train/rl/sft_objectives.py`, objective "ar"), trained with TRL's own, unmodified `GRPOTrainer`.

If this control gains and the diffusion trainers do not, our losses, advantages or sampling are at fault;
if neither gains at the same budget, the budget or the task is. The only code here is the view that lets
transformers' `generate` and TRL's log-prob pass call our causal network as a causal LM: logits at position i
predict token i + 1 (how `mdlm.losses.ar_loss` trained it), positions counted from the first real token of
a left-padded row, no KV cache (the network recomputes the prefix; completions here are a few dozen tokens).

    run_ar_grpo("runs/sft-sudoku-ar", "sudoku", "runs/ar-grpo-sudoku", rollouts=320, num_generations=4)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import GenerationMixin, PreTrainedModel, TrainerCallback
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast

from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.train.rl.base import left_padded

# The mask token's logit: finite (TRL's entropy of -inf logits is NaN), yet exp() of it is exactly 0.
NEVER = -1e9


class _Backbone(torch.nn.Module):
    """The network up to its final norm: what TRL's fused LM head reads as `last_hidden_state`."""

    def __init__(self, network: MDLMForMaskedLM):
        super().__init__()
        self.network = network

    def forward(self, input_ids, attention_mask=None, **kwargs):
        positions = None
        if attention_mask is not None:  # left-padded rows: positions from the first real token, as in SFT
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        first = torch.zeros((input_ids.shape[0], 1), dtype=torch.long, device=input_ids.device)
        out = self.network(input_ids, attention_mask=attention_mask, position_ids=positions, output_hidden_states=True,
                           logits_at=first)  # the head runs at one position: the hidden states are what is used
        return BaseModelOutput(last_hidden_state=out.hidden_states)


class CausalLMView(PreTrainedModel, GenerationMixin):
    """An `attention="causal"` MDLMForMaskedLM behind the causal-LM calling convention (TRL 1.16 scores
    completions through `base_model` + `get_output_embeddings`, its fused LM head). The head is the network's
    own weight plus a frozen bias that keeps the mask token at probability 0 in sampling and in the loss alike."""

    config_class = MDLMConfig
    base_model_prefix = "backbone"
    _supports_sdpa = True  # the network's own attention (SDPA); transformers only checks the flag

    def __init__(self, config: MDLMConfig, network: MDLMForMaskedLM | None = None):
        super().__init__(config)
        if config.attention != "causal":
            raise ValueError(f"the autoregressive control needs a causal run (attention='causal'), got "
                             f"attention={config.attention!r}; train one with train/rl/sft_objectives.py (objective ar)")
        self.backbone = _Backbone(network if network is not None else MDLMForMaskedLM(config))
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.head.weight = self.backbone.network.lm_head.weight  # shared: trained through either path
        bias = torch.zeros(config.vocab_size)
        if config.mask_token_id is not None:
            bias[config.mask_token_id] = NEVER
        self.head.bias = torch.nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_run(cls, run: str) -> "CausalLMView":
        network = MDLMForMaskedLM.from_pretrained(run)
        return cls(network.config, network)

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, logits_to_keep: int = 0, **kwargs):
        hidden = self.backbone(input_ids, attention_mask).last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=self.head(hidden).float())

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def greedy_accuracy(model: CausalLMView, tokenizer, task, held, batch_size: int = 64) -> dict:
    """Held-out accuracy of greedy decoding (the AR counterpart of `mdlm.train.tasks.evaluate`)."""
    prompts, completions = list(held["prompt"]), []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        ids, mask = left_padded(tokenizer, batch)
        width = ids.shape[1]
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=task.max_completion_length,
                             do_sample=False, use_cache=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        completions += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    columns = {k: list(held[k]) for k in task.columns}
    accuracy = task.accuracy(completions, **columns)
    return {"accuracy": sum(accuracy) / len(accuracy), "examples": len(accuracy), "sample": completions[:3]}


class _RewardClock(TrainerCallback):
    """The rollout reward TRL logs at each optimizer step, against rollouts drawn and training wall time (a
    public callback: the trainer itself is not touched)."""

    def __init__(self, rollouts_per_update: float):
        self.rollouts_per_update, self.curve, self.began = rollouts_per_update, [], None

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.curve.append({"rollouts": state.global_step * self.rollouts_per_update,
                               "seconds": time.time() - self.began, "reward": logs["reward"]})


def run_ar_grpo(run: str, task_name: str, output_dir: str, rollouts: int, num_generations: int = 4,
                batch: int = 8, num_iterations: int = 2, learning_rate: float = 3e-5, temperature: float = 1.0,
                seed: int = 0, eval_examples: int = 192) -> dict:
    """TRL's GRPOTrainer (unmodified) on the causal run; held-out greedy accuracy before and after."""
    from trl import GRPOConfig, GRPOTrainer

    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.tasks import get_task

    task = get_task(task_name)
    tokenizer = load_tokenizer(run)
    model = CausalLMView.from_run(run)
    held = task.dataset("test", eval_examples)
    before = greedy_accuracy(model, tokenizer, task, held)
    steps = rollouts * num_iterations // batch
    args = GRPOConfig(output_dir=output_dir, per_device_train_batch_size=batch, num_generations=num_generations,
                      num_iterations=num_iterations, max_steps=steps, learning_rate=learning_rate,
                      temperature=temperature, max_completion_length=task.max_completion_length, beta=0.0,
                      logging_steps=1, save_strategy="no", seed=seed, use_cpu=True, report_to=[], bf16=False,
                      disable_tqdm=True, generation_kwargs={"use_cache": False},
                      gradient_checkpointing=False)  # TRL's default True: our network has no checkpointing
    clock = _RewardClock(batch / num_iterations)
    trainer = GRPOTrainer(model=model, reward_funcs=task.reward, args=args,
                          train_dataset=task.dataset("train", 2000, seed), processing_class=tokenizer,
                          callbacks=[clock])
    began = time.time()
    trainer.train()
    rolled = [r for r in trainer.state.log_history if "reward" in r]
    fifth = max(1, len(rolled) // 5)
    after = greedy_accuracy(model, tokenizer, task, held)
    result = {"accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"], "updates": steps,
              "rollout_reward_first_fifth": sum(r["reward"] for r in rolled[:fifth]) / fifth,
              "rollout_reward_last_fifth": sum(r["reward"] for r in rolled[-fifth:]) / fifth,
              "zero_spread_groups": sum(r.get("frac_reward_zero_std", 0) for r in rolled) / max(1, len(rolled)),
              "train_seconds": time.time() - began, "sample_after": after["sample"], "reward_curve": clock.curve}
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "result.json").write_text(json.dumps(result, indent=1))
    return result
