"""Tiny random stand-ins for the public diffusion LMs whose modeling code ships with their checkpoints.

Each reproduces its family's published forward signature (the keyword arguments it accepts: passing
another raises TypeError, as the real code would), its output form, its logit shift and its attention
convention, around one small rotary transformer (`TinyCore`, which grows a transformers DynamicCache in
place as Hugging Face models do). `reference_logits(family, model, ids)` calls each one the way the
family's own generation code does, independently of `mdlm.decode.families`, so that the adapter is
checked against it. Nothing is downloaded: the weights are random and the configs are built here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput


def family_config(architecture: str, model_type: str, vocab_size: int, **fields) -> PretrainedConfig:
    config = PretrainedConfig(architectures=[architecture], vocab_size=vocab_size, max_position_embeddings=64,
                              **fields)
    config.model_type = model_type
    return config


def rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, H, L, D) at positions (B, L)."""
    half = x.shape[-1] // 2
    freqs = 1.0 / (100.0 ** (torch.arange(half, dtype=torch.float32) / half))
    angle = positions[:, None, :, None].float() * freqs  # (B, 1, L, half)
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


class TinyCore(nn.Module):
    """Embedding, pre-norm attention + MLP blocks with rotary positions, LM head."""

    def __init__(self, vocab_size: int, hidden: int = 32, heads: int = 2, layers: int = 2, sharpness: float = 3.0):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab_size, hidden)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(hidden), "qkv": nn.Linear(hidden, 3 * hidden), "out": nn.Linear(hidden, hidden),
            "norm2": nn.LayerNorm(hidden), "up": nn.Linear(hidden, 2 * hidden), "down": nn.Linear(2 * hidden, hidden),
        }) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab_size)
        with torch.no_grad():  # large weights: conditionals that depend strongly on the context
            for p in self.parameters():
                if p.dim() == 2:
                    p.mul_(sharpness)

    def forward(self, ids, positions, attention_mask=None, past_key_values=None):
        """attention_mask: None, or (B, 1, Lq, Lk) bool (True = attend) or additive float."""
        B, L = ids.shape
        x = self.embed(ids)
        for index, block in enumerate(self.blocks):
            q, k, v = block["qkv"](block["norm1"](x)).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            q, k = rotate(q, positions), rotate(k, positions)
            if past_key_values is not None:
                k, v = past_key_values.update(k, v, index)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
            x = x + block["out"](attended.transpose(1, 2).reshape(B, L, -1))
            x = x + block["down"](F.gelu(block["up"](block["norm2"](x))))
        return self.lm_head(self.norm(x))


class TinyFamilyModel(nn.Module):
    def __init__(self, config: PretrainedConfig, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = config
        self.core = TinyCore(config.vocab_size)

    def get_output_embeddings(self):
        return self.core.lm_head


def key_mask(attention_mask_2d, length_q):
    """(B, L) 0/1 padding mask -> (B, 1, Lq, L) bool (padding keys hidden)."""
    return attention_mask_2d.bool()[:, None, None, :].expand(-1, 1, length_q, -1)


class LLaDALike(TinyFamilyModel):
    """LLaDA / LLaDA-MoE: bidirectional, a 2-D padding mask, no position_ids argument (rotary positions
    are the columns), `.logits`."""

    def forward(self, input_ids, input_embeddings=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=False, output_attentions=False,
                output_hidden_states=None, return_dict=None):
        columns = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        mask = None if attention_mask is None else key_mask(attention_mask, input_ids.shape[1])
        return CausalLMOutputWithPast(logits=self.core(input_ids, columns, mask))


class DreamLike(TinyFamilyModel):
    """Dream / DiffuCoder: a 4-D bool mask and position ids; `.logits` in the AR layout (column i holds
    the prediction of token i + 1), which Dream's generation code shifts right by one."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None, num_logits_to_keep=0):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        if attention_mask is not None and attention_mask.dim() != 4:
            raise ValueError("this model's SDPA path takes a 4-D attention mask")
        return MaskedLMOutput(logits=self.core(input_ids, position_ids, attention_mask))


class BlockDiffusionLike(TinyFamilyModel):
    """LLaDA2 (additive 4-D mask) / SDAR (bool 4-D mask): the caller builds the block-causal mask, gives
    position ids and a transformers Cache (`past_key_values`, grown in place)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None):
        if attention_mask is None or attention_mask.dim() != 4:
            raise ValueError("block diffusion needs the caller's 4-D block-causal attention mask")
        if not use_cache:
            past_key_values = None
        logits = self.core(input_ids, position_ids, attention_mask, past_key_values)
        return CausalLMOutputWithPast(logits=logits, past_key_values=past_key_values)


