"""Triton kernel of the cached attention step (flash-attention style forward: Dao et al. 2022,
"FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness").

The queries of the active positions (a block being denoised) attend to the cached keys/values of earlier
positions followed by their own, under a boolean mask (block-causal structure, padding of left-padded
batches, any custom pattern). One program per (batch, head, block of BLOCK_Q queries) loops over the keys in
blocks of BLOCK_K with an online softmax (running max m, running sum l, rescaled accumulator), all in fp32.
Masked scores are -inf; a query allowed no key at all returns zeros (SDPA returns NaN there).

The mask is read through its strides, so a (B, 1, Lq, Lk) mask broadcast over heads costs no copy. Only
core `tl` operations, so the kernel runs under TRITON_INTERPRET=1 on CPU (tested against SDPA).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _cached_attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr,
    sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
    sm_b, sm_h, sm_q, sm_k, so_b, so_h, so_l, so_d,
    heads, q_len, k_len, head_dim, scale,
    HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    batch = tl.program_id(1) // heads
    head = tl.program_id(1) % heads
    queries = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, BLOCK_D)
    key_offsets = tl.arange(0, BLOCK_K)
    query_ok = queries < q_len
    dim_ok = dims < head_dim

    q = tl.load(q_ptr + batch * sq_b + head * sq_h + queries[:, None] * sq_l + dims[None, :] * sq_d,
                mask=query_ok[:, None] & dim_ok[None, :], other=0.0)
    m = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for start in range(0, k_len, BLOCK_K):
        keys = start + key_offsets
        key_ok = keys < k_len
        k_t = tl.load(k_ptr + batch * sk_b + head * sk_h + keys[None, :] * sk_l + dims[:, None] * sk_d,
                      mask=key_ok[None, :] & dim_ok[:, None], other=0.0)  # (BLOCK_D, BLOCK_K)
        if IEEE:
            scores = tl.dot(q, k_t, input_precision="ieee")
        else:
            scores = tl.dot(q, k_t)
        scores = scores * scale
        allowed = query_ok[:, None] & key_ok[None, :]
        if HAS_MASK:
            pattern = tl.load(mask_ptr + batch * sm_b + head * sm_h + queries[:, None] * sm_q + keys[None, :] * sm_k,
                              mask=allowed, other=0)
            allowed = allowed & (pattern != 0)
        scores = tl.where(allowed, scores, float("-inf"))

        m_new = tl.maximum(m, tl.max(scores, axis=1))
        m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)  # 0 while a row has seen no allowed key
        p = tl.exp(scores - m_ref[:, None])
        rescale = tl.exp(m - m_ref)
        l = l * rescale + tl.sum(p, axis=1)
        v = tl.load(v_ptr + batch * sv_b + head * sv_h + keys[:, None] * sv_l + dims[None, :] * sv_d,
                    mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
        if IEEE:
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    tl.store(out_ptr + batch * so_b + head * so_h + queries[:, None] * so_l + dims[None, :] * so_d,
             out.to(out_ptr.dtype.element_ty), mask=query_ok[:, None] & dim_ok[None, :])


def cached_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                            block_q: int = 32, block_k: int = 32) -> torch.Tensor:
    """q (B, H, Lq, D), k/v (B, H, Lk, D), mask broadcastable to (B, H, Lq, Lk) bool (True = may attend)."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"expected q (B, H, Lq, D) and k, v (B, H, Lk, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    out_dtype = q.dtype
    if not q.is_cuda and q.dtype != torch.float32:  # the interpreter mishandles raw bf16/fp16 loads
        q, k, v = q.float(), k.float(), v.float()
    out = torch.empty(B, H, Lq, D, dtype=q.dtype, device=q.device)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        mask = torch.broadcast_to(mask, (B, H, Lq, Lk)).view(torch.uint8)
        mask_strides = mask.stride()
    else:
        mask_strides = (0, 0, 0, 0)
    grid = (triton.cdiv(Lq, block_q), B * H)
    _cached_attention_kernel[grid](
        q, k, v, mask if mask is not None else q, out,
        *q.stride(), *k.stride(), *v.stride(), *mask_strides, *out.stride(),
        H, Lq, Lk, D, 1.0 / math.sqrt(D),
        HAS_MASK=mask is not None, IEEE=q.dtype == torch.float32,
        BLOCK_Q=block_q, BLOCK_K=block_k, BLOCK_D=max(16, triton.next_power_of_2(D)),
    )
    return out.to(out_dtype)
