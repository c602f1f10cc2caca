"""Torch reference of the cached attention step: scaled dot-product attention (SDPA) of the active
queries against cached + new keys/values under a boolean mask, the fallback of `attention_triton.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cached_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA with a boolean mask (True = may attend); a query row allowed no key gets zeros (SDPA: NaN)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return torch.nan_to_num(out) if mask is not None else out
