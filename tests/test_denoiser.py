"""The Denoiser protocol, the one NFE counter and the Canvas: every decoder sees a model through
`as_denoiser`, and every forward pass of the network is counted there."""

import inspect

import pytest
import torch

from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.decode import Canvas, DecodeConfig, Denoiser, as_denoiser, decode
from mdlm.decode.canvas import default_position_ids, pad_rows

MASK = 9


def tiny(attention="bidirectional", **overrides) -> MDLMForMaskedLM:
    torch.manual_seed(0)
    settings = dict(vocab_size=10, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=16, mask_token_id=MASK, eos_token_id=1, attention=attention)
    config = MDLMConfig(**{**settings, **overrides})
    return MDLMForMaskedLM(config).eval()


class ForwardCounter:
    """Counts the module's real forward passes (a pre-hook: nothing can skip it)."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.calls += 1


def test_our_model_a_hugging_face_masked_lm_and_a_callable_are_denoisers():
    from transformers import BertConfig, BertForMaskedLM

    ours = as_denoiser(tiny())
    assert isinstance(ours, Denoiser)
    assert (ours.mask_token_id, ours.attention, ours.block_size, ours.context, ours.supports_cache) == \
        (MASK, "bidirectional", None, 16, True)
    blocks = as_denoiser(tiny("block-causal", block_size=4))
    assert (blocks.attention, blocks.block_size) == ("block-causal", 4)
    bert = BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64))
    theirs = as_denoiser(bert, mask_token_id=29)
    assert isinstance(theirs, Denoiser) and (theirs.mask_token_id, theirs.context, theirs.supports_cache) == \
        (29, 64, False)
    fixed = as_denoiser(lambda ids, attention_mask=None, position_ids=None: torch.zeros(*ids.shape, 10), 3)
    assert isinstance(fixed, Denoiser) and fixed.mask_token_id == 3
    assert as_denoiser(ours) is ours  # wrapped once


@pytest.mark.parametrize("kind", ["ours", "ours-cached", "bert", "callable"])
def test_logits_at_positions_equal_the_full_logits_there(kind):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(1)
    if kind == "bert":
        model = as_denoiser(BertForMaskedLM(BertConfig(vocab_size=10, hidden_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=64)).eval(), MASK)
    elif kind == "callable":
        table = torch.randn(10, 10)
        model = as_denoiser(lambda ids, attention_mask=None, position_ids=None: table[ids], MASK)
    else:
        model = as_denoiser(tiny())
    ids = torch.randint(0, 9, (3, 8))
    ids[:, ::2] = MASK
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, :2] = False  # a left-padded row
    positions = default_position_ids(valid)
    at = torch.tensor([[2, 5], [0, 7], [3, 3]])
    use_cache = kind == "ours-cached"
    full = model.logits(ids, valid, positions, use_cache=use_cache)
    picked = model.logits(ids, valid, positions, use_cache=use_cache, at=at)
    if use_cache:
        full, picked = full[0], picked[0]
    assert picked.shape == (3, 2, full.shape[-1])
    torch.testing.assert_close(picked, full.gather(1, at[..., None].expand(-1, -1, full.shape[-1])))
    with pytest.raises(ValueError, match=r"at must be \(batch, K\)"):
        model.logits(ids, valid, positions, at=at[0])


def test_a_model_without_a_mask_id_is_refused_by_name():
    with pytest.raises(ValueError, match="no mask_token_id"):
        as_denoiser(lambda ids: ids)
    with pytest.raises(ValueError, match="no mask token id.*config.mask_token_id"):
        decode(tiny(mask_token_id=None), torch.full((1, 4), MASK), DecodeConfig())


CASES = [
    ("confidence", {"steps": 4}, "bidirectional"),
    ("confidence", {"steps": 4, "approximate_prefix_cache": True, "block_length": 2}, "bidirectional"),
    ("confidence", {"steps": 4}, "block-causal"),
    ("ancestral", {"steps": 8}, "bidirectional"),
    ("first-hitting", {}, "bidirectional"),
    ("assd", {"draft_size": 3}, "bidirectional"),
]


@pytest.mark.parametrize("sampler,settings,attention", CASES)
def test_every_decoder_counts_its_network_calls_through_the_one_counter(sampler, settings, attention):
    model = tiny(attention, **({"block_size": 2} if attention == "block-causal" else {}))
    denoiser = as_denoiser(model)
    forwards = ForwardCounter(model)
    canvas = torch.tensor([[2, 3, MASK, MASK, MASK, MASK], [2, MASK, MASK, MASK, MASK, 4]])
    before = denoiser.nfe
    result = decode(denoiser, canvas, DecodeConfig(sampler=sampler, seed=0, **settings))
    assert not (result.tokens == MASK).any()
    assert result.nfe == denoiser.nfe - before == forwards.calls > 0
    again = decode(denoiser, canvas, DecodeConfig(sampler=sampler, seed=0, **settings))
    assert again.nfe == result.nfe  # per run, not accumulated over the denoiser's life


@pytest.mark.parametrize("sampler", ["assd-sequential", "assd-parallel"])
def test_the_speculative_baselines_count_through_it_too(sampler):
    model = tiny()
    forwards = ForwardCounter(model)
    result = decode(model, torch.full((2, 5), MASK), DecodeConfig(sampler=sampler, steps=2, seed=0))
    assert result.nfe == forwards.calls > 0


def test_the_seed_becomes_a_generator_in_one_place_only():
    """registry.decode turns config.seed into the run's generator; a sampler that made its own would
    restart the stream the caller handed it."""
    import mdlm.decode.speculative as speculative

    assert "make_generator" not in inspect.getsource(speculative)
    canvas = torch.full((3, 5), MASK)
    for sampler in ("assd", "assd-sequential"):
        seeded = [decode(tiny(), canvas, DecodeConfig(sampler=sampler, seed=4)).tokens for _ in range(2)]
        handed = decode(tiny(), canvas, DecodeConfig(sampler=sampler), generator=torch.Generator().manual_seed(4))
        assert torch.equal(seeded[0], seeded[1]) and torch.equal(seeded[0], handed.tokens)
    with pytest.raises(ValueError, match="assd-parallel.*needs steps="):
        decode(tiny(), canvas, DecodeConfig(sampler="assd-parallel"))


def test_schema_generation_counts_every_call_including_the_scoring(stdlib_tokenizer):
    from mdlm.decode import generate_json
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config(stdlib_tokenizer, max_position_embeddings=256)).eval()
    forwards = ForwardCounter(model)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok", "n"]}
    # Two tokens per step let a choice slot mix its options, which the scoring call then settles.
    out = generate_json(model, stdlib_tokenizer, "x", schema, DecodeConfig(temperature=1.0, seed=5),
                        tokens_per_step=2, strict=False)
    assert out.scored_choices >= 1
    assert out.nfe == forwards.calls > 0


def test_choose_by_score_leaves_the_callers_state_alone(stdlib_tokenizer):
    from mdlm.decode.schema import Scaffold
    from mdlm.decode.schema.generate import _choose_by_score
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config(stdlib_tokenizer, max_position_embeddings=256)).eval()
    scaffold = Scaffold({"type": "object", "properties": {"ok": {"type": "boolean"}, "s": {"type": "string"}},
                         "required": ["ok", "s"]}, stdlib_tokenizer, 4)
    choice, string = scaffold.slots
    states = scaffold.initial_states()
    states[string].prefix, states[string].masks, states[string].done = [5, 6], 0, True
    states[choice].prefix, states[choice].done = list(choice.option_ids[0]), True
    choices = {choice: "mixed"}
    snapshot = ({s: (list(v.prefix), v.masks, v.done) for s, v in states.items()}, dict(choices))
    readings, new_states, new_choices = _choose_by_score(as_denoiser(model), scaffold, [], states, choices,
                                                         [choice], [string])
    assert ({s: (list(v.prefix), v.masks, v.done) for s, v in states.items()}, dict(choices)) == snapshot
    assert new_states[choice].done and new_choices[choice] in (True, False) and choice in readings
    assert not new_states[string].done  # the other bad slot went back to the decoder in the copy only


def test_the_config_checks_the_assd_order():
    with pytest.raises(ValueError, match="order='sideways'.*left-to-right"):
        DecodeConfig(order="sideways")


def test_assd_draws_through_the_kernels_dispatch_only():
    from mdlm.decode import speculative

    assert "sampling_reference" not in inspect.getsource(speculative)


def test_position_ids_and_padding_against_brute_force():
    rows = [[5, 6, 7], [8], []]
    left, left_valid = pad_rows(rows, 0, "left")
    right, right_valid = pad_rows(rows, 0, "right")
    assert left.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]] and right.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    for tokens, valid in ((left, left_valid), (right, right_valid)):
        positions = default_position_ids(valid)
        for b, row in enumerate(rows):
            assert positions[b][valid[b]].tolist() == list(range(len(row)))
            assert tokens[b][valid[b]].tolist() == row


def test_canvas_completes_and_checks_its_input():
    denoiser = as_denoiser(tiny())
    tokens, valid = pad_rows([[2, MASK, MASK], [MASK]], 0, "left")
    canvas = Canvas.of(denoiser, tokens, valid)
    assert canvas.positions.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert canvas.generated.tolist() == [[False, True, True], [False, False, True]]
    with pytest.raises(ValueError, match="valid has shape"):
        Canvas.of(denoiser, tokens, valid[:, :2])
    with pytest.raises(ValueError, match="context is 16"):
        Canvas.of(denoiser, torch.full((1, 17), MASK))


def test_a_built_canvas_goes_to_every_decoder_as_it_is(stdlib_tokenizer):
    """build_canvas returns the one Canvas (its `generated` is the new tokens only); decode takes it
    whole, and a valid mask beside a Canvas is refused rather than silently ignored."""
    from mdlm.decode import build_canvas
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config(stdlib_tokenizer)).eval()
    canvas = build_canvas(model, stdlib_tokenizer, ["def f(x):", "import os"], 5, suffixes=["", " # end"])
    assert isinstance(canvas, Canvas) and canvas.generated.sum(1).tolist() == [5, 5]
    assert bool((canvas.tokens[canvas.generated] == canvas.mask_token_id).all())
    assert not bool(canvas.valid[0, 0]) or not bool(canvas.valid[1, 0])  # the shorter row is left-padded
    config = DecodeConfig(sampler="first-hitting", seed=2)
    whole = decode(model, canvas, config)
    apart = decode(model, canvas.tokens, config, valid=canvas.valid, position_ids=canvas.positions)
    assert torch.equal(whole.tokens, apart.tokens)
    assert torch.equal(whole.tokens[~canvas.generated], canvas.tokens[~canvas.generated])
    with pytest.raises(ValueError, match="inside the Canvas"):
        decode(model, canvas, config, valid=canvas.valid)
