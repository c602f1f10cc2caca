"""The Qwen-initialised families' config: a published config.json (Qwen2 / Qwen3 field names) as the
transformers config of the same architecture, with what the diffusion family adds kept on it."""

from __future__ import annotations

from mdlm.families.base import require

QWEN_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
               "rope_theta", "attention_bias", "attention_dropout", "tie_word_embeddings", "pad_token_id",
               "bos_token_id", "eos_token_id")


def qwen_config(config_class, fields: dict, family: str, source, extra=()):
    require(not fields.get("rope_scaling"), source, family, f"rope_scaling {fields.get('rope_scaling')!r}")
    require(not fields.get("use_sliding_window"), source, family, "use_sliding_window: true")
    require(fields.get("hidden_act", "silu") == "silu", source, family, f"hidden_act {fields.get('hidden_act')!r}")
    kwargs = {k: fields[k] for k in QWEN_FIELDS if k in fields and fields[k] is not None}
    config = config_class(**kwargs, use_sliding_window=False)
    for name in ("mask_token_id", *extra):
        if name in fields:
            setattr(config, name, fields[name])
    return config
