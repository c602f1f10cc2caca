"""Confidence decoding (LLaDA / Fast-dLLM / MDPO RCR / EOSER+ASS), blocks, caches and `generate`."""

from __future__ import annotations

import pytest
import torch

from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.decode import DecodeConfig, decode, generate

MASK, PAD, EOS = 19, 0, 1


def small_model(attention="bidirectional", seed=0):
    torch.manual_seed(seed)
    config = MDLMConfig.from_preset("tiny", vocab_size=20, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS,
                                    attention=attention, block_size=4)
    return MDLMForMaskedLM(config).eval()


def padded_batch(prompts, new_tokens):
    """Left-padded canvas of prompts followed by `new_tokens` masks."""
    length = max(map(len, prompts)) + new_tokens
    canvas = torch.full((len(prompts), length), PAD)
    valid = torch.zeros_like(canvas, dtype=torch.bool)
    for b, prompt in enumerate(prompts):
        row = torch.tensor(prompt + [MASK] * new_tokens)
        canvas[b, length - len(row):] = row
        valid[b, length - len(row):] = True
    return canvas, valid


PROMPTS = [[5, 6], [4, 5, 6, 7, 8], [9]]


@pytest.mark.parametrize("remasking", ["low-confidence", "random", "margin", "entropy", "threshold", "rcr"])
@pytest.mark.parametrize("schedule", ["uniform", "cosine", "ascending"])
def test_fills_every_mask_and_keeps_fixed_tokens(remasking, schedule):
    model = small_model()
    canvas, valid = padded_batch(PROMPTS, 9)
    config = DecodeConfig(steps=None if schedule == "ascending" else 6, unmasking_schedule=schedule, remasking=remasking,
                          block_length=4, seed=0, trace=True, eoser=True)
    result = decode(model, canvas, config, valid=valid)
    assert not (result.tokens[valid] == MASK).any()
    fixed = canvas != MASK
    assert torch.equal(result.tokens[fixed], canvas[fixed])
    assert result.nfe == len(result.trace) >= 1
    # The trace replays the run: revealed tokens accumulate to the output.
    state = result.trace[0].state
    for step, nxt in zip(result.trace, result.trace[1:] + [None]):
        assert torch.equal(step.state, state)
        assert not (step.revealed & ~(step.state == MASK)).any()
        state = step.state.clone()
        state[step.revealed] = step.x0[step.revealed]
        state[step.remasked] = MASK
    assert torch.equal(state, result.tokens)
    if remasking == "rcr":
        return
    assert all(not s.remasked.any() for s in result.trace)


def test_uniform_counts_per_step_follow_llada():
    model = small_model()
    canvas, valid = padded_batch([[5, 6]], 10)
    result = decode(model, canvas, DecodeConfig(steps=4, seed=1, trace=True), valid=valid)
    assert [int(s.revealed.sum()) for s in result.trace] == [3, 3, 2, 2]


def test_threshold_commits_confident_tokens_at_least_one():
    model = small_model()
    canvas, valid = padded_batch([[5, 6]], 8)
    result = decode(model, canvas, DecodeConfig(remasking="threshold", threshold=0.9, seed=0, trace=True), valid=valid)
    for step in result.trace:
        committed = step.confidence[step.revealed]
        assert len(committed) >= 1
        assert len(committed) == 1 or bool((committed >= 0.9).all())


def test_batch_equals_one_by_one_at_temperature_zero():
    model = small_model()
    config = DecodeConfig(steps=6, block_length=3, temperature=0.0)
    canvas, valid = padded_batch(PROMPTS, 7)
    batched = decode(model, canvas, config, valid=valid).tokens
    for b, prompt in enumerate(PROMPTS):
        single, _ = padded_batch([prompt], 7)
        alone = decode(model, single, config).tokens[0]
        assert torch.equal(batched[b][valid[b]], alone)


