"""The RL controls: SFT with another objective (as-arm, ar), the causal view TRL's unmodified GRPOTrainer
trains, and rejection-sampling finetuning's filter."""

from __future__ import annotations

import json

import pytest
import torch

from mdlm import MDLMForMaskedLM
from mdlm.train.tasks import Task, get_task
from tests.conftest import save_untrained_sudoku_run


@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory):
    return save_untrained_sudoku_run(tmp_path_factory.mktemp("sft") / "run")


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory):
    folder = save_untrained_sudoku_run(tmp_path_factory.mktemp("ar") / "run")
    model = MDLMForMaskedLM.from_pretrained(folder)
    model.config.attention, model.config.objective = "causal", "ar"
    model.save_pretrained(folder)
    return folder


def test_sft_with_the_as_arm_objective_saves_an_as_arm_run(sudoku_run, tmp_path):
    from mdlm.train.rl.sft_objectives import finetune_with_objective

    out = finetune_with_objective({"task": "sudoku", "model": str(sudoku_run), "max_steps": 2, "batch_size": 4,
                                   "output_dir": str(tmp_path / "asarm"), "eval_every": 2, "eval_batches": 1},
                                  "as-arm")
    config = json.loads((out / "config.json").read_text())
    assert (config["objective"], config["attention"]) == ("as-arm", "bidirectional")
    before = MDLMForMaskedLM.from_pretrained(sudoku_run).state_dict()
    after = MDLMForMaskedLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    with pytest.raises(ValueError, match="from scratch"):
        finetune_with_objective({"task": "sudoku", "model": str(sudoku_run), "output_dir": str(tmp_path / "x")}, "ar")
    with pytest.raises(ValueError, match="choose one of as-arm, ar"):
        finetune_with_objective({"task": "sudoku", "output_dir": str(tmp_path / "y")}, "mdlm")


def test_the_causal_view_is_the_network_with_the_mask_token_impossible(causal_run):
    from mdlm.train.rl.ar_control import CausalLMView

    view = CausalLMView.from_run(str(causal_run))
    network = MDLMForMaskedLM.from_pretrained(causal_run)
    ids = torch.randint(5, 100, (2, 10))
    valid = torch.ones_like(ids)
    logits = view(ids, attention_mask=valid).logits
    expected = network(ids, attention_mask=valid.bool()).logits
    mask_id = view.config.mask_token_id
    keep = torch.arange(logits.shape[-1]) != mask_id
    torch.testing.assert_close(logits[..., keep], expected[..., keep], rtol=1e-5, atol=1e-5)
    assert (torch.softmax(logits, -1)[..., mask_id] == 0).all()
    # left padding: a padded row scores its tokens as the row alone does
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[:1]], 1)
    alone = view(ids[:1], attention_mask=valid[:1]).logits
    both = view(padded, attention_mask=torch.cat([torch.zeros(1, 3, dtype=torch.long), valid[:1]], 1)).logits
    torch.testing.assert_close(both[:, 3:], alone, rtol=1e-5, atol=1e-5)
    bidirectional = save_untrained_sudoku_run(causal_run.parent / "bidirectional")
    with pytest.raises(ValueError, match="causal run"):
        CausalLMView.from_run(str(bidirectional))


def test_trl_grpo_trainer_trains_the_causal_view(causal_run, tmp_path):
    from mdlm.train.rl.ar_control import run_ar_grpo

    result = run_ar_grpo(str(causal_run), "sudoku", str(tmp_path / "ar"), rollouts=8, num_generations=2, batch=4,
                         eval_examples=4)
    assert result["updates"] == 4 and 0 <= result["accuracy_after"] <= 1
    assert json.loads((tmp_path / "ar" / "result.json").read_text())["updates"] == 4


def test_rejection_sampling_keeps_only_distinct_successes(sudoku_run):
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.rl.rft import sample_successes

    sudoku = get_task("sudoku")
    # The real decoder and tokenizer; "correct" here: the completion holds a digit (an untrained model solves nothing).
    task = Task("digits", sudoku.dataset, sudoku.reward, lambda completions, **kw: [
        float(any(ch.isdigit() for ch in c)) for c in completions], ("puzzle", "answer"), 24)
    model, tok = MDLMForMaskedLM.from_pretrained(sudoku_run), load_tokenizer(sudoku_run)
    data = sudoku.dataset("train", 6, 0)
    kept, drawn = sample_successes(model, tok, task, data, 3, 24, 1.0, 12, seed=0)
    assert drawn == 18 and 0 < len(kept) <= 18
    assert all(any(ch.isdigit() for ch in row["response"]) for row in kept)
    assert len({(row["prompt"], row["response"]) for row in kept}) == len(kept)
    assert {row["prompt"] for row in kept} <= set(data["prompt"])
