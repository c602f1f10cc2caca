"""First-hitting asks the network for logits at the one position it reveals per row (`at=`), and that
changes no token: the same seed gives the same tokens, log-probabilities and trace as drawing from the
full (B, L, V) logits of the same network."""

from __future__ import annotations

import torch

from mdlm.decode import DecodeConfig, decode
from mdlm.decode.denoiser import CallableDenoiser


def full_head(model):
    """The same network behind a denoiser that runs the LM head at every position, then gathers."""
    return CallableDenoiser(lambda ids, attention_mask=None, position_ids=None: model(
        ids, attention_mask=attention_mask, position_ids=position_ids).logits, model.config.mask_token_id)


def head_rows_per_call(model):
    """A forward hook on the LM head recording how many positions of each row it ran at."""
    rows = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[1]))
    return rows, handle


def test_first_hitting_gives_identical_tokens_with_and_without_the_head_at_the_revealed_position(tiny_model):
    mask = tiny_model.config.mask_token_id
    canvas = torch.full((3, 12), mask)
    canvas[1, :4] = torch.tensor([5, 6, 7, 8])  # a row with fewer positions to fill finishes earlier
    for seed, temperature in ((0, 1.0), (1, 0.7)):
        config = DecodeConfig(sampler="first-hitting", seed=seed, temperature=temperature, trace=True)
        at_position = decode(tiny_model, canvas, config)
        everywhere = decode(full_head(tiny_model), canvas, config)
        assert torch.equal(at_position.tokens, everywhere.tokens)
        assert at_position.nfe == everywhere.nfe == 12
        for a, b in zip(at_position.trace, everywhere.trace, strict=True):
            assert torch.equal(a.state, b.state) and torch.equal(a.revealed, b.revealed)
            torch.testing.assert_close(a.logprob, b.logprob, rtol=0, atol=1e-5)
        assert (at_position.tokens != mask).all()


def test_first_hitting_runs_the_lm_head_at_one_position_per_row(tiny_model):
    canvas = torch.full((2, 10), tiny_model.config.mask_token_id)
    positions, handle = head_rows_per_call(tiny_model)
    try:
        decode(tiny_model, canvas, DecodeConfig(sampler="first-hitting", seed=0))
    finally:
        handle.remove()
    assert positions == [1] * 10  # not the 10 positions of the canvas
