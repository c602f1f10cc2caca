"""Model configuration and the named size presets (`tiny`, `small`, `gpt2`)."""

from __future__ import annotations

from transformers import PretrainedConfig

ATTENTION_MODES = ("bidirectional", "causal", "block-causal")

# Presets of the backbone. `tiny` trains in seconds (tests); `small` learns visible structure of
# Python in about half an hour on 2 CPU cores; `gpt2` is the GPT-2-small shape for GPU users.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                 max_position_embeddings=64),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  max_position_embeddings=256),
    "gpt2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=1024),
}


class MDLMConfig(PretrainedConfig):
    """Configuration of the time-agnostic masked transformer.

    `attention` picks the structural attention pattern: `bidirectional` (the masked diffusion model),
    `causal` (the autoregressive baseline, same backbone) or `block-causal` (each block of `block_size`
    positions attends to itself and earlier blocks; exact key/value caching of finished blocks).
    `causal=True` is accepted as a shorthand for `attention="causal"`.
    """

    model_type = "mdlm"

    def __init__(
        self,
        vocab_size: int = 4096,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 1024,
        max_position_embeddings: int = 256,
        attention: str = "bidirectional",
        block_size: int = 16,
        rope_theta: float = 10000.0,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        mask_token_id: int | None = None,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        objective: str = "mdlm",
        causal: bool | None = None,
        **kwargs,
    ):
        if causal:
            attention = "causal"
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention={attention!r} is not one of {ATTENTION_MODES}")
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size={hidden_size} is not divisible by num_attention_heads={num_attention_heads}"
            )
        if (hidden_size // num_attention_heads) % 2:
            raise ValueError("the head dimension must be even for rotary embeddings")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.attention = attention
        self.block_size = block_size
        self.rope_theta = rope_theta
        self.dropout = dropout
        self.norm_eps = norm_eps
        self.mask_token_id = mask_token_id
        self.objective = objective
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, **kwargs)

    @property
    def causal(self) -> bool:
        return self.attention == "causal"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MDLMConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