def test_block_causal_cache_gives_identical_tokens_and_fewer_tokens_through_the_network():
    model = small_model("block-causal")
    canvas, valid = padded_batch(PROMPTS, 10)
    config = DecodeConfig(steps=12, seed=3, trace=True)
    seen = []  # tokens the network processes per call, counted at the model itself
    handle = model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0] if args else kwargs["input_ids"]).numel()), with_kwargs=True)
    try:
        cached = decode(model, canvas, config, valid=valid)
        cached_tokens, seen[:] = sum(seen), []
        uncached = decode(model, canvas, DecodeConfig(steps=12, seed=3, trace=True, use_cache=False), valid=valid)
        uncached_tokens = sum(seen)
    finally:
        handle.remove()
    assert torch.equal(cached.tokens, uncached.tokens)
    assert cached.nfe == uncached.nfe
    assert torch.equal(cached.trace[-1].revealed, uncached.trace[-1].revealed)
    # the finished blocks are cached, not pushed through the network again
    assert uncached_tokens == uncached.nfe * canvas.numel()
    assert cached_tokens < uncached_tokens, (cached_tokens, uncached_tokens)


def test_block_causal_batch_equals_one_by_one():
    model = small_model("block-causal")
    config = DecodeConfig(steps=7, temperature=0.0)
    canvas, valid = padded_batch(PROMPTS, 7)
    batched = decode(model, canvas, config, valid=valid).tokens
    for b, prompt in enumerate(PROMPTS):
        single, _ = padded_batch([prompt], 7)
        assert torch.equal(batched[b][valid[b]], decode(model, single, config).tokens[0])


def test_approximate_prefix_cache_runs_and_fills():
    model = small_model()
    canvas, valid = padded_batch(PROMPTS, 8)
    result = decode(model, canvas, DecodeConfig(steps=8, block_length=4, approximate_prefix_cache=True, seed=0),
                    valid=valid)
    assert not (result.tokens[valid] == MASK).any()


def test_infill_and_arbitrary_fixed_spans_are_kept():
    model = small_model()
    canvas = torch.tensor([[5, MASK, MASK, 7, MASK, 8, MASK, MASK, 9]])
    result = decode(model, canvas, DecodeConfig(steps=5, seed=0))
    fixed = canvas != MASK
    assert torch.equal(result.tokens[fixed], canvas[fixed]) and not (result.tokens == MASK).any()


def test_seed_reproducible_and_bad_options_rejected():
    model = small_model()
    canvas, valid = padded_batch(PROMPTS, 6)
    a = decode(model, canvas, DecodeConfig(seed=7, temperature=1.0), valid=valid).tokens
    b = decode(model, canvas, DecodeConfig(seed=7, temperature=1.0), valid=valid).tokens
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="remasking"):
        DecodeConfig(remasking="nope")
    with pytest.raises(ValueError, match="sampler"):
        DecodeConfig(sampler="nope")
    long_canvas = torch.full((1, 100), MASK)
    with pytest.raises(ValueError, match="context"):
        decode(model, long_canvas, DecodeConfig())


def test_generate_text_in_text_out(stdlib_tokenizer, tiny_model):
    texts = generate(tiny_model, stdlib_tokenizer, ["def parse(", "import"], 12, DecodeConfig(steps=6, seed=0))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    infilled = generate(tiny_model, stdlib_tokenizer, ["def f("], 5, DecodeConfig(seed=0), suffixes=["):\n"])
    assert len(infilled) == 1
    with pytest.raises(ValueError, match="context"):
        generate(tiny_model, stdlib_tokenizer, ["x " * 80], 10, DecodeConfig())


def test_block_causal_cached_trace_is_in_the_callers_layout_with_the_models_log_probs():
    from mdlm.decode.canvas import default_position_ids

    model = small_model("block-causal")
    canvas, valid = padded_batch(PROMPTS, 9)
    seen = []
    config = DecodeConfig(steps=9, seed=4, trace=True, step_callback=seen.append)
    result = decode(model, canvas, config, valid=valid)
    assert len(seen) == len(result.trace)
    for step, live in zip(result.trace, seen):
        assert torch.equal(step.state, live.state) and torch.equal(step.revealed, live.revealed)
        assert not (step.revealed & ~valid).any() and torch.equal(step.state[~valid], canvas[~valid])
        with torch.no_grad():
            logits = model(step.state, attention_mask=valid, position_ids=default_position_ids(valid)).logits
        logp = torch.log_softmax(logits.double(), -1).gather(-1, step.x0[..., None])[..., 0]
        assert torch.allclose(step.logprob[step.revealed], logp[step.revealed], atol=1e-4)


