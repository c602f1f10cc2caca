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

from types import SimpleNamespace

from mdlm.families import dit, dream, llada, sdar
from mdlm.families.base import DiffusionLMOutput, NativeDiffusionLM, build_on_meta, load_weights, read_safetensors, rename

# family -> (its module: ARCHITECTURES, WEIGHT_NAMES (published -> ours), native_config(fields, source); the class)
NATIVE = {
    "llada": (llada, llada.LLaDA),
    "dream": (dream, dream.Dream),
    "sdar": (sdar, sdar.SDAR),
    "mdlm-owt": (SimpleNamespace(ARCHITECTURES=("MDLM",), WEIGHT_NAMES=dit.WEIGHT_NAMES,
                                 native_config=dit.native_config), dit.DiT),
    "bd3lm": (SimpleNamespace(ARCHITECTURES=("BD3LM",), WEIGHT_NAMES=dit.WEIGHT_NAMES,
                              native_config=lambda fields, source="the checkpoint":
                              dit.native_config(fields, source, block_causal=True)), dit.DiT),
}


def has_native(family: str, fields: dict | None = None) -> bool:
    """Whether `family` (and this checkpoint's architectures) has a native implementation."""
    if family not in NATIVE:
        return False
    architectures = (fields or {}).get("architectures") or []
    return not architectures or any(a in NATIVE[family][0].ARCHITECTURES for a in architectures)


def native_config(family: str, fields: dict, source="the checkpoint"):
    module = NATIVE[family][0]
    config = module.native_config(fields, source)
    config.architectures = list(fields.get("architectures") or module.ARCHITECTURES)
    config.published_model_type = fields.get("model_type")
    return config


def build_native(family: str, fields: dict, seed: int | None = None):
    """A randomly initialised native model of `family` from published config fields (tests, benchmarks)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = NATIVE[family][1](native_config(family, fields))
    for parameter in model.parameters():  # a module of our own leaves some weights uninitialised (torch.empty)
        if not torch.isfinite(parameter).all():
            torch.nn.init.normal_(parameter, std=0.02)
    return model


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
