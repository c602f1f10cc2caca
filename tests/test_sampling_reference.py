"""The pure-torch float64 categorical sampler: exact draws, goodness of fit, heavy tails, bounded memory."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from scipy.stats import chi2

from mdlm.kernels import sample_categorical
from mdlm.kernels.sampling_reference import (
    CHUNK_ELEMENTS, U64_MAX, WORKING_BYTES_PER_ELEMENT, _as_int32_bits, _fmix32_int32_, filter_logits,
    filter_threshold, fmix32, hash_uniform, rows_per_chunk, sample_categorical_reference,
)

SIGNIFICANCE = 1e-3


def reference_logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 2.5
    logits[:, 3] = float("-inf")  # a masked-out token, as the model's mask id
    return logits


def explicit_gumbel_argmax(logits, seed, temperature=1.0, threshold=None):
    """argmax(x/T - log(-log u)) written out with the int64 hash: the definition the sampler must meet."""
    R, V = logits.shape
    u = hash_uniform(seed, torch.arange(R)[:, None], torch.arange(V)[None])
    scores = logits.double() / temperature - torch.log(-torch.log(u))
    if threshold is not None:
        scores = scores.masked_fill(logits < threshold[:, None], float("-inf"))
    return scores.argmax(-1)


def chi_square_pvalue(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson goodness of fit of the empirical token counts against probs (categories with p > 0)."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    support = probs > 0
    if bool((counts[~support] > 0).any()):
        return 0.0  # a token of probability zero was drawn
    expected = probs[support] * tokens.numel()
    statistic = float(((counts[support] - expected) ** 2 / expected).sum())
    return float(chi2.sf(statistic, int(support.sum()) - 1))


# ----------------------------------------------------------------------------------------------- exactness


def test_int32_hash_equals_the_int64_specification():
    values = torch.randint(0, 2**32, (4096,), dtype=torch.int64, generator=torch.Generator().manual_seed(1))
    values[:4] = torch.tensor([0, 1, 2**31, 2**32 - 1])
    fast = _fmix32_int32_(_as_int32_bits(values), torch.empty(4096, dtype=torch.int32))
    assert torch.equal(fast, _as_int32_bits(fmix32(values)))


def test_uniforms_are_open_interval_and_reach_float64_resolution():
    u = hash_uniform(7, torch.arange(64)[:, None], torch.arange(4096)[None])
    assert u.dtype == torch.float64 and float(u.min()) > 0 and float(u.max()) <= U64_MAX < 1.0
    assert 0.49 < float(u.mean()) < 0.51
    # 53-bit uniforms: far more distinct values than float32's 2^24 grid could give on this many draws.
    assert bool(((u * 2**24) % 1 != 0.5).any())


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_tokens_and_statistics_match_the_explicit_definition(temperature):
    logits = reference_logits(37, 301)
    sample = sample_categorical_reference(logits, temperature=temperature, seed=11, chunk_elements=1000)
    assert torch.equal(sample.tokens, explicit_gumbel_argmax(logits, 11, temperature))
    logp = torch.log_softmax(logits.double(), -1)
    top2 = logp.topk(2, -1).values
    entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
    torch.testing.assert_close(sample.logprob, logp.gather(-1, sample.tokens[:, None])[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(sample.top1_logprob, top2[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(sample.top2_logprob, top2[:, 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(sample.entropy, entropy, rtol=0, atol=1e-12)
    assert sample.logprob.dtype == torch.float64 and sample.tokens.dtype == torch.long


def test_top_k_top_p_draws_match_the_explicit_definition():
    logits = reference_logits(23, 211, seed=3)
    threshold = filter_threshold(logits, 20, 0.8)
    sample = sample_categorical_reference(logits, top_k=20, top_p=0.8, seed=5, chunk_elements=500)
    assert torch.equal(sample.tokens, explicit_gumbel_argmax(logits, 5, threshold=threshold))
    assert bool((logits.gather(-1, sample.tokens[:, None])[:, 0] >= threshold).all())


def test_leading_shape_bf16_and_single_token_vocabulary():
    logits = reference_logits(12, 50).view(3, 4, 50)
    sample = sample_categorical(logits, seed=2)
    assert sample.tokens.shape == (3, 4) and sample.entropy.shape == (3, 4)
    bf16 = sample_categorical(logits.bfloat16(), seed=2)
    assert torch.equal(bf16.tokens, explicit_gumbel_argmax(logits.bfloat16().float().view(12, 50), 2).view(3, 4))
    one = sample_categorical(torch.zeros(5, 1), seed=0)
    assert bool((one.tokens == 0).all()) and bool((one.logprob == 0).all())
    assert bool(torch.isinf(one.top2_logprob).all()) and bool((one.entropy == 0).all())


def test_temperature_zero_is_argmax_with_first_index_on_ties():
    logits = reference_logits(40, 97, seed=4)
    logits[0, [10, 20]] = 50.0  # a tie: the first index wins, as torch.argmax
    sample = sample_categorical(logits, temperature=0, seed=1)
    assert torch.equal(sample.tokens, logits.argmax(-1)) and int(sample.tokens[0]) == 10
    again = sample_categorical(logits, temperature=0, seed=999)
    assert torch.equal(again.tokens, sample.tokens)


def test_draws_do_not_depend_on_chunk_size_and_seed_controls_them():
    logits = reference_logits(50, 333, seed=6)
    draws = [sample_categorical_reference(logits, seed=9, chunk_elements=c).tokens for c in (1, 333 * 3, 10**9)]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])
    # A row's draw depends on its row index and the seed only, not on the other rows.
    assert torch.equal(sample_categorical_reference(logits[:20], seed=9).tokens, draws[0][:20])
    assert not torch.equal(sample_categorical_reference(logits, seed=10).tokens, draws[0])
    a = sample_categorical(logits, generator=torch.Generator().manual_seed(3)).tokens
    b = sample_categorical(logits, generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad, message", [
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(precision="float16"), "precision"),
])
def test_bad_arguments_get_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        sample_categorical(torch.zeros(2, 5), **bad)


def test_rows_without_a_finite_logit_are_rejected():
    logits = torch.zeros(3, 5)
    logits[1] = float("-inf")
    with pytest.raises(ValueError, match="row 1"):
        sample_categorical(logits, seed=0)
    with pytest.raises(TypeError, match="floating"):
        sample_categorical(torch.zeros(2, 5, dtype=torch.long))


def test_filter_logits_keeps_ties_at_the_boundary_and_always_the_top1():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(filter_logits(logits, 2, None)).tolist() == [[False, False, False, True, True]]
    assert torch.isinf(filter_logits(logits, None, 1e-6)).tolist() == [[False, True, True, True, True]]
    probs = torch.softmax(logits, -1)[0]
    # top-p keeps the smallest prefix whose mass reaches p: here the top two distinct values (and the tie).
    p = float(probs[0] + probs[1] * 0.5)
    assert torch.isinf(filter_logits(logits, None, p)).tolist() == [[False, False, False, True, True]]


# ------------------------------------------------------------------------------------------ goodness of fit

GOF_LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0, float("-inf"), -4.0, 0.25])
GOF_ROWS = 30_000


def target_probs(logits: torch.Tensor, temperature: float, top_k=None, top_p=None) -> torch.Tensor:
    """softmax(logits / T) restricted to its top-k, then to the smallest nucleus of the tempered
    distribution reaching top_p, renormalised: transformers' and vLLM's order, written out by brute force
    (a sort of the tempered probabilities), independent of filter_threshold."""
    probs = torch.softmax(logits.double() / temperature, -1)
    order = torch.argsort(probs, descending=True, stable=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    kept_mass, total = 0.0, 0.0
    if top_k is not None:
        total = float(probs[order[:top_k]].sum())
    else:
        total = 1.0
    for rank, index in enumerate(order.tolist()):
        if top_k is not None and rank >= top_k:
            break
        if top_p is not None and kept_mass / total >= top_p:
            break
        keep[index] = True
        kept_mass += float(probs[index])
    restricted = probs * keep
    return restricted / restricted.sum()


def old_order_target_probs(logits: torch.Tensor, temperature: float, top_k=None, top_p=None) -> torch.Tensor:
    """The order this stack used before issue 13: the nucleus of softmax(logits) at T = 1, then logits / T."""
    filtered = filter_logits(logits[None], top_k, top_p)[0]
    return torch.softmax(filtered.double() / temperature, -1)


@pytest.mark.parametrize("temperature, top_k, top_p, precision", [
    (1.0, None, None, "float64"), (0.7, None, None, "float64"), (1.5, None, None, "float64"),
    (1.0, 5, None, "float64"), (1.0, None, 0.8, "float64"), (0.8, 6, 0.9, "float64"), (1.0, None, None, "float32"),
    (1.5, None, 0.8, "float64"), (1.5, 8, 0.8, "float64"), (0.6, 7, 0.85, "float64"),
])
def test_empirical_frequencies_fit_the_softmax(temperature, top_k, top_p, precision):
    logits = GOF_LOGITS.expand(GOF_ROWS, -1)
    tokens = sample_categorical(logits, temperature=temperature, top_k=top_k, top_p=top_p, seed=123,
                                precision=precision).tokens
    assert chi_square_pvalue(tokens, target_probs(GOF_LOGITS, temperature, top_k, top_p)) > SIGNIFICANCE


def test_top_p_takes_the_nucleus_of_the_tempered_distribution():
    """Temperature before top-p (issue 13): at T = 1.5 the tempered 0.8 nucleus has more tokens than the
    T = 1 one, and the draws fit softmax(logits / 1.5) on the tempered nucleus, not the old order's target.
    The two targets differ on the support, so a sampler with the old order fails the first check."""
    logits = GOF_LOGITS.expand(GOF_ROWS, -1)
    new, old = target_probs(GOF_LOGITS, 1.5, 8, 0.8), old_order_target_probs(GOF_LOGITS, 1.5, 8, 0.8)
    assert int((new > 0).sum()) > int((old > 0).sum())
    tokens = sample_categorical(logits, temperature=1.5, top_k=8, top_p=0.8, seed=123).tokens
    assert chi_square_pvalue(tokens, new) > SIGNIFICANCE
    assert chi_square_pvalue(tokens, old) < 1e-6
    kept = torch.isfinite(filter_logits(GOF_LOGITS[None], 8, 0.8, temperature=1.5)[0])
    assert torch.equal(kept, new > 0)


def test_the_fit_test_rejects_a_sampler_at_the_wrong_temperature():
    """Power check: the same test, seed and size reject draws at temperature 0.9 against the T=1 target,
    and the float32 path with its capped noise passes here (its bias is in the far tail, tested below)."""
    logits = GOF_LOGITS.expand(GOF_ROWS, -1)
    biased = sample_categorical(logits, temperature=0.9, seed=123).tokens
    assert chi_square_pvalue(biased, target_probs(GOF_LOGITS, 1.0)) < 1e-6
    top_k_ignored = sample_categorical(logits, seed=123).tokens
    assert chi_square_pvalue(top_k_ignored, target_probs(GOF_LOGITS, 1.0, top_k=5)) == 0.0


# -------------------------------------------------------------------------------------- the float32 trap


def heavy_tail_batch(rows: int, tail_tokens: int, tail_logit: float) -> torch.Tensor:
    """One head token at logit 0 and `tail_tokens` tokens at `tail_logit` (each ~1e-8 likely)."""
    logits = torch.full((rows, tail_tokens + 1), tail_logit)
    logits[:, 0] = 0.0
    return logits


def tail_hits(precision: str, batches: int, rows: int, tail_tokens: int, tail_logit: float) -> int:
    hits = 0
    logits = heavy_tail_batch(rows, tail_tokens, tail_logit)
    for batch in range(batches):  # a new seed per batch: independent draws without a huge logits tensor
        hits += int((sample_categorical(logits, seed=1000 + batch, precision=precision).tokens != 0).sum())
    return hits


@pytest.mark.slow
def test_float32_gumbel_undersamples_the_heavy_tail_and_float64_matches_it():
    """Float32 noise is capped at -log(-log(1 - 2^-24)) = 16.6, so a tail token 18 nats below the head only
    wins when the head's own noise is unusually low: about 90% of the exact tail mass is lost."""
    batches, rows, tail_tokens, tail_logit = 30, 1000, 1 << 16, -18.0
    tail_weight = tail_tokens * math.exp(tail_logit)
    exact_mass = tail_weight / (1.0 + tail_weight)
    expected = exact_mass * batches * rows  # ~30 hits
    standard_error = math.sqrt(expected * (1 - exact_mass))
    hits64 = tail_hits("float64", batches, rows, tail_tokens, tail_logit)
    hits32 = tail_hits("float32", batches, rows, tail_tokens, tail_logit)
    assert abs(hits64 - expected) < 3 * standard_error, (hits64, expected)
    assert hits32 < expected - 4 * standard_error, (hits32, expected)


