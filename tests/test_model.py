"""The transformer: Auto-class save/load round trip, the SUBS output, and every attention-mask shape the
model documents (padding, causal, block-causal, arbitrary boolean 3-D / 4-D)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from mdlm import MDLMForMaskedLM
from tests.conftest import tiny_config


def test_auto_classes_round_trip_gives_identical_logits(tiny_run_dir, tiny_model, stdlib_tokenizer):
    model = AutoModelForMaskedLM.from_pretrained(tiny_run_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_run_dir)
    assert isinstance(model, MDLMForMaskedLM)
    assert list((tiny_run_dir).glob("*.safetensors")) and not list(tiny_run_dir.glob("*.bin"))
    ids = torch.tensor([tokenizer("def f(x):\n    return x")["input_ids"]])
    assert ids.tolist() == [stdlib_tokenizer("def f(x):\n    return x")["input_ids"]]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_model(ids).logits)
    assert tokenizer.mask_token_id == model.config.mask_token_id


def test_mask_token_logit_is_minus_infinity(tiny_model):
    ids = torch.tensor([[5, tiny_model.config.mask_token_id, 9]])
    logits = tiny_model(ids).logits
    assert logits.dtype == torch.float32
    assert torch.isneginf(logits[..., tiny_model.config.mask_token_id]).all()
    assert torch.isfinite(logits[..., : tiny_model.config.mask_token_id]).all()


def model_with(stdlib_tokenizer, attention, seed=0, **kw):
    torch.manual_seed(seed)
    return MDLMForMaskedLM(tiny_config(stdlib_tokenizer, attention=attention, **kw)).eval()


@torch.no_grad()
def test_causal_attention_hides_the_future(stdlib_tokenizer):
    causal, bidirectional = model_with(stdlib_tokenizer, "causal"), model_with(stdlib_tokenizer, "bidirectional")
    ids = torch.randint(0, 500, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 7) % 500
    assert torch.equal(causal(ids).logits[:, :6], causal(changed).logits[:, :6])
    assert not torch.allclose(causal(ids).logits[:, 6:], causal(changed).logits[:, 6:])
    # the same weights with bidirectional attention do see the change (the check above can fail)
    assert not torch.allclose(bidirectional(ids).logits[:, :6], bidirectional(changed).logits[:, :6])


@torch.no_grad()
def test_block_causal_attention_sees_its_block_and_earlier_ones(stdlib_tokenizer):
    model = model_with(stdlib_tokenizer, "block-causal", block_size=4)
    ids = torch.randint(0, 500, (1, 12))
    changed = ids.clone()
    changed[0, 9] = (changed[0, 9] + 1) % 500  # inside the third block (positions 8..11)
    a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@torch.no_grad()
def test_padding_mask_makes_padded_rows_equal_to_unpadded_ones(tiny_model):
    ids = torch.randint(0, 500, (1, 7))
    padded = torch.cat([ids, torch.full((1, 3), tiny_model.config.pad_token_id)], 1)
    mask = torch.tensor([[1] * 7 + [0] * 3])
    alone = tiny_model(ids).logits
    together = tiny_model(padded, attention_mask=mask).logits
    assert torch.allclose(alone, together[:, :7], atol=1e-5)
    assert not torch.allclose(alone, tiny_model(padded).logits[:, :7], atol=1e-5)


@torch.no_grad()
def test_boolean_masks_of_three_and_four_dimensions_are_anded_with_the_pattern(stdlib_tokenizer):
    bidirectional = model_with(stdlib_tokenizer, "bidirectional")
    causal = model_with(stdlib_tokenizer, "causal")  # same seed: the same weights
    ids = torch.randint(0, 500, (2, 9))
    lower = torch.tril(torch.ones(9, 9, dtype=torch.bool)).expand(2, 9, 9)
    expected = causal(ids).logits
    assert torch.allclose(bidirectional(ids, attention_mask=lower).logits, expected, atol=1e-5)
    assert torch.allclose(bidirectional(ids, attention_mask=lower[:, None]).logits, expected, atol=1e-5)
    per_head = lower[:, None].expand(2, bidirectional.config.num_attention_heads, 9, 9)
    assert torch.allclose(bidirectional(ids, attention_mask=per_head).logits, expected, atol=1e-5)
    # ANDed with the structure: a full mask leaves the causal model causal
    full = torch.ones(2, 9, 9, dtype=torch.bool)
    assert torch.allclose(causal(ids, attention_mask=full).logits, expected, atol=1e-5)


def test_bad_masks_and_positions_get_clear_errors(tiny_model):
    ids = torch.randint(0, 500, (2, 5))
    with pytest.raises(ValueError, match="padding mask of shape"):
        tiny_model(ids, attention_mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match="covers"):
        tiny_model(ids, attention_mask=torch.ones(2, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="beyond the model's context"):
        tiny_model(torch.randint(0, 500, (1, tiny_model.config.max_position_embeddings + 1)))


def test_custom_mask_with_a_padded_cache_keeps_the_padding_and_extends_validity(stdlib_tokenizer):
    """A 3-D mask after a cache with padding keys: padding stays hidden and the new cache's validity
    covers every key (cached and new)."""
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config(stdlib_tokenizer, attention="block-causal", block_size=2)).eval()
    x = torch.randint(5, 100, (2, 10))
    pad = torch.ones(2, 6, dtype=torch.bool)
    pad[0, :2] = False
    prefix = model(x[:, :6], attention_mask=pad, use_cache=True).cache
    everything = torch.ones(2, 4, 10, dtype=torch.bool)
    out = model(x[:, 6:], attention_mask=everything, cache=prefix, use_cache=True)
    assert out.cache.valid.shape == out.cache.positions.shape == (2, 10)
    assert out.cache.valid[0, :2].logical_not().all() and out.cache.valid[:, 2:].all()
    full_valid = torch.cat([pad, torch.ones(2, 4, dtype=torch.bool)], 1)
    reference = model(x, attention_mask=full_valid).logits[:, 6:]
    torch.testing.assert_close(out.logits, reference)


def test_logits_at_runs_the_head_only_at_the_given_positions(tiny_model):
    torch.manual_seed(1)
    ids = torch.randint(0, tiny_model.config.vocab_size - 1, (2, 12))
    ids[:, ::3] = tiny_model.config.mask_token_id
    full = tiny_model(ids).logits  # (2, 12, V)
    at = torch.tensor([[0, 3, 9], [11, 6, 6]])
    picked = tiny_model(ids, logits_at=at).logits
    assert picked.shape == (2, 3, full.shape[-1])
    assert torch.allclose(picked, full.gather(1, at[..., None].expand(-1, -1, full.shape[-1])), atol=1e-6)
    assert torch.isneginf(picked[..., tiny_model.config.mask_token_id]).all()
    with pytest.raises(ValueError, match=r"logits_at must be \(batch, K\)"):
        tiny_model(ids, logits_at=at[0])