@pytest.mark.parametrize("steps, block_length, new_tokens, schedule, attention", [
    (3, 3, 6, "uniform", "bidirectional"),  # issue 13's example: 3 // 2 blocks used to give 2 calls
    (5, 4, 10, "uniform", "bidirectional"),
    (7, 2, 9, "cosine", "bidirectional"),
    (4, None, 4, "cosine", "bidirectional"),
    (9, 3, 9, "uniform", "bidirectional"),
    (6, 5, 11, "uniform", "bidirectional"),
    (5, None, 10, "uniform", "block-causal"),
    (11, 8, 13, "cosine", "block-causal"),
])
def test_network_calls_equal_the_asked_for_steps(steps, block_length, new_tokens, schedule, attention):
    model = small_model(attention)
    canvas = torch.full((1, new_tokens), MASK)
    config = DecodeConfig(steps=steps, block_length=block_length, unmasking_schedule=schedule, seed=0, trace=True,
                          use_cache=False)
    result = decode(model, canvas, config)
    assert result.nfe == steps == len(result.trace)
    assert all(int(step.revealed.sum()) >= 1 for step in result.trace)
    assert not (result.tokens == MASK).any()


def test_network_calls_equal_the_steps_on_a_padded_batch():
    canvas, valid = padded_batch(PROMPTS, 9)
    result = decode(small_model(), canvas, DecodeConfig(steps=5, block_length=4, seed=0), valid=valid)
    assert result.nfe == 5 and not (result.tokens[valid] == MASK).any()


@pytest.mark.parametrize("config, new_tokens, message", [
    (DecodeConfig(steps=2, block_length=2), 6, r"steps=2 is fewer than the 3 blocks.*steps >= 3"),
    (DecodeConfig(steps=7), 6, r"steps=7 is more than the 6 tokens.*steps <= 6"),
    (DecodeConfig(steps=5, unmasking_schedule="ascending"), 16, r"floor\(log2 16\) = 4.*steps=5"),
])
def test_steps_that_cannot_be_honoured_are_refused_with_the_numbers(config, new_tokens, message):
    with pytest.raises(ValueError, match=message):
        decode(small_model(), torch.full((1, new_tokens), MASK), config)


class HeadPositions(torch.nn.Module):
    """Our model, remembering how many positions its LM head ran at per call (its `logits_at`)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.head_positions = model, model.config, []

    def forward(self, *args, logits_at=None, **kwargs):
        self.head_positions.append(None if logits_at is None else logits_at.shape[1])
        return self.inner(*args, logits_at=logits_at, **kwargs)


@pytest.mark.parametrize("attention, options", [
    ("bidirectional", dict(block_length=4)),
    ("bidirectional", dict(remasking="rcr", block_length=3, steps=6)),
    ("bidirectional", dict(remasking="threshold", threshold=0.3)),
    ("bidirectional", dict(approximate_prefix_cache=True, block_length=4)),
    ("block-causal", dict()),
    ("block-causal", dict(use_cache=False)),
])
def test_the_block_decoder_runs_the_head_at_the_blocks_masks_only_and_decodes_the_same_tokens(attention, options):
    from mdlm.decode.denoiser import MDLMDenoiser

    model = small_model(attention, seed=3)
    canvas, valid = padded_batch(PROMPTS, 9)
    tokens = {}
    for full_logits in (False, True):
        counting = HeadPositions(model)
        denoiser = MDLMDenoiser(model)
        denoiser.model = counting
        config = DecodeConfig(temperature=1.0, seed=7, full_logits=full_logits, **options)
        tokens[full_logits] = decode(denoiser, canvas, config, valid=valid).tokens
        if full_logits:
            assert set(counting.head_positions) == {None}
        else:  # never more positions than one block holds (9 new tokens in blocks of <= 4 or one block of 9)
            assert all(k is not None and k <= options.get("block_length", 4 if attention == "block-causal" else 9)
                       for k in counting.head_positions)
    assert torch.equal(tokens[False], tokens[True])
