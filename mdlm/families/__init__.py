"""Native implementations of the public diffusion LMs: their published checkpoints load into modules of
ours (transformers' decoder blocks where the architecture is one of them), so no code of the
checkpoint folder is ever run.

`NATIVE` maps a family name of `mdlm.decode.families` to its module; `load_native(folder, family)`
reads config.json and the safetensors of a published checkpoint into it. Every module is a plain
`nn.Module` with `forward(input_ids, attention_mask=None, position_ids=None, past_key_values=None,
use_cache=False) -> .logits` (see `mdlm.families.base.NativeDiffusionLM`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mdlm.families import dream, llada, sdar
from mdlm.families.base import DiffusionLMOutput, NativeDiffusionLM, build_on_meta, load_weights, read_safetensors, rename

NATIVE = {"llada": (llada, llada.LLaDA), "dream": (dream, dream.Dream), "sdar": (sdar, sdar.SDAR)}


def has_native(family: str, fields: dict | None = None) -> bool:
    """Whether `family` (and this checkpoint's architectures) has a native implementation."""
    if family not in NATIVE:
        return False
    architectures = (fields or {}).get("architectures") or []
    module = NATIVE[family][0]
    return not architectures or any(a in module.ARCHITECTURES for a in architectures)


def native_config(family: str, fields: dict, source="the checkpoint"):
    module, _ = NATIVE[family]
    config = module.native_config(fields, source)
    config.architectures = list(fields.get("architectures") or module.ARCHITECTURES)
    config.published_model_type = fields.get("model_type")
    return config


def build_native(family: str, fields: dict, seed: int | None = None) -> NativeDiffusionLM:
    """A randomly initialised native model of `family` from published config fields (tests, benchmarks)."""
    if seed is not None:
        torch.manual_seed(seed)
    return NATIVE[family][1](native_config(family, fields))


def load_native(folder, family: str, dtype=torch.float32, fields: dict | None = None) -> NativeDiffusionLM:
    """The published checkpoint in `folder` as our module of `family` (weights renamed from the published
    layout; nothing of the folder is imported)."""
    folder = Path(folder)
    fields = fields if fields is not None else json.loads((folder / "config.json").read_text(encoding="utf-8"))
    module, model_class = NATIVE[family]
    config = native_config(family, fields, folder)
    model = build_on_meta(model_class, config)
    state = rename(read_safetensors(folder), module.WEIGHT_NAMES, family)
    state = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    return load_weights(model, state, family, folder)


__all__ = ["NATIVE", "DiffusionLMOutput", "NativeDiffusionLM", "build_native", "has_native", "load_native",
           "native_config"]
