"""The native families' common body: a published diffusion LM on transformers' own decoder stack.

LLaDA's blocks are Llama's, Dream's and DiffuCoder's are Qwen2's, SDAR's are Qwen3's: the same RMSNorm,
SwiGLU MLP, rotary attention and (for Qwen2) q/k/v biases, with the causal mask replaced by the family's
own attention (bidirectional, or block-causal over position blocks). `NativeDiffusionLM` holds the
backbone (`self.model`, a transformers `LlamaModel` / `Qwen2Model` / `Qwen3Model`) and `self.lm_head`,
and turns the attention mask it is given into the 4-D mask the backbone takes as it is.

Loading (`load_native`) reads the published checkpoint's config.json and safetensors (one file or
shards), renames the weights from the published layout by the family's table, and never imports or
runs a file of the checkpoint folder: the published modeling code is only the specification.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from transformers.utils import ModelOutput


@dataclass
class DiffusionLMOutput(ModelOutput):
    """logits (B, L, V) and, with use_cache, the transformers Cache grown by this call's keys/values."""

    logits: torch.Tensor | None = None
    past_key_values: object = None


class NativeDiffusionLM(nn.Module):
    """A diffusion LM on a transformers decoder stack (see the module docstring).

    forward(input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
    - attention_mask None or (B, L) 0/1 padding: every query sees every valid key (bidirectional), or
      the keys of its own and earlier position blocks (block-causal, `config.block_size`);
    - attention_mask (B, 1, Lq, Lk) bool (True = attend) or additive float: used as it is (the caller's
      attention, e.g. with a cache, whose key positions only the caller knows);
    - position_ids default to 0..L-1 after each row's left padding.
    Returns `DiffusionLMOutput` (logits in the family's own layout: Dream's are AR-shifted)."""

    backbone_class: type = None  # LlamaModel / Qwen2Model / Qwen3Model
    attention = "bidirectional"

    def __init__(self, config):
        super().__init__()
        config._attn_implementation = "sdpa"  # a 4-D bool mask goes to SDPA as it is
        self.config = config
        self.model = self.backbone_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_output_embeddings(self):
        return self.lm_head

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                **unused):
        if position_ids is None:
            position_ids = default_positions(input_ids, attention_mask)
        mask = attention_mask
        if mask is None or mask.dim() == 2:
            if past_key_values is not None and past_key_values.get_seq_length() > 0:
                raise ValueError("with a cache, pass the (B, 1, Lq, Lk) attention mask: only the caller knows the "
                                 "cached keys' positions")
            valid = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
            mask = self.attention_mask_4d(valid, position_ids)
        hidden = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                            cache=past_key_values, use_cache=bool(use_cache)).last_hidden_state
        cache = past_key_values if use_cache else None
        return DiffusionLMOutput(logits=self.lm_head(hidden), past_key_values=cache)

    def attention_mask_4d(self, valid: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, 1, L, L) bool: valid keys (of the query's own or earlier position block, block-causal);
        every query sees itself, so that a padding row is never empty (SDPA gives NaN for it)."""
        allowed = valid[:, None, None, :].expand(-1, 1, valid.shape[1], -1)
        if self.attention == "block-causal":
            blocks = positions // int(self.config.block_size)
            allowed = allowed & (blocks[:, None, None, :] <= blocks[:, None, :, None])
        return allowed | torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)


def default_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """0, 1, ... from each row's first valid token (left padding does not shift the positions)."""
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


# --------------------------------------------------------------------------------------------- loading
def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors files (one file or the shards an index names)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        paths = [folder / f for f in files]
    else:
        paths = sorted(folder.glob("*.safetensors"))
    state = {}
    for path in paths:
        state.update(load_file(str(path)))
    return state


def rename(state: dict[str, torch.Tensor], table: tuple[tuple[str, str], ...], family: str) -> dict[str, torch.Tensor]:
    """Published weight names -> ours by the family's (regex, replacement) table (first match wins; a
    name no rule matches keeps its name; an empty replacement drops the tensor, e.g. a stored buffer that
    is computed here)."""
    renamed = {}
    for name, tensor in state.items():
        for pattern, replacement in table:
            new, count = re.subn(f"^{pattern}$", replacement, name)
            if count:
                name = new
                break
        if name:
            renamed[name] = tensor
    return renamed


def load_weights(model: NativeDiffusionLM, state: dict[str, torch.Tensor], family: str, source) -> NativeDiffusionLM:
    """Load `state` (our names) into `model` built on the meta device; every weight must be there, and
    nothing else (a missing or unknown weight names the checkpoint as not of this family)."""
    expected = dict(model.state_dict())
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:
        state.pop("lm_head.weight", None)
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = "; ".join(filter(None, [f"missing {', '.join(missing[:3])}" if missing else "",
                                         f"unknown {', '.join(unexpected[:3])}" if unexpected else ""]))
        raise ValueError(f"{source}: its weights are not the published {family} layout ({detail}); pass the "
                         "checkpoint as published, --trust-remote-code to run its own code instead, or another "
                         "--family")
    for name, tensor in state.items():
        if tuple(expected[name].shape) != tuple(tensor.shape):
            raise ValueError(f"{source}: weight {name} has shape {tuple(tensor.shape)} but its config.json makes it "
                             f"{tuple(expected[name].shape)}; the config and the weights are of different models")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    _rebuild_rotary(model)
    return model


def _rebuild_rotary(model: nn.Module) -> None:
    """The rotary frequencies are computed, not stored: rebuilt on the weights' device after a meta-device
    construction (the buffer a meta model would otherwise keep unset)."""
    device = next(model.parameters()).device
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name == "rotary_emb":
                with torch.device(device):
                    setattr(parent, name, type(child)(config=child.config))


def build_on_meta(model_class, config):
    with torch.device("meta"):
        return model_class(config)


def require(condition: bool, source, family: str, what: str) -> None:
    """A published config option the native implementation does not implement is refused by name."""
    if not condition:
        raise ValueError(f"{source}: this {family} checkpoint uses {what}, which the native {family} implementation "
                         "does not have; pass --trust-remote-code (trust_remote_code=True) to run its own code instead")
