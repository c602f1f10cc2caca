"""RL on any family (`mdlm-rl --model <family folder> [--lora-r N]`): tiny checkpoints in the published
layout of LLaDA, Dream and SDAR (native implementations) train through their trainable denoiser; before the
first update the policy's log-probabilities equal the recorded old ones exactly (ratio 1); with LoRA the
reference is the adapter-disabled base (no copy) and the saved folder holds merged weights that load back."""

from __future__ import annotations

import json

import pytest
import torch

import mdlm.train.rl.base as rl_base
from mdlm.train.rl.cli import main
from tests.family_models import write_published_checkpoint

# 4 denoising steps: SDAR's 4-token blocks split 8 completion tokens after a prompt into up to 3 blocks
EXTRA = {"diffu-grpo": ["--diffusion-steps", "4"], "mdpo": ["--diffusion-steps", "4", "--sample-train-steps", "2"],
         "cj-grpo": []}


def rl_run(tmp_path, family, algorithm, *extra):
    folder = write_published_checkpoint(tmp_path / family, family)
    out = tmp_path / f"rl-{algorithm}"
    main(["--algorithm", algorithm, "--task", "sudoku", "--model", str(folder), "--output-dir", str(out),
          "--max-steps", "2", "--num-generations", "2", "--per-device-train-batch-size", "2",
          "--max-completion-length", "8", "--train-examples", "4", "--eval-examples", "2", "--no-eval-before",
          "--no-progress", "--num-iterations", "1", "--save-steps", "10", "--beta", "0.04", *EXTRA[algorithm], *extra])
    return folder, out


def spy_forward(monkeypatch):
    """Every policy / reference forward of the trainers: (ids, valid, logits, with grad)."""
    calls, forward = [], rl_base.training_logits

    def spy(model, ids, valid, positions=None, at=None):
        logits = forward(model, ids, valid, positions, at)
        calls.append((ids.clone(), valid.clone(), logits.detach().clone(), torch.is_grad_enabled()))
        return logits

    monkeypatch.setattr(rl_base, "training_logits", spy)
    return calls


FAMILY_ALGORITHMS = [("llada", "diffu-grpo"), pytest.param("dream", "mdpo", marks=pytest.mark.slow),
                     pytest.param("sdar", "cj-grpo", marks=pytest.mark.slow)]


@pytest.mark.parametrize("family,algorithm", FAMILY_ALGORITHMS)
def test_the_ratio_is_exactly_one_before_the_first_update_and_lora_saves_merged_weights(tmp_path, monkeypatch,
                                                                                        family, algorithm):
    from safetensors.torch import load_file

    from mdlm.decode.loading import load_denoiser

    calls = spy_forward(monkeypatch)
    folder, out = rl_run(tmp_path, family, algorithm, "--lora-r", "4")
    first_update = next(i for i, call in enumerate(calls) if call[3])
    recorded = calls[:first_update]  # old (and reference) log-probs, at rollout time, without grad
    ids, valid, logits, _ = calls[first_update]
    matched = 0
    for row in range(ids.shape[0]):
        for old_ids, old_valid, old_logits, _ in recorded:
            same = ((old_ids == ids[row]).all(-1) & (old_valid == valid[row]).all(-1)).nonzero()
            if len(same):
                assert torch.equal(old_logits[same[0, 0]], logits[row])  # ratio exp(new - old) is exactly 1
                matched += 1
                break
    assert matched == ids.shape[0]
    base, tuned = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
    assert tuned.keys() == base.keys() and (out / "adapter" / "adapter_config.json").is_file()
    denoiser, _, profile = load_denoiser(out)
    assert profile.name == family and json.loads((out / "eval.json").read_text())["steps"] == 2


def test_a_lora_policy_has_no_second_copy_for_its_reference(tmp_path):
    from mdlm.train.rl.cli import load_policy
    from mdlm.trainable import AdapterDisabled

    folder = write_published_checkpoint(tmp_path / "llada", "llada")
    policy, _ = load_policy(str(folder), lora_r=4)
    reference = rl_base.make_reference(policy)
    assert isinstance(reference, AdapterDisabled) and reference.peft_model is policy
    full, _ = load_policy(str(folder))
    copy = rl_base.make_reference(full)
    assert copy is not full and all(not p.requires_grad for p in copy.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
@pytest.mark.parametrize("algorithm", ["diffu-grpo", "mdpo", "cj-grpo"])
@pytest.mark.parametrize("lora", [True, False])
def test_two_rl_steps_of_each_algorithm_with_and_without_lora(tmp_path, family, algorithm, lora):
    _, out = rl_run(tmp_path, family, algorithm, *(["--lora-r", "4"] if lora else []))
    assert json.loads((out / "eval.json").read_text())["steps"] == 2
    assert (out / "adapter").exists() == lora
