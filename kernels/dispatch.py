"""The dispatch functions `mdlm.kernels` exports; see the package docstring."""

from __future__ import annotations

import os

import torch

from mdlm.kernels.attention_reference import cached_attention_reference
from mdlm.kernels.sampling_reference import (CategoricalSample, categorical_probs, filter_logits,
                                             sample_categorical_reference)

__all__ = ["CategoricalSample", "sample_categorical", "sample_categorical_reference", "filter_logits",
           "categorical_probs", "cached_attention", "cached_attention_reference", "triton_available", "BACKENDS"]

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _use_triton(tensor: torch.Tensor, backend: str | None, env_var: str) -> bool:
    backend = backend or os.environ.get(env_var) or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (argument or {env_var}), got {backend!r}")
    if backend == "torch":
        return False
    if backend == "auto":
        return tensor.is_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("backend='triton' was forced but triton does not import; install triton (Linux) or "
                           f"use backend='torch' / unset {env_var}")
    if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
                           "before triton is first imported, or move the tensors to CUDA, or use backend='torch'")
    return True


def sample_categorical(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    precision: str = "float64",
    backend: str | None = None,
    statistics: bool = True,
) -> CategoricalSample:
    """Draw one token per row of `logits` (..., V) from softmax(logits / temperature) after top-k/top-p
    (the nucleus is taken on the tempered distribution, as transformers and vLLM do).

    temperature=0 is argmax. With neither `seed` nor `generator`, torch's global generator picks the
    seed. The same seed gives the same tokens on every backend. `precision="float32"` (24-bit uniforms,
    the truncated noise of a float32 Gumbel-max) exists for comparison and always runs in torch.
    `statistics=False` skips the top-1/top-2 log-probabilities and the entropy (None in the result; the
    drawn token's log-probability stays): the draw is the same, and the torch path about 10% cheaper."""
    if _use_triton(logits, backend, "MDLM_SAMPLER_BACKEND") and precision == "float64":
        from mdlm.kernels.sampling_triton import sample_categorical_triton

        sample = sample_categorical_triton(logits, temperature, top_k, top_p, seed, generator)
        if not statistics:  # the kernel computes them in the same pass anyway
            sample.top1_logprob = sample.top2_logprob = sample.entropy = None
        return sample
    return sample_categorical_reference(logits, temperature, top_k, top_p, seed, generator, precision,
                                        statistics=statistics)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                     backend: str | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) masked) v for q (B, H, Lq, D), k/v (B, H, Lk, D) (cached keys first) and a
    boolean mask broadcastable to (B, H, Lq, Lk), True = may attend. A query allowed no key gets zeros.

    The Triton kernel is forward-only: when autograd needs gradients of q/k/v, SDPA runs instead."""
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if _use_triton(q, backend, "MDLM_ATTENTION_BACKEND") and not needs_grad:
        from mdlm.kernels.attention_triton import cached_attention_triton

        return cached_attention_triton(q, k, v, mask)
    return cached_attention_reference(q, k, v, mask)
