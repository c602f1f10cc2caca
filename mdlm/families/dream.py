"""Dream (Ye et al. 2025, "Dream 7B"; Dream-org/Dream-v0-Base-7B, -Instruct-7B) and DiffuCoder (Gong et
al. 2025; apple/DiffuCoder-7B-Base, -Instruct, -cpGRPO): Qwen2.5-initialised masked diffusion LMs.

The published `modeling_dream.py` is Qwen2's decoder (RMSNorm, SwiGLU, rotary attention with q/k/v
biases, grouped-query heads) called with a bidirectional attention mask, weights under Qwen2's names
(`model.layers.N.self_attn.q_proj.weight`, ..., `lm_head.weight`). Its logits keep the AR layout
(column i predicts token i + 1); the generation code shifts them right by one, which here is the family
profile's `shifted_logits` (the module returns them as published).
"""

from __future__ import annotations

from transformers import Qwen2Config, Qwen2Model

from mdlm.families.base import NativeDiffusionLM
from mdlm.families.qwen import qwen_config

ARCHITECTURES = ("DreamModel",)
MASK_TOKEN_ID = 151666
WEIGHT_NAMES = ()  # the published names are transformers' Qwen2 names


class Dream(NativeDiffusionLM):
    backbone_class = Qwen2Model
    attention = "bidirectional"


def native_config(fields: dict, source="the checkpoint") -> Qwen2Config:
    return qwen_config(Qwen2Config, fields, "Dream", source)
