"""LLaDA (Nie et al. 2025, "Large Language Diffusion Models"; GSAI-ML/LLaDA-8B-Base, -Instruct, LLaDA 1.5).

The published `modeling_llada.py` (OLMo-derived) with `block_type: "llama"` is a Llama decoder without
the causal mask: per block
    h = x + attn_out(Attention(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n))),  n = attn_norm(x)   (RMSNorm)
    y = h + ff_out(silu(ff_proj(m)) * up_proj(m)),                              m = ff_norm(h)
then ln_f and the head `ff_out` (or the embedding `wte` when `weight_tying`). Rotary positions use
`rope_theta` and rotate halves (as Llama). Its attention gets no mask at all, so a left-padded row
would attend to its padding; here the padding mask is honoured (the same row alone and in a batch give
the same logits). Config fields are OLMo's (d_model, n_heads, n_kv_heads, n_layers, mlp_hidden_size or
mlp_ratio, embedding_size, max_sequence_length, rms_norm_eps, rope_theta, include_bias, weight_tying).
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaModel

from mdlm.families.base import NativeDiffusionLM, require

ARCHITECTURES = ("LLaDAModelLM",)
MASK_TOKEN_ID = 126336

# published name -> ours (transformers Llama names)
WEIGHT_NAMES = (
    (r"model\.transformer\.wte\.weight", r"model.embed_tokens.weight"),
    (r"model\.transformer\.ln_f\.weight", r"model.norm.weight"),
    (r"model\.transformer\.ff_out\.weight", r"lm_head.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.(q|k|v)_proj\.(weight|bias)", r"model.layers.\1.self_attn.\2_proj.\3"),
    (r"model\.transformer\.blocks\.(\d+)\.attn_out\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_proj\.(weight|bias)", r"model.layers.\1.mlp.gate_proj.\2"),
    (r"model\.transformer\.blocks\.(\d+)\.up_proj\.(weight|bias)", r"model.layers.\1.mlp.up_proj.\2"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_out\.(weight|bias)", r"model.layers.\1.mlp.down_proj.\2"),
)


class LLaDA(NativeDiffusionLM):
    backbone_class = LlamaModel
    attention = "bidirectional"


def native_config(fields: dict, source="the checkpoint") -> LlamaConfig:
    """The published LLaDA config.json fields as a LlamaConfig (the published names are kept on it too)."""
    family = "LLaDA"
    require(fields.get("block_type", "llama") == "llama", source, family, f"block_type {fields.get('block_type')!r}")
    require(fields.get("layer_norm_type", "rms") == "rms", source, family,
            f"layer_norm_type {fields.get('layer_norm_type')!r}")
    require(fields.get("activation_type", "silu") in ("silu", "swiglu"), source, family,
            f"activation_type {fields.get('activation_type')!r}")
    for option in ("alibi", "attention_layer_norm", "scale_logits", "input_emb_norm", "include_qkv_bias"):
        require(not fields.get(option), source, family, f"{option}: true")
    require(fields.get("rope", True), source, family, "rope: false")
    d_model, heads = int(fields["d_model"]), int(fields["n_heads"])
    hidden = fields.get("mlp_hidden_size") or int(fields.get("mlp_ratio", 4)) * d_model
    bias = bool(fields.get("include_bias", False))
    config = LlamaConfig(
        vocab_size=int(fields.get("embedding_size") or fields["vocab_size"]), hidden_size=d_model,
        intermediate_size=int(hidden), num_hidden_layers=int(fields["n_layers"]), num_attention_heads=heads,
        num_key_value_heads=int(fields.get("n_kv_heads") or heads), hidden_act="silu",
        max_position_embeddings=int(fields.get("max_sequence_length", 4096)),
        rms_norm_eps=float(fields.get("rms_norm_eps", 1e-5)), rope_theta=float(fields.get("rope_theta", 10000.0)),
        attention_bias=bias, mlp_bias=bias, tie_word_embeddings=bool(fields.get("weight_tying", False)),
        pad_token_id=fields.get("pad_token_id"), bos_token_id=fields.get("bos_token_id"),
        eos_token_id=fields.get("eos_token_id"))
    config.max_sequence_length = config.max_position_embeddings
    config.mask_token_id = fields.get("mask_token_id", MASK_TOKEN_ID)
    return config
