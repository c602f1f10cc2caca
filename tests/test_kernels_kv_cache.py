"""The block key/value cache is exact under block-causal attention: the last block's logits computed
against the cached prefix equal the uncached ones, also on a left-padded batch."""

from __future__ import annotations

import pytest
import torch

from mdlm import MDLMConfig, MDLMForMaskedLM

BLOCK, VOCAB, MASK_ID, PAD_ID = 4, 40, 39, 0


@pytest.fixture(scope="module")
def block_causal_model():
    torch.manual_seed(0)
    config = MDLMConfig.from_preset("tiny", vocab_size=VOCAB, mask_token_id=MASK_ID, pad_token_id=PAD_ID,
                                    attention="block-causal", block_size=BLOCK)
    return MDLMForMaskedLM(config).eval()


def left_padded_batch(pad_blocks: list[int], length: int):
    """Rows left-padded by whole blocks, so cache splits at block boundaries fall on position blocks."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, MASK_ID, (len(pad_blocks), length), generator=generator)
    ids[:, -BLOCK + 1:] = MASK_ID  # the active block is partly masked, as during decoding
    valid = torch.ones_like(ids, dtype=torch.bool)
    for row, blocks in enumerate(pad_blocks):
        valid[row, : blocks * BLOCK] = False
        ids[row, : blocks * BLOCK] = PAD_ID
    positions = (valid.cumsum(1) - 1).clamp_min(0)  # 0 at each row's first valid token
    return ids, valid, positions


@torch.no_grad()
def test_cached_last_block_equals_uncached(block_causal_model):
    ids, valid, positions = left_padded_batch([0], 4 * BLOCK)
    full = block_causal_model(ids, position_ids=positions).logits
    prefix = block_causal_model(ids[:, :-BLOCK], position_ids=positions[:, :-BLOCK], use_cache=True).cache
    step = block_causal_model(ids[:, -BLOCK:], position_ids=positions[:, -BLOCK:], cache=prefix).logits
    torch.testing.assert_close(step, full[:, -BLOCK:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_cached_blocks_equal_uncached_with_left_padding(block_causal_model):
    """Rows padded by 0, 1 and 3 blocks (the last one's whole prefix is padding), cache built block by
    block as a semi-autoregressive decoder does."""
    ids, valid, positions = left_padded_batch([0, 1, 3], 5 * BLOCK)
    full = block_causal_model(ids, attention_mask=valid, position_ids=positions).logits
    cache = None
    for start in range(0, ids.shape[1], BLOCK):
        span = slice(start, start + BLOCK)
        out = block_causal_model(ids[:, span], attention_mask=valid[:, span], position_ids=positions[:, span],
                                 cache=cache, use_cache=True)
        assert out.cache.length == start + BLOCK
        cache = out.cache
    assert torch.equal(cache.valid, valid)
    last = slice(-BLOCK, None)
    torch.testing.assert_close(out.logits[valid[:, last]], full[:, last][valid[:, last]], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_one_prefix_cache_serves_many_passes_over_the_active_block(block_causal_model):
    """The cache is immutable from the caller's side: a decoder reruns the active block with new tokens."""
    ids, valid, positions = left_padded_batch([0, 2], 4 * BLOCK)
    prefix = block_causal_model(ids[:, :-BLOCK], attention_mask=valid[:, :-BLOCK],
                                position_ids=positions[:, :-BLOCK], use_cache=True).cache
    length_before = prefix.length
    for fill in (5, 17):
        changed = ids.clone()
        changed[:, -BLOCK:][changed[:, -BLOCK:] == MASK_ID] = fill
        full = block_causal_model(changed, attention_mask=valid, position_ids=positions).logits
        step = block_causal_model(changed[:, -BLOCK:], attention_mask=valid[:, -BLOCK:],
                                  position_ids=positions[:, -BLOCK:], cache=prefix).logits
        torch.testing.assert_close(step, full[:, -BLOCK:], rtol=1e-5, atol=1e-5)
    assert prefix.length == length_before


@torch.no_grad()
def test_the_cache_is_not_exact_for_bidirectional_attention():
    """Sanity check that the comparison can fail: with bidirectional attention the prefix would have seen
    the active block, so the cached step differs (this is the opt-in approximation of a prefix cache)."""
    torch.manual_seed(0)
    model = MDLMForMaskedLM(MDLMConfig.from_preset("tiny", vocab_size=VOCAB, mask_token_id=MASK_ID)).eval()
    ids, valid, positions = left_padded_batch([0], 4 * BLOCK)
    full = model(ids, position_ids=positions).logits
    prefix = model(ids[:, :-BLOCK], position_ids=positions[:, :-BLOCK], use_cache=True).cache
    step = model(ids[:, -BLOCK:], position_ids=positions[:, -BLOCK:], cache=prefix).logits
    assert float((step - full[:, -BLOCK:])[..., :MASK_ID].abs().max()) > 1e-3
