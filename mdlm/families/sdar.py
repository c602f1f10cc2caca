"""SDAR (Cheng et al. 2025, "SDAR: A Synergistic Diffusion-AutoRegression Paradigm"; JetLM/SDAR-1.7B-Chat,
-4B-Chat, -8B-Chat): Qwen3-initialised block diffusion.

The published `modeling_sdar.py` is Qwen3's decoder (per-head q_norm / k_norm RMSNorm before the
rotary embedding, no attention biases, `head_dim` of its own) under Qwen3's weight names, called with
a block-causal mask: a query at position p sees the keys at positions of blocks <= p // block_size
(`block_size` in config.json, 4 for the released models). Its generation code caches the keys and
values of finished blocks (`store_kv=True`), which is exact under this attention; here that is the
exact block KV cache of the decoders (a transformers Cache passed as `past_key_values`).
"""

from __future__ import annotations

from transformers import Qwen3Config, Qwen3Model

from mdlm.families.base import NativeDiffusionLM
from mdlm.families.qwen import qwen_config

ARCHITECTURES = ("SDARForCausalLM",)
MASK_TOKEN_ID = 151669
WEIGHT_NAMES = ()  # the published names are transformers' Qwen3 names


class SDAR(NativeDiffusionLM):
    backbone_class = Qwen3Model
    attention = "block-causal"


def native_config(fields: dict, source="the checkpoint") -> Qwen3Config:
    config = qwen_config(Qwen3Config, fields, "SDAR", source, extra=("block_size",))
    config.block_size = int(fields.get("block_size", 4))
    return config
