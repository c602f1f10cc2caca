"""Triton kernel of the float64-safe Gumbel-max categorical draw (Zheng et al. 2024, "Masked Diffusion
Models are Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical Sampling").

One program per row and one pass over the vocabulary in blocks of BLOCK entries, keeping in registers:
  - the running max m, s = sum exp(x - m) and a = sum exp(x - m) (x - m) (online softmax; entropy
    H = log s - a / s, so the same pass returns log p of any entry, the top-1/top-2 and the entropy);
  - the two largest logits (top-1 with its first index: the temperature-0 draw);
  - the running argmax of x / T + G in float64, G = -log(-log u), u the 53-bit counter-based uniform of
    (seed, row, token id): murmur3's fmix32 in uint32, exactly `hash_uniform` of the torch reference, so
    both draw the same token whatever BLOCK is.
Top-k / top-p come as a per-row logit threshold computed by a torch pre-pass (`filter_threshold`, the
function the reference uses, chunked over rows; the nucleus is that of the tempered distribution, as in
transformers and vLLM): entries below it get score -inf.

Only core `tl` math (exp, log, max, argmax, integer ops), no libdevice-only function, so the kernel runs
under TRITON_INTERPRET=1 on CPU tensors, as the tests do. The float32 comparison path exists only in torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mdlm.kernels.sampling_reference import (
    CategoricalSample, MASK32, check_sampling_arguments, filter_threshold, resolve_seed,
)

DEFAULT_BLOCK = 1024
# Rows per top-k/top-p pre-pass: its sort needs a float32 copy and int64 indices of these rows only.
THRESHOLD_CHUNK_ELEMENTS = 1 << 24


@triton.jit
def _fmix32(x):
    """murmur3's 32-bit finaliser on uint32 (multiplications wrap modulo 2^32, shifts are logical)."""
    x ^= x >> 16
    x *= 0x85EBCA6B
    x ^= x >> 13
    x *= 0xC2B2AE35
    x ^= x >> 16
    return x


