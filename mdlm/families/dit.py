"""MDLM-OWT (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models";
kuleshov-group/mdlm-owt) and BD3-LM (Arriola et al. 2025, "Block Diffusion"; kuleshov-group/bd3lm-owt-*):
the diffusion transformer (DiT) of kuleshov-group/mdlm `models/dit.py` and bd3lms `models/dit.py`.

Per block (adaLN-Zero): the conditioning c = silu(sigma_map(sigma)) gives shift/scale/gate for the
attention and the MLP,
    h = x + gate_msa * attn_out(Attention(RoPE(qkv(modulate(norm1(x), shift_msa, scale_msa)))))
    y = h + gate_mlp * mlp(modulate(norm2(h), shift_mlp, scale_mlp)),  mlp = Linear, GELU(tanh), Linear
with LayerNorm without bias (weight only, float32), rotary positions on q and k (halves rotated,
base 10000), then a final modulated LayerNorm and a linear head with bias. sigma_map embeds the noise
level as [cos, sin] of 256 frequencies through Linear-SiLU-Linear. MDLM-OWT attends bidirectionally;
BD3-LM in sample mode block-causally over position blocks of `block_size`. Decoding is time-agnostic
here (sigma = 0, the published configs' `time_conditioning: false`).

Published layout (the Hugging Face wrappers `MDLM` / `BD3LM` hold the DiT as `backbone`):
`backbone.vocab_embed.embedding`, `backbone.sigma_map.mlp.{0,2}.{weight,bias}`,
`backbone.blocks.N.{norm1,norm2}.weight`, `backbone.blocks.N.attn_qkv.weight`, `.attn_out.weight`,
`.mlp.{0,2}.{weight,bias}`, `.adaLN_modulation.{weight,bias}`, `backbone.output_layer.norm_final.weight`,
`.linear.{weight,bias}`, `.adaLN_modulation.{weight,bias}`; config fields hidden_dim, cond_dim, n_blocks,
n_heads, model_length, vocab_size, block_size (BD3-LM). The rotary `inv_freq` is recomputed, never read.

Unlike the published code, the module takes an attention mask and position ids (a left-padded row gives
its logits alone) and a transformers Cache (the exact block KV cache of BD3-LM, Fast-dLLM's caches of
MDLM-OWT), so it decodes through the same paths as the other native families.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig

from mdlm.families.base import DiffusionLMOutput, default_positions

MASK_TOKEN_ID = 50257  # GPT-2's vocabulary + the mask
WEIGHT_NAMES = ((r"backbone\.rotary_emb\.inv_freq", ""),)  # the rotary frequencies are computed, not loaded


class WeightOnlyLayerNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.layer_norm(x.float(), [x.shape[-1]]).to(x.dtype) * self.weight


class TimestepEmbedder(nn.Module):
    def __init__(self, cond_dim: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, t):
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], -1).to(self.mlp[0].weight.dtype))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, cond_dim: int, index: int):
        super().__init__()
        self.heads, self.index = heads, index
        self.norm1, self.norm2 = WeightOnlyLayerNorm(dim), WeightOnlyLayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)

    def forward(self, x, c, cos, sin, mask, cache):
        B, L, _ = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, 2)
        q, k, v = self.attn_qkv(modulate(self.norm1(x), shift_msa, scale_msa)).view(B, L, 3, self.heads, -1).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.index)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + gate_msa * self.attn_out(attended.transpose(1, 2).reshape(B, L, -1))
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class DiTBackbone(nn.Module):
    def __init__(self, config):
        super().__init__()
        dim = config.hidden_dim
        self.head_dim = dim // config.n_heads
        self.vocab_embed = nn.Module()
        self.vocab_embed.embedding = nn.Parameter(torch.empty(config.vocab_size, dim))
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, config.n_heads, config.cond_dim, i) for i in range(config.n_blocks))
        self.output_layer = nn.Module()
        self.output_layer.norm_final = WeightOnlyLayerNorm(dim)
        self.output_layer.linear = nn.Linear(dim, config.vocab_size)
        self.output_layer.adaLN_modulation = nn.Linear(config.cond_dim, 2 * dim)


class DiT(nn.Module):
    """MDLM-OWT's / BD3-LM's DiT (see the module docstring): forward(input_ids, attention_mask=None,
    position_ids=None, past_key_values=None, use_cache=False, timesteps=None) -> `.logits`."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.attention = "block-causal" if getattr(config, "block_size", None) else "bidirectional"
        self.backbone = DiTBackbone(config)

    def get_output_embeddings(self):
        return self.backbone.output_layer.linear

    def get_input_embeddings(self):
        return self.backbone.vocab_embed

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                timesteps=None, **unused):
        backbone = self.backbone
        if position_ids is None:
            position_ids = default_positions(input_ids, attention_mask)
        mask = attention_mask
        if mask is None or mask.dim() == 2:
            valid = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
            mask = valid[:, None, None, :].expand(-1, 1, input_ids.shape[1], -1)
            if self.attention == "block-causal":
                blocks = position_ids // int(self.config.block_size)
                mask = mask & (blocks[:, None, None, :] <= blocks[:, None, :, None])
            mask = mask | torch.eye(input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
        sigma = torch.zeros(input_ids.shape[0], device=input_ids.device) if timesteps is None else timesteps
        c = F.silu(backbone.sigma_map(sigma))
        inv_freq = 1.0 / (10000 ** (torch.arange(0, backbone.head_dim, 2, device=input_ids.device).float()
                                    / backbone.head_dim))
        angles = position_ids[:, None, :, None].float() * inv_freq  # (B, 1, L, D/2)
        angles = torch.cat([angles, angles], -1)
        x = backbone.vocab_embed.embedding[input_ids]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        cache = past_key_values if use_cache or past_key_values is not None else None
        for block in backbone.blocks:
            x = block(x, c, cos, sin, mask, cache)
        out = backbone.output_layer
        shift, scale = out.adaLN_modulation(c)[:, None].chunk(2, 2)
        logits = out.linear(modulate(out.norm_final(x), shift, scale))
        return DiffusionLMOutput(logits=logits, past_key_values=cache if use_cache else None)


def native_config(fields: dict, source="the checkpoint", block_causal: bool = False) -> PretrainedConfig:
    config = PretrainedConfig(vocab_size=int(fields["vocab_size"]))
    for name in ("hidden_dim", "cond_dim", "n_blocks", "n_heads"):
        setattr(config, name, int(fields[name]))
    config.max_position_embeddings = int(fields.get("model_length", 1024))
    config.model_length = config.max_position_embeddings
    config.block_size = int(fields.get("block_size", 4)) if block_causal else None
    config.mask_token_id = fields.get("mask_token_id")
    return config