# ------------------------------------------------------------------------------------------------- memory


def test_chunk_working_set_is_a_small_fraction_of_large_logits():
    rows, vocab = 4096, 50257
    logits_bytes = rows * vocab * 4
    working_set = rows_per_chunk(vocab) * vocab * WORKING_BYTES_PER_ELEMENT
    assert working_set <= logits_bytes / 4
    assert working_set <= CHUNK_ELEMENTS * WORKING_BYTES_PER_ELEMENT  # bounded whatever the number of rows
    assert rows_per_chunk(10**7) == 1  # never less than one row


def test_measured_peak_memory_stays_below_a_quarter_of_the_logits():
    """A fresh process samples 512 x 50257 float32 logits (103 MB); its peak RSS grows by < 1/4 of that."""
    # The peak is read as VmHWM after resetting it (clear_refs 5), not as ru_maxrss: the lifetime peak can
    # lie before the measurement (imports), and on a busy machine file-backed pages are reclaimed between
    # that peak and rss_before, which made the lifetime peak minus rss_before overstate the sampler's need.
    script = textwrap.dedent("""
        import torch
        from mdlm.kernels import sample_categorical

        def status_kb(field):
            line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
            return int(line.split()[1]) * 1024

        logits = torch.empty(512, 50257).normal_(generator=torch.Generator().manual_seed(0))
        sample_categorical(logits[:8], seed=0)  # warm up allocator and libraries
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size to the current one
        rss_before = status_kb("VmRSS")
        sample_categorical(logits, seed=1, top_k=50)
        print(status_kb("VmHWM") - rss_before, logits.numel() * 4)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    extra, logits_bytes = map(int, out.stdout.split())
    assert extra < logits_bytes / 4, (extra, logits_bytes)


# ------------------------------------------------------------------------------------ race bounds, workspace


def test_rows_raced_exactly_and_rows_settled_by_the_bounds_draw_the_same_tokens(monkeypatch):
    """The first hash bounds each race value; a row is settled by its largest bound unless another bound
    comes within RACE_BOUND_MARGIN, and then raced exactly. Forcing every row through either path gives
    the tokens of the written-out definition."""
    from mdlm.kernels import sampling_reference

    logits = reference_logits(300, 2000, seed=3)
    expected = explicit_gumbel_argmax(logits, 5, 0.8)
    for margin in (0.0, 1.0):  # 1.0: no bound is ever below the exact value times 0, every row is raced exactly
        monkeypatch.setattr(sampling_reference, "RACE_BOUND_MARGIN", margin)
        assert torch.equal(sample_categorical_reference(logits, temperature=0.8, seed=5).tokens, expected)


def test_ties_in_the_bounds_are_raced_exactly():
    """Equal logits: the race values differ by their noise only, so across many rows some bounds come
    close to the winner's value; those rows take the exact race and every draw still meets the definition."""
    logits = torch.zeros(4096, 3)
    assert torch.equal(sample_categorical_reference(logits, seed=2).tokens, explicit_gumbel_argmax(logits, 2))


def test_the_chunk_workspace_is_kept_between_calls_and_per_thread():
    import threading

    from mdlm.kernels.sampling_reference import _ChunkBuffers

    logits = reference_logits(64, 1000)
    sample_categorical_reference(logits, seed=0)
    first = _ChunkBuffers(1, 1000, "cpu").float64.data_ptr()
    sample_categorical_reference(logits, seed=1)
    assert _ChunkBuffers(1, 1000, "cpu").float64.data_ptr() == first  # no new allocation (no page faults)
    other = []
    thread = threading.Thread(target=lambda: other.append(_ChunkBuffers(1, 1000, "cpu").float64.data_ptr()))
    thread.start()
    thread.join()
    assert other[0] != first  # two threads never share buffers


def test_float32_race_bounds_inflated_by_the_rounding_allowance_bound_the_exact_values():
    """The bounds that settle most rows are float32; times (1 + BOUND_ROUNDING) they must still be at or
    above each entry's exact float64 race value w / -log u, including the first hashes whose 24 high bits
    are all ones (u_hi = 1, log 0) and weights float32 flushes to zero."""
    from mdlm.kernels.sampling_reference import BOUND_ROUNDING, MASK32, negative_race_bounds

    generator = torch.Generator().manual_seed(0)
    rows, vocab = 64, 4096
    h1 = torch.randint(0, 1 << 32, (rows, vocab), generator=generator, dtype=torch.int64)
    h1[:, :64] = MASK32 - torch.arange(64)  # high 24 bits all ones: u_hi = 1
    h1[:, 64:128] = torch.arange(64)  # the smallest uniforms
    h2 = torch.randint(0, 1 << 32, (rows, vocab), generator=generator, dtype=torch.int64)
    u = (((h1 >> 5) * (1 << 26) + (h2 >> 6)).double() + 0.5).mul(2.0 ** -53).clamp_max(U64_MAX)  # the spec's u
    logits = torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * 8
    logits[:, 128:192] = -200.0  # weights below float32's range
    weights = (logits - logits.amax(-1, keepdim=True)).exp()
    exact = weights / -u.log()
    workspace = torch.empty(rows, vocab, dtype=torch.float64)
    bounds = -negative_race_bounds(weights, workspace, _as_int32_bits(h1)).double()
    representable = weights >= torch.finfo(torch.float32).tiny
    assert bool((bounds * (1.0 + BOUND_ROUNDING) >= exact)[representable].all())
    # Flushed weights get bound 0, and they cannot win: the top entry's value is far above theirs.
    assert float(exact[~representable].max()) < 1e-22 < 0.026 < float(exact.amax(-1).min())
    assert bool((bounds[:, :64] > exact[:, :64] * 1e20).all())  # u_hi = 1: no finite bound, a huge one
    ratio = bounds[:, 192:] / exact[:, 192:]
    assert float(ratio.min()) > 1.0 - 2.0 ** -21 and float(ratio.median()) < 1.0 + 1e-5  # tight, not loose


def test_draws_without_statistics_give_the_same_tokens_and_logprob():
    logits = reference_logits(37, 301)
    for temperature in (0.0, 1.0, 0.7):
        full = sample_categorical_reference(logits, temperature=temperature, seed=4, chunk_elements=1000)
        bare = sample_categorical_reference(logits, temperature=temperature, seed=4, chunk_elements=1000,
                                            statistics=False)
        assert torch.equal(bare.tokens, full.tokens) and torch.equal(bare.logprob, full.logprob)
        assert bare.top1_logprob is None and bare.top2_logprob is None and bare.entropy is None
