"""Supervised finetuning: batches (prompt fixed, EOS padding), the loss never masks nor scores the prompt,
a tiny run lowers the response loss, resumes exactly, and bad input gets clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mdlm import MDLMForMaskedLM
from mdlm.train.sft import PromptResponseData, SFTArgs, finetune, local_pairs, main, tokenize_pairs
from mdlm.train.trainer import objective_loss_fn


def test_batches_fix_the_prompt_and_pad_with_eos():
    data = PromptResponseData([[5, 6, 7], [8]], [[9], [10, 11]], eos_id=2)
    batch = data[[0, 1]]
    assert batch["input_ids"].shape == (2, 8)  # longest row (5) rounded up to a multiple of 8
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 9, 2, 2, 2, 2]
    assert batch["input_ids"][1].tolist() == [8, 10, 11, 2, 2, 2, 2, 2]
    assert batch["fixed"][0].tolist() == [True] * 3 + [False] * 5
    assert batch["fixed"][1].tolist() == [True] + [False] * 7


def test_pairs_that_do_not_fit_are_dropped(stdlib_tokenizer):
    data, dropped = tokenize_pairs([("a", "b"), ("x " * 50, "y"), ("p", "")], stdlib_tokenizer, seq_len=16)
    assert (len(data), dropped) == (1, 2)


@pytest.mark.parametrize("loss", ["t-dce", "lambda-dce", "k-dce"])
def test_the_prompt_is_never_masked_nor_scored(tiny_model, loss):
    torch.manual_seed(0)
    data = PromptResponseData([list(range(10, 30))] * 4, [list(range(40, 50))] * 4, eos_id=tiny_model.config.eos_token_id)
    batch = data[[0, 1, 2, 3]]
    seen = []

    def capture(_module, args, kwargs, output):
        seen.append(args[0].clone() if args else kwargs["input_ids"].clone())
        output.logits.retain_grad()
        seen.append(output.logits)

    handle = tiny_model.register_forward_hook(capture, with_kwargs=True)
    generator = torch.Generator().manual_seed(0)
    try:
        for step in range(20):
            out = objective_loss_fn("mdlm", loss)(tiny_model, batch, generator, step)
            tiny_model.zero_grad()
            out.loss.backward()
            noisy, logits = seen[-2], seen[-1]
            prompt = batch["fixed"]
            assert not (noisy[prompt] == tiny_model.config.mask_token_id).any()
            assert (logits.grad[prompt] == 0).all()  # the prompt's predictions do not enter the loss
            assert out.num_tokens == (~prompt).sum()  # response + EOS padding are the scored tokens
            assert (noisy[~prompt] == tiny_model.config.mask_token_id).any() or loss == "lambda-dce"
    finally:
        handle.remove()
        tiny_model.zero_grad()


def _pairs_file(tmp_path):
    rows = [{"question": f"x = {i} ; y =", "answer": f" {i} + {i} = {2 * i}"} for i in range(200)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(run_dir, data, out, **kw):
    return {**dict(init_from=str(run_dir), data=str(data), prompt_column="question", response_column="answer",
                   output_dir=str(out), batch_size=8, lr=3e-3, warmup_steps=5, ema=0, eval_every=20, eval_batches=4,
                   save_every=10, log_every=10, progress=False), **kw}


def test_local_pairs_split_and_column_errors(tmp_path):
    path = _pairs_file(tmp_path)
    train, held = local_pairs(path, "question", "answer")
    assert len(train) + len(held) == 200 and held and not set(train) & set(held)
    with pytest.raises(ValueError, match="no column.*'prompt'.*--prompt-column"):
        local_pairs(path, "prompt", "answer")


@pytest.mark.slow
def test_tiny_sft_lowers_the_response_loss_and_resumes_exactly(tmp_path, tiny_run_dir):
    data = _pairs_file(tmp_path)
    straight = finetune(_args(tiny_run_dir, data, tmp_path / "straight", max_steps=40))
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_nats_per_token"] for r in records if "val_nats_per_token" in r]
    assert val[-1] < 0.8 * val[0], val
    finetune(_args(tiny_run_dir, data, tmp_path / "resumed", max_steps=40, stop_at_step=20))
    state = json.loads((tmp_path / "resumed" / "trainer_state.json").read_text())
    assert state["step"] == 20 and not state["finished"]
    resumed = finetune(_args(tiny_run_dir, data, tmp_path / "resumed", max_steps=40, resume="latest"))
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    MDLMForMaskedLM.from_pretrained(resumed)  # the finetuned run loads for use


def test_tiny_sft_lowers_the_response_loss_and_resumes_exactly_in_few_steps(tmp_path, tiny_run_dir):
    """The fast sibling of the test above: 6 steps, killed at 3 (after the checkpoint at 2)."""
    data = _pairs_file(tmp_path)
    short = dict(max_steps=6, eval_every=6, save_every=2, eval_batches=2, batch_size=4, warmup_steps=1)
    straight = finetune(_args(tiny_run_dir, data, tmp_path / "straight", **short))
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_nats_per_token"] for r in records if "val_nats_per_token" in r]
    assert len(val) == 2 and val[-1] < val[0], val
    finetune(_args(tiny_run_dir, data, tmp_path / "resumed", stop_at_step=3, **short))
    resumed = finetune(_args(tiny_run_dir, data, tmp_path / "resumed", resume="latest", **short))
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_gets_clear_errors(tmp_path, tiny_run_dir, capsys):
    with pytest.raises(ValueError, match="--model is required"):
        finetune(SFTArgs(task="signatures"))
    with pytest.raises(ValueError, match="exactly one of --data"):
        finetune(SFTArgs(init_from=str(tiny_run_dir)))
    with pytest.raises(ValueError, match="not a run folder"):
        finetune(SFTArgs(init_from=str(tmp_path), task="signatures"))
    with pytest.raises(SystemExit):
        main(["--init-from", str(tiny_run_dir), "--data", str(_pairs_file(tmp_path)), "--output-dir",
              str(tmp_path / "o"), "--max-steps", "1", "--no-progress"])
    assert "no column(s) ['prompt', 'response']" in capsys.readouterr().err


def test_a_curve_ends_where_its_recipe_stops(tmp_path):
    """`--stop-at-step` is the model a recipe hands on (here step 4 of a 10-step schedule): the curve
    evaluates up to it and no further."""
    import json

    from mdlm.train.tasks.curve import main as curve_main

    out = tmp_path / "curve.json"
    curve_main(["--task", "sudoku", "--every", "2", "--out", str(out), "--", "--preset", "tiny", "--max-steps", "10",
                "--stop-at-step", "4", "--batch-size", "4", "--max-examples", "64", "--eval-every", "100",
                "--output-dir", str(tmp_path / "run")])
    record = json.loads(out.read_text())
    assert [point["step"] for point in record["curve"]] == [2, 4]
