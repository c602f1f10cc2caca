"""Unmasking schedules reveal exactly L tokens in their stated number of steps; EOSER's gammas; the
Denoiser adapter for Hugging Face masked LMs."""

from __future__ import annotations

import pytest
import torch

from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.decode import DecodeConfig, as_denoiser, decode
from mdlm.decode.ancestral import reveal_probabilities
from mdlm.decode.unmasking import ascending_blocks, ascending_counts, cosine_counts, eoser_gamma, uniform_counts


def test_ascending_step_size_matches_the_paper():
    assert ascending_counts(256) == [1, 2, 4, 8, 16, 32, 64, 129]
    assert ascending_blocks(256, 1) == [[1, 2, 4, 8, 16, 32, 64, 129]]
    # Several blocks: the last holds 2^(S-1) + 1, earlier ones 2^(S-2), ..., the first the remainder.
    assert [sum(b) for b in ascending_blocks(256, 3)] == [63, 64, 129]
    assert [sum(b) for b in ascending_blocks(256, 4)] == [31, 32, 64, 129]
    assert ascending_blocks(300, 2) == [[1, 2, 4, 8, 16, 32, 64], [173]]


@pytest.mark.parametrize("length", [1, 2, 3, 7, 64, 100, 256, 1000])
@pytest.mark.parametrize("steps", [1, 3, 8, 64])
def test_every_schedule_reveals_exactly_length_tokens_in_its_steps(length, steps):
    assert sum(uniform_counts(length, steps)) == length and len(uniform_counts(length, steps)) == steps
    assert sum(cosine_counts(length, steps)) == length and len(cosine_counts(length, steps)) == steps
    assert min(cosine_counts(length, steps)) >= 0
    ass = ascending_counts(length)
    assert sum(ass) == length and len(ass) == max(1, length.bit_length() - 1)
    if length >= steps:  # no empty step, which would silently skip a network call
        assert min(uniform_counts(length, steps)) >= 1 and min(cosine_counts(length, steps)) >= 1


def test_cosine_reveals_few_tokens_first():
    counts = cosine_counts(256, 8)
    assert counts[0] < counts[-1]


@pytest.mark.parametrize("schedule,steps,expected_steps", [("uniform", 16, 16), ("cosine", 16, 16), ("ascending", None, 8)])
def test_decoding_reveals_the_scheduled_counts(schedule, steps, expected_steps):
    torch.manual_seed(0)
    model = MDLMForMaskedLM(MDLMConfig.from_preset("tiny", vocab_size=12, mask_token_id=11,
                                                   max_position_embeddings=300)).eval()
    canvas = torch.full((1, 256), 11)
    result = decode(model, canvas, DecodeConfig(unmasking_schedule=schedule, steps=steps, seed=0, trace=True))
    revealed = [int(s.revealed.sum()) for s in result.trace]
    assert sum(revealed) == 256 and result.nfe == len(revealed) <= expected_steps
    if schedule == "ascending":
        assert revealed == [1, 2, 4, 8, 16, 32, 64, 129]


def test_ascending_with_blocks_decodes_the_paper_block_sizes():
    torch.manual_seed(0)
    model = MDLMForMaskedLM(MDLMConfig.from_preset("tiny", vocab_size=12, mask_token_id=11,
                                                   max_position_embeddings=300)).eval()
    canvas = torch.full((1, 256), 11)
    result = decode(model, canvas, DecodeConfig(unmasking_schedule="ascending", block_length=86, seed=0, trace=True))
    revealed = [s.revealed[0].nonzero()[:, 0] for s in result.trace]
    assert [len(r) for r in revealed] == [1, 2, 4, 8, 16, 32, 64, 129]
    assert int(revealed[-1].min()) == 127  # the last block is the last 129 positions
    assert int(revealed[-2].min()) == 63 and int(revealed[-2].max()) == 126


