"""MDPO and CJ-GRPO: the ratio before any update, recorded against recomputed log-probs, the advantage
arithmetic, KL at policy == reference, zero-spread groups, which steps / tokens get loss, bad input, and
2 optimizer steps of each through train/rl.py."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch

from mdlm.train.rl.base import group_advantages, step_logps
from mdlm.train.rl.cj_grpo import CJGRPOConfig, CJGRPOTrainer
from mdlm.train.rl.mdpo import MDPOConfig, MDPOTrainer, mdpo_advantages, over_denoised, select_steps
from tests.test_rl import mean_token_reward, sudoku_setup  # noqa: F401  (fixture)
from tests.test_rl_cli import FAST, sudoku_run  # noqa: F401  (fixture)

ALGOS = {"mdpo": (MDPOConfig, MDPOTrainer, dict(diffusion_steps=6, sample_train_steps=3)),
         "cj-grpo": (CJGRPOConfig, CJGRPOTrainer, dict())}


def _trainer(setup, tmp_path, algorithm, reward=mean_token_reward, **overrides):
    config_cls, trainer_cls, extra = ALGOS[algorithm]
    task, data, tok, model = setup
    options = dict(output_dir=str(tmp_path / "rl"), per_device_train_batch_size=4, num_generations=4,
                   max_completion_length=24, num_iterations=2, max_steps=2, logging_steps=1, learning_rate=3e-3,
                   temperature=0.9, use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True, **extra)
    options.update(overrides)
    return trainer_cls(copy.deepcopy(model), reward, config_cls(**options), data, tok, accuracy_fn=task.accuracy)


def _capture(trainer):
    """Record each generation's trajectory and batch, and each loss call's inputs and current log-probs."""
    seen = {"batches": [], "losses": []}
    statistics, loss = trainer.policy_statistics, trainer._compute_loss

    def spy_statistics(batch):
        out = statistics(batch)
        seen["batches"].append((batch["trajectory"], dict(batch), out, dict(trainer.rollout_context)))
        return out

    def spy_loss(model, inputs):
        with torch.no_grad():
            now, _ = step_logps(model, inputs["prompt_ids"], inputs["prompt_mask"], inputs["step_canvases"],
                                inputs["step_targets"], trainer.mask_token_id, trainer.temperature)
        seen["losses"].append((trainer.iteration_index(), dict(inputs), now))
        return loss(model, inputs)

    trainer.policy_statistics, trainer._compute_loss = spy_statistics, spy_loss
    return seen


def _trained(algorithm, inputs, mask_id):
    if algorithm == "mdpo":
        return inputs["step_drawn"] & inputs["completion_mask"].bool()[:, None]
    return inputs["step_revealed"].bool() & inputs["completion_mask"].bool()[:, None]


def _one_update(sudoku_setup, tmp_path, algorithm):
    """A trainer after one update of one iteration, and what its generation recorded:
    (trajectory, batch, outputs, rollout context)."""
    trainer = _trainer(sudoku_setup, tmp_path, algorithm, max_steps=1, num_iterations=1)
    seen = _capture(trainer)
    trainer.train()
    return trainer, seen["batches"][0]


@pytest.mark.parametrize("algorithm", ["mdpo", "cj-grpo"])
def test_ratio_is_one_before_any_update_kl_zero_then_positive(sudoku_setup, tmp_path, algorithm):
    trainer = _trainer(sudoku_setup, tmp_path, algorithm)
    seen = _capture(trainer)
    trainer.train()
    mask_id = trainer.mask_token_id
    (it0, inputs0, now0), (it1, inputs1, now1) = seen["losses"][:2]
    assert (it0, it1) == (0, 1)
    trained = _trained(algorithm, inputs0, mask_id)
    assert trained.any() and inputs0["advantages"].abs().sum() > 0
    ratio = torch.exp(now0 - inputs0["old_step_logps"])[trained]
    assert torch.equal(ratio, torch.ones_like(ratio))  # exactly 1 on every trained token
    assert torch.equal(inputs0["ref_step_logps"][trained], inputs0["old_step_logps"][trained])
    log = [r for r in trainer.state.log_history if "kl" in r]
    assert log[0]["kl"] == 0.0 and log[1]["kl"] > 0.0
    assert not torch.equal(now1[_trained(algorithm, inputs1, mask_id)],
                           inputs1["old_step_logps"][_trained(algorithm, inputs1, mask_id)])


@pytest.mark.parametrize("algorithm", ["mdpo", "cj-grpo"])
def test_recorded_and_recomputed_logprobs_agree(sudoku_setup, tmp_path, algorithm):
    trainer, (trajectory, batch, out, _) = _one_update(sudoku_setup, tmp_path, algorithm)
    T = batch["completion_ids"].shape[1]
    steps = out["step_index"] if algorithm == "mdpo" else torch.arange(trajectory.num_steps).expand(4, -1)
    recorded = trajectory.logprob[:, :, -T:].permute(1, 0, 2).gather(1, steps[..., None].expand(-1, -1, T))
    revealed = trajectory.revealed[:, :, -T:].permute(1, 0, 2).gather(1, steps[..., None].expand(-1, -1, T))
    assert revealed.sum() > 0
    # float64 at rollout time, float32 in the loss's forward
    torch.testing.assert_close(out["old_step_logps"][revealed].double(), recorded[revealed], rtol=0, atol=2e-5)
    if algorithm == "cj-grpo":
        assert trajectory.num_steps == math.floor(math.log2(T))  # ascending schedule: log2 L steps
        assert torch.equal(out["step_revealed"], trajectory.revealed[:, :, -T:].permute(1, 0, 2))


def test_mdpo_in_blocks_trains_the_drawn_block_only_and_stays_finite(sudoku_setup, tmp_path):
    # 3 blocks of 8: a step draws x0-hat in its block only; the later blocks' masks (x0-hat = the mask
    # token, log p = -inf) are no action. Trained as actions they sent NaN into the weights (SDAR's blocks).
    trainer = _trainer(sudoku_setup, tmp_path, "mdpo", block_length=8, max_steps=1, num_iterations=1)
    seen = _capture(trainer)
    trainer.train()
    _, inputs, _ = seen["losses"][0]
    masked = inputs["step_canvases"] == trainer.mask_token_id
    drawn = inputs["step_drawn"]
    assert drawn.any() and (masked & ~drawn).any() and not (drawn & ~masked).any()
    for row, steps in zip(drawn, masked):
        for step_drawn, step_masked in zip(row, steps):
            first = int(step_masked.nonzero()[0]) // 8 * 8  # the step's block: that of its first mask
            assert torch.equal(step_drawn, step_masked & (torch.arange(24) // 8 == first // 8))
    assert torch.isfinite(inputs["old_step_logps"]).all()
    assert math.isfinite(trainer.state.log_history[0]["loss"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_mdpo_advantage_arithmetic_on_a_hand_made_group():
    # Two groups of G = 2 rollouts over S = 3 steps; the second group scores identically (zero spread).
    R = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.5, 0.5], [0.2, 0.2, 0.2], [0.2, 0.2, 0.2]])
    # A_t = gain + 1 + mean of later rewards (last step: R_S): row 0 (1.75, 2.5, 2.5), row 1 (1.5, 2, 1.5)
    diff = torch.tensor([0.125, 0.25, 0.5])
    std = torch.tensor([0.25, 0.5, 1.0]) / math.sqrt(2)  # unbiased std of two values a, b: |a - b| / sqrt 2
    A = mdpo_advantages(R, 2)
    torch.testing.assert_close(A[0], diff / (std + 1e-4))
    torch.testing.assert_close(A[1], -diff / (std + 1e-4))
    assert torch.equal(A[2:], torch.zeros(2, 3)) and not A.isnan().any()
    assert select_steps(A, 2, 2).tolist() == [[1, 2], [1, 2], [0, 1], [0, 1]]  # largest summed |A|; ties: earlier
    with pytest.raises(ValueError, match="sample_train_steps=4 exceeds the 3"):
        select_steps(A, 2, 4)
    correct = torch.tensor([[False, True, False], [True, True, True], [False, False, False]])
    assert over_denoised(correct).tolist() == [True, False, False]


def test_cj_grpo_advantage_is_reward_minus_group_mean(tmp_path):
    config = CJGRPOConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=6)
    assert config.scale_rewards == "none" and config.unmasking_schedule == "ascending" and config.eoser
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.3, 0.3, 0.3])
    A = group_advantages(rewards, 3, config.scale_rewards)
    torch.testing.assert_close(A, torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("algorithm", ["mdpo", "cj-grpo"])
def test_zero_spread_group_gives_no_nan(sudoku_setup, tmp_path, algorithm):
    def constant(prompts, completions, completion_ids, **kw):
        return [0.5] * len(completions)

    trainer = _trainer(sudoku_setup, tmp_path, algorithm, reward=constant, max_steps=1, num_iterations=1)
    seen = _capture(trainer)
    trainer.train()
    _, inputs, _ = seen["losses"][0]
    assert torch.equal(inputs["advantages"], torch.zeros_like(inputs["advantages"]))
    record = trainer.state.log_history[0]
    assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def _grads(trainer, inputs):
    model = trainer.model
    trainer.current_gradient_accumulation_steps = 1
    model.zero_grad()
    trainer._compute_loss(model, dict(inputs)).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("algorithm", ["mdpo", "cj-grpo"])
def test_only_the_trained_steps_and_tokens_get_loss(sudoku_setup, tmp_path, algorithm):
    trainer, (trajectory, batch, out, context) = _one_update(sudoku_setup, tmp_path, algorithm)
    inputs = {**batch, **out}
    inputs.pop("trajectory")
    mask_id, T = trainer.mask_token_id, batch["completion_ids"].shape[1]
    if algorithm == "mdpo":
        # the batch carries exactly the k steps of largest summed |A| of the group, and their canvases
        step_rewards, _ = trainer.step_rewards(trajectory, T, context["prompts"], context["columns"])
        expected = select_steps(mdpo_advantages(step_rewards, 4), 4, 3)
        assert torch.equal(out["step_index"], expected)
        canvases = trajectory.canvases[:, :, -T:].permute(1, 0, 2)
        assert torch.equal(out["step_canvases"], canvases.gather(1, expected[..., None].expand(-1, -1, T)))
    trained = _trained(algorithm, inputs, mask_id)
    assert trained.any() and (~trained).any()
    # a completion that ends early: tokens after its EOS are not trained
    inputs["completion_mask"] = inputs["completion_mask"].clone()
    inputs["completion_mask"][0, 12:] = 0
    trained = _trained(algorithm, inputs, mask_id)
    assert not trained[0, :, 12:].any()
    base = _grads(trainer, inputs)
    old = inputs["old_step_logps"]
    perturbed = dict(inputs, old_step_logps=torch.where(trained, old, old - 3.0))
    assert torch.equal(_grads(trainer, perturbed), base)  # untrained steps' / tokens' log-probs: no effect
    perturbed = dict(inputs, old_step_logps=torch.where(trained, old - 3.0, old))
    assert not torch.equal(_grads(trainer, perturbed), base)


def test_bad_input(tmp_path):
    base = dict(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=8, max_completion_length=24)
    with pytest.raises(ValueError, match="sample_train_steps=9 must be between 1 and the 6"):
        MDPOConfig(**base, diffusion_steps=6, sample_train_steps=9)
    with pytest.warns(UserWarning, match="ascending step-size schedule"):
        config = CJGRPOConfig(**{**base, "per_device_train_batch_size": 6}, unmasking_schedule="uniform",
                              diffusion_steps=6)
    assert config.decode_config().schedule == "uniform"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        CJGRPOConfig(**{**base, "per_device_train_batch_size": 6})
    with pytest.raises(ValueError, match="ascending schedule fixes its own step count"):
        CJGRPOConfig(**{**base, "per_device_train_batch_size": 6}, diffusion_steps=12)
    from mdlm.train.rl.diffu_grpo import DiffuGRPOConfig

    for config_cls, size in ((MDPOConfig, 8), (CJGRPOConfig, 6), (DiffuGRPOConfig, 6)):
        with pytest.raises(ValueError, match="block_length=5 does not divide max_completion_length=24"):
            config_cls(**{**base, "per_device_train_batch_size": size}, block_length=5)


@pytest.mark.parametrize("algorithm", ["mdpo", "cj-grpo"])
def test_two_optimizer_steps_through_train_rl_py(sudoku_run, tmp_path, algorithm):
    from transformers import AutoModelForMaskedLM

    from mdlm import MDLMForMaskedLM
    from mdlm.train.rl.cli import main

    out = tmp_path / algorithm
    i = FAST.index("--diffusion-steps")
    fast = FAST[:i] + FAST[i + 2:]  # CJ-GRPO's ascending schedule fixes its own step count
    extra = ["--diffusion-steps", "4", "--sample-train-steps", "2"] if algorithm == "mdpo" else []
    main(["--algorithm", algorithm, "--task", "sudoku", "--model", str(sudoku_run), "--output-dir", str(out),
          "--max-steps", "2", "--save-steps", "2", *fast, *extra])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"reward", "reward_std", "kl", "entropy", "accuracy", "loss"} <= set(records[0])
    assert json.loads((out / "eval.json").read_text())["steps"] == 2
    assert isinstance(AutoModelForMaskedLM.from_pretrained(out), MDLMForMaskedLM)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["mdpo", "cj-grpo"])
def test_two_processes_train_one_model(sudoku_run, tmp_path, algorithm):
    """torchrun with 2 processes (gloo on CPU): a group of G = 4 split 2 + 2, its advantages (MDPO: the
    per-step ones and the chosen steps) computed over the whole group."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "train" / "rl.py"
    out = tmp_path / "rl"
    extra = ["--diffusion-steps", "4", "--sample-train-steps", "2"] if algorithm == "mdpo" else []
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
               "--algorithm", algorithm, "--task", "sudoku", "--model", str(sudoku_run), "--output-dir", str(out),
               "--max-steps", "2", "--num-generations", "4", "--per-device-train-batch-size", "2",
               "--num-iterations", "1", "--train-examples", "8", "--eval-examples", "4", "--no-progress",
               "--save-steps", "2", *extra]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[0]["rollouts"] == 4
