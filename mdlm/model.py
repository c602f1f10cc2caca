"""The time-agnostic masked transformer (RADD: "Your Absorbing Discrete Diffusion Secretly Models the
Conditional Distributions of Clean Data", Ou et al. 2024).

A pre-norm transformer with rotary position embeddings and no time input. It maps token ids, some of
them the mask id, to logits of p(x0_i | unmasked tokens) at every position; the mask token's logit is
-inf (SUBS parameterisation). The same backbone with `attention="causal"` is the autoregressive
baseline. Attention is bidirectional by default, or causal, or block-causal (BD3-LM style); any extra
boolean mask (padding, two-stream, order-causal) and explicit position ids can be passed, so a position
may appear twice: once as content, once as a query that does not see its own token.

Key/value caching: `forward(..., cache=kv_cache, use_cache=True)` (`past_key_values=` is accepted too) returns a new `KVCache` with
the keys/values of this call appended. The cache is immutable from the caller's point of view, so a
decoder can run a block many times against the same prefix cache and keep only the final pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from mdlm.config import MDLMConfig
from mdlm.kernels import cached_attention

try:  # optional extra; never a hard import
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # pragma: no cover - depends on the machine
    _flash_attn_func = None


@dataclass
class KVCache:
    """Per-layer keys and values (batch, heads, S, head_dim) with the positions and validity of S keys."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    positions: torch.Tensor  # (batch, S) long
    valid: torch.Tensor  # (batch, S) bool; False for padding keys

    @property
    def length(self) -> int:
        return self.positions.shape[1]

    def select(self, batch_index: torch.Tensor) -> "KVCache":
        """The cache of a subset of the batch rows (decoders drop finished rows)."""
        return KVCache([k[batch_index] for k in self.keys], [v[batch_index] for v in self.values],
                       self.positions[batch_index], self.valid[batch_index])


@dataclass
class MDLMOutput(ModelOutput):
    logits: torch.Tensor | None = None
    cache: KVCache | None = None
    hidden_states: torch.Tensor | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    angles = position_ids.float()[..., None] * inv_freq  # (B, L, D/2)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    return cos[:, None], sin[:, None]  # (B, 1, L, D/2), broadcast over heads


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2)


def structural_mask(config: MDLMConfig, query_pos: torch.Tensor, key_pos: torch.Tensor):
    """Boolean (B, 1, Lq, Lk) mask of the config's attention pattern, or None when bidirectional.

    Defined on position ids rather than indices so that it holds for cached keys and for a position
    that appears twice (content and query copies)."""
    if config.attention == "bidirectional":
        return None
    q, k = query_pos[:, :, None], key_pos[:, None, :]
    if config.attention == "causal":
        allowed = q >= k
    else:
        allowed = (q // config.block_size) >= (k // config.block_size)
    return allowed[:, None]


def normalise_attention_mask(attention_mask, batch: int, q_len: int, k_len: int, key_valid):
    """Turn every accepted mask shape into a boolean (B, 1|H, Lq, Lk) mask, True = may attend.

    Accepted: (B, Lq) padding of the new tokens (combined with the cache's validity), or arbitrary
    boolean masks of shape (B, Lq, Lk) or (B, 1|H, Lq, Lk). A 2-D tensor is always read as padding."""
    mask = None
    if attention_mask is not None and attention_mask.dim() == 2:
        if attention_mask.shape != (batch, q_len):
            raise ValueError(
                f"a 2-D attention_mask is a padding mask of shape (batch, length)=({batch}, {q_len}); "
                f"got {tuple(attention_mask.shape)}. Pass custom masks as (batch, Lq, Lk) or "
                "(batch, 1, Lq, Lk)."
            )
        new_valid = attention_mask.to(torch.bool)
        return None, new_valid if key_valid is None else torch.cat([key_valid, new_valid], dim=1)
    if attention_mask is not None:
        if attention_mask.dim() not in (3, 4):
            raise ValueError(f"attention_mask must be 2-, 3- or 4-D, got {attention_mask.dim()}-D")
        mask = attention_mask.to(torch.bool)
        mask = mask[:, None] if mask.dim() == 3 else mask
        if mask.shape[-2:] != (q_len, k_len):
            raise ValueError(
                f"attention_mask covers (queries, keys)={tuple(mask.shape[-2:])} but this call has "
                f"({q_len}, {k_len}) (cached keys come first)"
            )
    if key_valid is not None:  # this call's tokens are valid keys unless a 2-D padding mask said otherwise
        key_valid = torch.cat([key_valid, key_valid.new_ones(batch, q_len)], dim=1)
    return mask, key_valid


class Attention(nn.Module):
    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.config = config
        self.n_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.dropout = config.dropout

    def forward(self, x, cos, sin, mask, past_kv):
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        new_kv = (k, v)
        dropout = self.dropout if self.training else 0.0
        if mask is None and past_kv is None and self._flash_ok(q):
            y = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                 dropout_p=dropout).transpose(1, 2)
        elif dropout == 0.0 and (mask is not None or past_kv is not None):
            # Cached / masked step: Triton kernel on CUDA, SDPA (+ nan_to_num) elsewhere; see mdlm.kernels.
            y = cached_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            if mask is not None:  # a query row allowed no key at all gives NaN; such rows are never read
                y = torch.nan_to_num(y)
        return self.out(y.transpose(1, 2).reshape(B, L, -1)), new_kv

    @staticmethod
    def _flash_ok(q):
        return _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


