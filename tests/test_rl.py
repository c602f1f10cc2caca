"""RL base and diffu-GRPO: recorded trajectories against an independent forward pass, the importance
ratio before any update, group advantages, KL to the reference, no loss after EOS, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.decode.config import DecodeConfig
from mdlm.decode.denoiser import default_position_ids
from mdlm.tokenizer import train_tokenizer
from mdlm.train.rl.base import completion_mask_of, group_advantages, rollout, score_rewards
from mdlm.train.tasks import get_task


@pytest.fixture(scope="module")
def sudoku_setup():
    task = get_task("sudoku")
    data = task.dataset("train", 64, seed=3)
    tok = train_tokenizer(list(data["prompt"]) + list(data["answer"]), vocab_size=260)
    config = MDLMConfig.from_preset("tiny", vocab_size=len(tok), mask_token_id=tok.mask_token_id,
                                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return task, data, tok, MDLMForMaskedLM(config)


def _prompts(tok, texts):
    rows = tok(list(texts), add_special_tokens=False)["input_ids"]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


@pytest.mark.parametrize("config", [
    DecodeConfig(steps=8, block_length=8, temperature=0.7),
    DecodeConfig(schedule="ascending", eoser=True, temperature=1.3),
    DecodeConfig(steps=6, remasking="rcr", block_length=12, temperature=0.9),
], ids=["blocks", "ascending-eoser", "rcr"])
def test_recorded_logprobs_equal_an_independent_forward_pass(sudoku_setup, config):
    _, data, tok, model = sudoku_setup
    model.eval()
    ids, mask = _prompts(tok, data["prompt"][:3])  # prompts of different lengths: left padding
    generator = torch.Generator().manual_seed(5)
    out = rollout(model, ids, mask, 24, config, tok.eos_token_id, generator, record=True, keep_x0=True)
    trajectory = out.trajectory
    S, B, L = trajectory.canvases.shape
    assert (B, L) == (3, ids.shape[1] + 24) and trajectory.x0.shape == (S, B, L)
    valid = torch.cat([mask.bool(), torch.ones(B, 24, dtype=torch.bool)], 1)
    total = 0
    for s in range(S):
        canvas, after, revealed = trajectory.canvases[s], trajectory.after(s), trajectory.revealed[s]
        assert (canvas[revealed] == model.config.mask_token_id).all()
        with torch.no_grad():
            logits = model(canvas[None].squeeze(0), attention_mask=valid,
                           position_ids=default_position_ids(valid)).logits
        expected = torch.log_softmax(logits.double() / config.temperature, -1).gather(-1, after[..., None])[..., 0]
        torch.testing.assert_close(trajectory.logprob[s][revealed], expected[revealed], rtol=0, atol=1e-9)
        assert (trajectory.logprob[s][~revealed] == 0).all()
        total += int(revealed.sum())
    assert total >= B * 24  # every completion position was revealed at least once (more under RCR)
    assert torch.equal(trajectory.final[:, -24:], out.completion_ids)


def test_completion_mask_stops_after_the_first_eos():
    eos = 9
    ids = torch.tensor([[1, 2, eos, 3, eos], [1, 2, 3, 4, 5], [eos, 1, 1, 1, 1]])
    assert completion_mask_of(ids, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_group_advantages_on_a_hand_made_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4)
    advantages = group_advantages(rewards, 4)
    torch.testing.assert_close(advantages[:4], expected)
    assert torch.equal(advantages[4:], torch.zeros(4)) and not advantages.isnan().any()
    assert group_advantages(rewards, 4, "none").tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(rewards, 1)
    # the filtered half: the better-than-average draws keep their advantage, the others get 0
    torch.testing.assert_close(group_advantages(rewards, 4, positive_only=True)[:4],
                               expected.clamp(min=0))


def test_positive_advantages_only_is_a_switch_of_mdlm_rl():
    from mdlm.train.rl.cli import build_parser, resolve_options

    given = vars(build_parser().parse_args(["--task", "sudoku", "--model", "runs/x", "--positive-advantages-only"]))
    _, options, config_cls, _ = resolve_options(given)
    assert options["positive_advantages_only"] is True
    assert "positive_advantages_only" not in vars(build_parser().parse_args(["--task", "sudoku"]))  # default: off
    assert config_cls.__dataclass_fields__["positive_advantages_only"].default is False


def test_reward_functions_that_misbehave_are_named():
    def raises(prompts, completions, completion_ids, **kw):
        raise KeyError("oops")

    def gives_nan(prompts, completions, completion_ids, **kw):
        return [float("nan")] * len(completions)

    def too_few(prompts, completions, completion_ids, **kw):
        return [1.0]

    for fn, message in ((raises, "raises.*KeyError"), (gives_nan, "gives_nan.*nan"), (too_few, "too_few.*1 values")):
        with pytest.raises((ValueError, RuntimeError), match=message):
            score_rewards([fn], ["p", "q"], ["a", "b"], [[1], [2]], {})


def _trainer(sudoku_setup, tmp_path, reward, **overrides):
    import copy

    from mdlm.train.rl.diffu_grpo import DiffuGRPOConfig, DiffuGRPOTrainer

    task, data, tok, model = sudoku_setup
    options = dict(output_dir=str(tmp_path / "rl"), per_device_train_batch_size=4, num_generations=4,
                   max_completion_length=24, num_iterations=2, max_steps=2, logging_steps=1, learning_rate=3e-3,
                   use_cpu=True, save_strategy="no", diffusion_steps=6, seed=0, disable_tqdm=True)
    options.update(overrides)
    return DiffuGRPOTrainer(copy.deepcopy(model), reward, DiffuGRPOConfig(**options), data, tok,
                            accuracy_fn=task.accuracy)


def mean_token_reward(prompts, completions, completion_ids, **kw):
    # A reward that varies within a group even for a random model: the mean token id.
    return [sum(ids) / max(1, len(ids)) / 260 for ids in completion_ids]


def test_building_a_trainer_is_quiet_about_special_tokens(sudoku_setup, tmp_path, capfd):
    # TRL aligns the model's generation config to the tokenizer and warns about each id it had to add;
    # the trainer gives the model every id the tokenizer defines, so a user sees no such warning.
    trainer = _trainer(sudoku_setup, tmp_path, mean_token_reward)
    _, _, tok, _ = sudoku_setup
    assert trainer.model.generation_config.bos_token_id == tok.bos_token_id
    assert "PAD/BOS/EOS" not in capfd.readouterr().err


def test_ratio_is_one_before_any_update_and_kl_grows_after(sudoku_setup, tmp_path):
    trainer = _trainer(sudoku_setup, tmp_path, mean_token_reward)
    seen = []
    original = type(trainer)._compute_loss

    def spy(self, model, inputs):
        it = self.iteration_index()
        old = inputs["old_per_token_logps_all"][:, it]
        ref = inputs["ref_per_token_logps_all"][:, it]
        noise = inputs["prompt_noise"][:, it]
        self._prompt_noise = noise
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        with torch.no_grad():
            now, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention,
                                                                 inputs["completion_ids"].shape[1])
        seen.append((it, old, ref, now, inputs["completion_mask"].bool(), inputs["advantages"]))
        return original(self, model, inputs)

    trainer._compute_loss = spy.__get__(trainer)
    trainer.train()
    (it0, old0, ref0, now0, mask0, adv0), (it1, old1, ref1, now1, mask1, _) = seen
    assert (it0, it1) == (0, 1)
    assert adv0.abs().sum() > 0  # the rewards varied, so the update moved the policy
    ratio = torch.exp(now0 - old0)[mask0]
    assert torch.equal(ratio, torch.ones_like(ratio))  # exactly 1 on every trained token
    assert torch.equal(ref0[mask0], old0[mask0])  # policy == reference before the update
    log = [r for r in trainer.state.log_history if "kl" in r]
    assert log[0]["kl"] == 0.0 and log[1]["kl"] > 0.0
    assert not torch.equal(now1[mask1], old1[mask1])  # the second pass sees the updated policy


def test_tokens_after_eos_carry_no_loss(sudoku_setup, tmp_path):
    trainer = _trainer(sudoku_setup, tmp_path, mean_token_reward, num_iterations=1)
    tok = sudoku_setup[2]
    ids, mask = _prompts(tok, sudoku_setup[1]["prompt"][:4])
    completion = torch.randint(5, 200, (4, 24))
    completion[:, 10] = tok.eos_token_id
    completion_mask = completion_mask_of(completion, tok.eos_token_id)
    batch = {"prompt_ids": ids, "prompt_mask": mask, "completion_ids": completion,
             "completion_mask": completion_mask, "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5]),
             "num_items_in_batch": completion_mask.sum()}
    with torch.no_grad():
        batch.update(trainer.policy_statistics(batch))
    model = trainer.model
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train; here the loss runs alone

    def grads(inputs):
        model.zero_grad()
        trainer._compute_loss(model, dict(inputs)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    base = grads(batch)
    perturbed = dict(batch)
    old = batch["old_per_token_logps_all"].clone()
    old[:, :, 11:] -= 3.0  # the old policy's log-probs after EOS: no effect on the loss
    perturbed["old_per_token_logps_all"] = old
    assert torch.equal(grads(perturbed), base)
    old = batch["old_per_token_logps_all"].clone()
    old[:, :, 5] -= 3.0  # before EOS: changes the loss
    perturbed["old_per_token_logps_all"] = old
    assert not torch.equal(grads(perturbed), base)


def test_a_group_needs_two_completions(tmp_path):
    from mdlm.train.rl.diffu_grpo import DiffuGRPOConfig

    with pytest.raises(ValueError, match="at least 2"):
        DiffuGRPOConfig(output_dir=str(tmp_path), num_generations=1, per_device_train_batch_size=2, use_cpu=True)


def test_a_model_without_a_mask_token_is_refused(sudoku_setup):
    _, data, tok, model = sudoku_setup
    import copy

    bare = copy.deepcopy(model)
    bare.config.mask_token_id = None
    ids, mask = _prompts(tok, data["prompt"][:2])
    with pytest.raises(ValueError, match="no mask token"):
        rollout(bare, ids, mask, 8, DecodeConfig(), tok.eos_token_id)


def test_a_completion_that_does_not_fit_names_the_numbers(sudoku_setup):
    _, data, tok, model = sudoku_setup
    ids, mask = _prompts(tok, data["prompt"][:2])
    with pytest.raises(ValueError, match=rf"{ids.shape[1]} tokens.*max_completion_length=60.*context of 64"):
        rollout(model, ids, mask, 60, DecodeConfig(), tok.eos_token_id)


@pytest.mark.parametrize("algorithm, steps, options, min_gain", [
    ("diffu-grpo", 30, dict(num_iterations=2, diffusion_steps=6), 0.15),
    ("mdpo", 30, dict(num_iterations=1, diffusion_steps=6, sample_train_steps=4), 0.3),
    ("cj-grpo", 30, dict(num_iterations=2), 0.05),
])
def test_each_trainer_raises_a_reward_that_is_easy_to_learn(sudoku_setup, tmp_path, algorithm, steps, options,
                                                            min_gain):
    """The arithmetic tests cannot see a policy gradient with the wrong sign or the advantages paired with
    the wrong rows: the training reward must rise. The reward (mean token id) varies in every group even for
    a random model; from one untrained start, 30 updates at lr 3e-3 (measured gains: diffu-GRPO 0.50 ->
    0.74, MDPO 0.51 -> 0.92, CJ-GRPO, whose few ascending steps reveal most tokens late, 0.48 -> 0.57)."""
    import copy

    from mdlm.train.rl import ALGORITHMS

    task, data, tok, model = sudoku_setup
    config_class, trainer_class = ALGORITHMS[algorithm]()
    args = config_class(output_dir=str(tmp_path / algorithm), per_device_train_batch_size=16, num_generations=4,
                        max_completion_length=24, max_steps=steps, logging_steps=2, learning_rate=3e-3,
                        use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True, report_to=[], **options)
    trainer = trainer_class(copy.deepcopy(model), mean_token_reward, args, data, tok, accuracy_fn=task.accuracy)
    trainer.train()
    rewards = [r["reward"] for r in trainer.state.log_history if "reward" in r]
    assert sum(rewards[-3:]) / 3 >= rewards[0] + min_gain, rewards