def test_eoser_gamma_rises_to_one():
    assert eoser_gamma(0, 8, "uniform") == pytest.approx(0.4)
    assert eoser_gamma(7, 8, "uniform") == pytest.approx(1.0)
    assert eoser_gamma(0, 8, "ascending") == pytest.approx(0.01 + 0.99 / 256)
    assert eoser_gamma(7, 8, "ascending") == pytest.approx(0.01 + 0.99 * 255 / 256)


class EosHeavyDenoiser:
    """A fixed denoiser: p(EOS) = 0.5 and p(2) = 0.35 at every position (a plain `Denoiser` callable)."""

    mask_token_id = 5

    def __call__(self, input_ids, attention_mask=None, position_ids=None):
        probs = torch.tensor([0.05, 0.5, 0.35, 0.05, 0.05, 0.0])
        return probs.log().expand(*input_ids.shape, 6).clone()


def test_eoser_delays_eos():
    canvas = torch.full((64, 16), 5)

    def first_step_eos(eoser):
        config = DecodeConfig(steps=8, eoser=eoser, seed=0, trace=True, eos_token_id=1)
        result = decode(EosHeavyDenoiser(), canvas, config)
        return int((result.tokens[result.trace[0].revealed] == 1).sum())

    assert first_step_eos(False) > 100  # EOS is the most confident draw: nearly all of the 128 commits
    assert first_step_eos(True) < 10  # gamma = 0.4 puts it behind p(2) = 0.35


def test_reveal_probabilities_end_at_one():
    probs = reveal_probabilities("linear", 10)
    assert probs[-1] == 1 and torch.allclose(probs, 1 / torch.arange(10, 0, -1, dtype=torch.float64))
    assert reveal_probabilities("cosine", 10)[-1] == 1


def test_hugging_face_masked_lm_is_a_denoiser():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64)).eval()
    denoiser = as_denoiser(bert, mask_token_id=29, banned_token_ids=[0])
    canvas = torch.tensor([[5, 6, 29, 29, 29, 7]])
    for sampler in ("confidence", "first-hitting", "ancestral"):
        tokens = decode(denoiser, canvas, DecodeConfig(sampler=sampler, steps=3, seed=0)).tokens
        assert not (tokens == 29).any() and not (tokens == 0).any()
        assert torch.equal(tokens[canvas != 29], canvas[canvas != 29])


def eos_preferring_model(seed: int = 0) -> MDLMForMaskedLM:
    """A randomly initialised MDLM whose LM head gets a bias: EOS (+3) is the most likely token everywhere,
    a content token (2, +2.5) a close second, as a briefly trained model that ends samples too early."""
    torch.manual_seed(seed)
    config = MDLMConfig.from_preset("tiny", vocab_size=20, mask_token_id=19, eos_token_id=1, pad_token_id=0)
    model = MDLMForMaskedLM(config).eval()
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[1], head.bias[2] = 3.0, 2.5
    model.lm_head = head
    return model


def test_eoser_lowers_early_eos_on_a_model_that_prefers_eos():
    model = eos_preferring_model()
    canvas = torch.full((64, 16), 19)
    with torch.no_grad():
        probs = model(canvas[:1]).logits.softmax(-1)[0]
    assert bool((probs.argmax(-1) == 1).all())  # EOS is the model's first choice at every position

    def early_eos(eoser):
        result = decode(model, canvas, DecodeConfig(steps=8, eoser=eoser, seed=0, trace=True, eos_token_id=1))
        committed_early = sum(int((result.tokens[s.revealed] == 1).sum()) for s in result.trace[:4])
        at_early_positions = float((result.tokens[:, :4] == 1).float().mean())
        return committed_early, at_early_positions

    plain, with_eoser = early_eos(False), early_eos(True)
    # Of the 512 tokens the first 4 of 8 steps commit, nearly all are EOS without EOSER, few with it.
    assert plain[0] > 400 and with_eoser[0] < 100
    assert plain[1] > 0.5 and with_eoser[1] < 0.3