class Block(nn.Module):
    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size, bias=False),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.intermediate_size, config.hidden_size, bias=False),
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, mask, past_kv):
        h, new_kv = self.attn(self.attn_norm(x), cos, sin, mask, past_kv)
        x = x + self.drop(h)
        x = x + self.drop(self.mlp(self.mlp_norm(x)))
        return x, new_kv


class MDLMPreTrainedModel(PreTrainedModel):
    config_class = MDLMConfig
    base_model_prefix = "mdlm"
    _supports_sdpa = True
    _no_split_modules = ["Block"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader without its "Loading weights" bar: console output stays quiet (a run is loaded
        many times in SFT, RL and the benchmarks)."""
        from mdlm.decode.loading import quiet_transformers_progress

        with quiet_transformers_progress():
            return super().from_pretrained(*args, **kwargs)

    def _init_weights(self, module):
        std = 0.02
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class MDLMForMaskedLM(MDLMPreTrainedModel):
    def __init__(self, config: MDLMConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        # GPT-2 style scaled init of the residual projections keeps deep stacks stable.
        for name, p in self.named_parameters():
            if name.endswith("attn.out.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.num_hidden_layers))

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        logits_at: torch.Tensor | None = None,
        **kwargs,
    ) -> MDLMOutput:
        """Logits (B, L, V) in float32 with the mask token's logit at -inf.

        logits_at: (B, K) long indices into this call's L positions: the LM head runs only there and the
        logits are (B, K, V). A decoding step needs the rows of the positions it may reveal, and at a large
        vocabulary the (B, L, V) head is most of a step's memory (a 126k vocabulary at 32 x 1024 is 16 GiB
        in float32).

        attention_mask: (B, L) padding, or a boolean (B, Lq, Lk) / (B, 1|H, Lq, Lk) mask (True = may
        attend), ANDed with the config's structural pattern. With a cache, keys are the cached ones
        followed by this call's. position_ids default to cache length + arange(L).
        """
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        B, L = input_ids.shape
        past_len = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + L, device=input_ids.device).expand(B, L)
        if int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(
                f"position {int(position_ids.max())} is beyond the model's context of "
                f"{self.config.max_position_embeddings} tokens; shorten the input (prompt plus generation)"
            )
        key_pos = position_ids if cache is None else torch.cat([cache.positions, position_ids], 1)
        key_valid = None if cache is None else cache.valid
        custom, key_valid = normalise_attention_mask(attention_mask, B, L, past_len + L, key_valid)
        mask = structural_mask(self.config, position_ids, key_pos)
        if custom is not None:
            mask = custom if mask is None else mask & custom
        if key_valid is not None and not bool(key_valid.all()):
            pad = key_valid[:, None, None, :]
            mask = pad if mask is None else mask & pad

        x = self.drop(self.embed(input_ids))
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        new_keys, new_values = [], []
        for i, block in enumerate(self.blocks):
            past = None if cache is None else (cache.keys[i], cache.values[i])
            x, (k, v) = block(x, cos, sin, mask, past)
            if use_cache:
                new_keys.append(k)
                new_values.append(v)
        hidden = self.norm(x)
        head_input = hidden
        if logits_at is not None:
            if logits_at.dim() != 2 or logits_at.shape[0] != B:
                raise ValueError(f"logits_at must be (batch, K) = ({B}, K) position indices, got {tuple(logits_at.shape)}")
            head_input = hidden.gather(1, logits_at[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, K, D)
        logits = self.lm_head(head_input).float()
        if self.config.mask_token_id is not None:
            logits[..., self.config.mask_token_id] = float("-inf")
        new_cache = None
        if use_cache:
            valid = key_valid if key_valid is not None else torch.ones_like(key_pos, dtype=torch.bool)
            new_cache = KVCache(new_keys, new_values, key_pos, valid)
        return MDLMOutput(logits=logits, cache=new_cache,
                          hidden_states=hidden if output_hidden_states else None)
