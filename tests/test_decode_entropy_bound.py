"""Entropy-bound remasking (EB sampler, Ben-Hamu et al. 2025, arXiv 2505.24857) on masked models:
gamma = 0 is low-entropy-first decoding at one token per step, token for token; a larger gamma commits,
at every step, the longest lowest-entropy prefix whose summed minus largest entropy is <= gamma."""

from __future__ import annotations

import json

import pytest
import torch

from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.decode import DecodeConfig, decode

MASK = 39


def tiny_model(attention: str) -> MDLMForMaskedLM:
    torch.manual_seed(0)
    config = MDLMConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, mask_token_id=MASK, eos_token_id=1, attention=attention,
                        block_size=4)
    return MDLMForMaskedLM(config).eval()


def padded_batch():
    """Two rows, prompts of different lengths (the second left-padded)."""
    canvas = torch.full((2, 20), MASK)
    canvas[0, :5] = torch.arange(5) + 2
    canvas[1, :4] = 7
    valid = torch.ones_like(canvas, dtype=torch.bool)
    valid[1, :2] = False
    return canvas, valid


@pytest.mark.parametrize("attention, block_length", [("bidirectional", None), ("bidirectional", 5),
                                                      ("block-causal", None)])
def test_a_bound_of_zero_is_entropy_ordered_decoding_one_token_per_step(attention, block_length):
    model, (canvas, valid) = tiny_model(attention), padded_batch()
    options = dict(block_length=block_length, seed=3, trace=True, temperature=0.8)
    bounded = decode(model, canvas, DecodeConfig(remasking="entropy-bound", entropy_bound=0.0, **options), valid=valid)
    by_entropy = decode(model, canvas, DecodeConfig(remasking="entropy", **options), valid=valid)
    assert torch.equal(bounded.tokens, by_entropy.tokens) and bounded.nfe == by_entropy.nfe
    assert len(bounded.trace) == len(by_entropy.trace) >= 16  # one step per token (the longest row has 16)
    for ours, theirs in zip(bounded.trace, by_entropy.trace):
        assert torch.equal(ours.revealed, theirs.revealed)
        assert (ours.revealed.sum(-1) <= 1).all()


def test_a_larger_bound_reveals_the_longest_lowest_entropy_prefix_within_it():
    model, (canvas, valid) = tiny_model("bidirectional"), padded_batch()
    for bound in (5.0, 12.0):  # the random model's entropies are near log 40 = 3.7 nats
        result = decode(model, canvas, DecodeConfig(remasking="entropy-bound", entropy_bound=bound, block_length=8,
                                                    seed=1, trace=True), valid=valid)
        assert not (result.tokens == MASK).any()
        several = 0
        for step in result.trace:
            entropy = -step.confidence.log()  # the policy's score is exp(-H); -inf (no candidate) -> inf
            for row in range(2):
                candidates = torch.isfinite(step.confidence[row])
                if not candidates.any():
                    continue
                revealed = entropy[row][step.revealed[row]]
                assert len(revealed) >= 1
                assert float(revealed.sum() - revealed.max()) <= bound + 1e-12  # never violates the bound
                rest = entropy[row][candidates & ~step.revealed[row]]
                if len(rest):  # the longest such prefix: the next lowest entropy would break the bound
                    nxt = rest.min()
                    assert nxt >= revealed.max()
                    assert float(revealed.sum() + nxt - torch.maximum(revealed.max(), nxt)) > bound
                several += len(revealed) > 1
        assert several > 0  # the bound let some step reveal more than one token
        assert len(result.trace) < 16


def test_entropy_bound_is_reachable_from_the_command_line_and_the_lm_eval_adapter(tiny_run_dir, capsys):
    from mdlm.decode.cli import main
    from mdlm.eval.adapter import decode_arg_names

    assert "entropy_bound" in decode_arg_names() and "remasking" in decode_arg_names()
    code = main(["--model", str(tiny_run_dir), "--prompt", "def f(", "--max-new-tokens", "12", "--remasking",
                 "entropy-bound", "--entropy-bound", "20", "--format", "jsonl", "--seed", "0", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert 1 <= json.loads(out.out.splitlines()[0])["nfe"] < 12
    assert main(["--model", str(tiny_run_dir), "--prompt", "x", "--remasking", "entropy-bound",
                 "--entropy-bound", "-1"]) == 2
    assert "entropy_bound must be a finite number >= 0" in capsys.readouterr().err