# seed is never specialised (a seed of 1 would become a constexpr); the temperature comes as a float64
# tensor because Python floats reach kernels as float32.
@triton.jit(do_not_specialize=["seed"])
def _categorical_row_kernel(
    logits_ptr, row_stride, threshold_ptr, tokens_ptr, stats_ptr, vocab, seed, temperature_ptr,
    HAS_THRESHOLD: tl.constexpr, GREEDY: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * row_stride
    row_key = _fmix32(row.to(tl.uint32) * 0x9E3779B9 + seed.to(tl.uint32))
    if HAS_THRESHOLD:
        threshold = tl.load(threshold_ptr + row)
    temperature = tl.load(temperature_ptr)
    neg_inf = float("-inf")
    # Running state. The float64 scalars start from float64 zeros so that loop-carried types stay fixed.
    zero = tl.zeros([], dtype=tl.float64)
    m = zero + neg_inf  # max logit
    s = zero  # sum exp(x - m)
    a = zero  # sum exp(x - m) (x - m)
    top1 = zero + neg_inf
    top1_index = tl.zeros([], dtype=tl.int32)
    top2 = zero + neg_inf
    best_score = zero + neg_inf
    best_index = tl.zeros([], dtype=tl.int32)
    saw_nan = tl.zeros([], dtype=tl.int32)
    offsets = tl.arange(0, BLOCK)
    for start in range(0, vocab, BLOCK):
        cols = start + offsets
        in_vocab = cols < vocab
        x32 = tl.load(row_ptr + cols, mask=in_vocab, other=neg_inf).to(tl.float32)
        x = x32.to(tl.float64)
        finite = x > neg_inf
        saw_nan = tl.maximum(saw_nan, tl.max((x != x).to(tl.int32), axis=0))

        # Online softmax: rescale the sums to the new max.
        block_max = tl.max(x, axis=0)
        m_new = tl.maximum(m, block_max)
        m_ref = tl.where(m_new > neg_inf, m_new, 0.0)  # reference point: 0 while every entry is -inf
        shifted = tl.where(finite, x - m_ref, neg_inf)
        weights = tl.exp(shifted)
        rescale = tl.exp(m - m_ref)
        a = tl.where(s > 0, rescale * (a + (m - m_ref) * s), 0.0) + tl.sum(tl.where(finite, weights * shifted, 0.0), axis=0)
        s = tl.where(s > 0, rescale * s, 0.0) + tl.sum(weights, axis=0)
        m = m_new

        # Top-2 logits; top-1 with its first index (ties keep the earlier index, as torch.argmax).
        block_top1_index = tl.argmax(x, axis=0)
        block_top2 = tl.max(tl.where(offsets == block_top1_index, neg_inf, x), axis=0)
        top2 = tl.maximum(tl.minimum(top1, block_max), tl.maximum(top2, block_top2))
        better = block_max > top1
        top1_index = tl.where(better, start + block_top1_index, top1_index)
        top1 = tl.maximum(top1, block_max)

        if not GREEDY:
            # u from two 32-bit hashes of (row key, 2 col) and (row key, 2 col + 1): 27 + 26 bits.
            cols32 = cols.to(tl.uint32)
            high = _fmix32(row_key ^ (cols32 * 2)) >> 5
            low = _fmix32(row_key ^ (cols32 * 2 + 1)) >> 6
            k = high.to(tl.float64) * 67108864.0 + low.to(tl.float64)
            u = (k + 0.5) * 1.1102230246251565e-16  # 2^-53
            u = tl.where(u < 1.0, u, k * 1.1102230246251565e-16)  # k = 2^53 - 1 rounds to 1: use 1 - 2^-53
            gumbel = -tl.log(-tl.log(u))
            score = x / temperature + gumbel
            keep = finite
            if HAS_THRESHOLD:
                keep = keep & (x32 >= threshold)
            score = tl.where(keep, score, neg_inf)
            block_best = tl.max(score, axis=0)
            block_best_index = tl.argmax(score, axis=0)
            improved = block_best > best_score
            best_index = tl.where(improved, start + block_best_index, best_index)
            best_score = tl.maximum(best_score, block_best)

    token = top1_index if GREEDY else best_index
    log_total = tl.log(s)
    chosen = tl.load(row_ptr + token).to(tl.float32).to(tl.float64)
    tl.store(tokens_ptr + row, token.to(tl.int64))
    tl.store(stats_ptr + row * 4 + 0, chosen - m - log_total)
    tl.store(stats_ptr + row * 4 + 1, tl.where(saw_nan > 0, float("nan"), top1 - m - log_total))
    tl.store(stats_ptr + row * 4 + 2, top2 - m - log_total)
    tl.store(stats_ptr + row * 4 + 3, log_total - a / s)


def row_thresholds(flat: torch.Tensor, top_k, top_p, temperature: float = 1.0) -> torch.Tensor | None:
    """filter_threshold over row chunks (its sort would otherwise copy all the logits)."""
    if filter_threshold(flat[:1], top_k, top_p, temperature) is None:
        return None
    rows = max(1, THRESHOLD_CHUNK_ELEMENTS // flat.shape[-1])
    return torch.cat([filter_threshold(flat[i:i + rows], top_k, top_p, temperature)
                      for i in range(0, flat.shape[0], rows)])


def sample_categorical_triton(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                              top_p: float | None = None, seed: int | None = None,
                              generator: torch.Generator | None = None, block: int = DEFAULT_BLOCK,
                              num_warps: int = 4) -> CategoricalSample:
    """The float64 categorical draw of `sample_categorical`, one Triton program per row."""
    check_sampling_arguments(logits, temperature, top_k, top_p, "float64")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    seed = resolve_seed(seed, generator) & MASK32
    lead, V = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, V)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    if not flat.is_cuda and flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # the interpreter mishandles raw bf16/fp16 loads; the values are unchanged
    R = flat.shape[0]
    tokens = torch.empty(R, dtype=torch.long, device=flat.device)
    stats = torch.empty(R, 4, dtype=torch.float64, device=flat.device)
    if R:
        threshold = row_thresholds(flat, top_k, top_p, temperature)
        _categorical_row_kernel[(R,)](
            flat, flat.stride(0), threshold if threshold is not None else stats, tokens, stats, V, seed,
            torch.tensor([temperature if temperature > 0 else 1.0], dtype=torch.float64, device=flat.device),
            HAS_THRESHOLD=threshold is not None, GREEDY=temperature == 0, BLOCK=block, num_warps=num_warps,
        )
        bad = ~torch.isfinite(stats[:, 1])
        if bool(bad.any()):
            raise ValueError(f"row {int(bad.nonzero()[0, 0])} of the logits has no finite maximum (all -inf, "
                             "+inf or NaN); every row needs at least one finite logit and no NaN/+inf")
    return CategoricalSample(tokens.view(lead), *(stats[:, i].reshape(lead) for i in range(4)))