class MDLMOWTLike(TinyFamilyModel):
    """MDLM-OWT: no attention mask, a `timesteps` input, a plain tensor out (return_dict unset), raw
    logits (its sampler applies SUBS)."""

    def forward(self, input_ids=None, timesteps=None, output_hidden_states=None, return_dict=None):
        logits = self.core(input_ids, torch.arange(input_ids.shape[1]).expand_as(input_ids))
        return MaskedLMOutput(logits=logits) if return_dict else logits


class BD3LMLike(TinyFamilyModel):
    """BD3-LM: `timesteps`, `sample_mode` / `store_kv`; in sample mode the model itself applies
    block-causal attention of config.block_size over the sequence it is given; a tensor out."""

    def forward(self, input_ids=None, timesteps=None, sample_mode=False, store_kv=False,
                output_hidden_states=None, return_dict=None):
        if not sample_mode:
            raise ValueError("outside sample mode BD3-LM expects the training input x_t concatenated with x_0")
        L = input_ids.shape[1]
        block = torch.arange(L) // self.config.block_size
        mask = (block[None, :] <= block[:, None])[None, None]
        logits = self.core(input_ids, torch.arange(L).expand_as(input_ids), mask)
        return MaskedLMOutput(logits=logits) if return_dict else logits


def block_causal_mask(length: int, block_size: int, additive: bool, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, L, L) block-causal mask as LLaDA2 (additive: 0 / -inf) and SDAR (1 / 0) build it."""
    blocks = -(-length // block_size)
    allowed = torch.tril(torch.ones(blocks, blocks)).repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    allowed = allowed[:length, :length][None, None]
    return allowed.log().to(dtype) if additive else allowed.bool()


def reference_logits(family: str, model, ids: torch.Tensor, mask_id: int, block_size: int | None = None):
    """(B, L, V) logits of full-valid rows as the family's own generation code reads them, mask at -inf."""
    with torch.no_grad():
        if family in ("llada", "llada-moe"):
            logits = model(ids).logits
        elif family == "dream":
            raw = model(ids, attention_mask=None, position_ids=None).logits
            logits = torch.cat([raw[:, :1], raw[:, :-1]], 1)
        elif family in ("llada2", "sdar"):
            mask = block_causal_mask(ids.shape[1], block_size, additive=family == "llada2")
            logits = model(ids, attention_mask=mask, position_ids=torch.arange(ids.shape[1]).expand_as(ids)).logits
        elif family == "mdlm-owt":
            logits = model(ids, timesteps=torch.zeros(ids.shape[0]))
        elif family == "bd3lm":
            logits = model(ids, timesteps=torch.zeros(ids.shape[0]), sample_mode=True, store_kv=False)
        elif family == "roberta":  # RoBERTa numbers the positions of non-pad tokens from padding_idx + 1
            positions = torch.arange(ids.shape[1]).expand_as(ids) + model.config.pad_token_id + 1
            logits = model(input_ids=ids, position_ids=positions).logits
        else:  # the other transformers masked LMs
            logits = model(input_ids=ids).logits
    logits = logits.float().clone()
    logits[..., mask_id] = float("-inf")
    return logits
