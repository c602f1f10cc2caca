"""The trainable face of a Denoiser: any family's network in this stack's training convention.

The decoders reach a model only through `Denoiser.logits` (no grad, counted). Training reaches it only
through `Denoiser.train_logits`: the same values, with gradients, in the same convention (the family's
logit shift undone, its attention mask, positions and block-causal structure, the mask logit at -inf);
tests/test_finetune_forward.py checks per family that the two agree at the masked positions. Here:

- `TrainableDenoiser`: an `nn.Module` whose `forward(input_ids, attention_mask=, position_ids=)` returns
  `.logits` (B, L, V) with `logits[:, i]` the prediction of token i, the calling convention of this stack's
  `MDLMForMaskedLM`. The masked-diffusion losses (`mdlm.losses`), the SFT loop (`train/sft.py`) and
  accelerate / DDP / FSDP take any family through it unchanged.
- `training_logits(model, ids, valid, positions)`: the RL trainers' policy forward, for a bare model, its
  DDP wrapper, its peft model, or the adapter-disabled reference (`AdapterDisabled`).
- LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", through `peft`): `add_lora`
  with per-family default target modules (`LORA_TARGETS`), `AdapterDisabled` (the reference model of a
  LoRA policy is its base with the adapter switched off: no second copy in memory, as TRL does), and
  `merged_state_dict` (W + (alpha / r) B A per adapted layer) so that a LoRA run saves weights that every
  loader reads, without touching the live weights.
"""

from __future__ import annotations

import contextlib
import json
import re
import weakref
from pathlib import Path

import torch
from transformers.modeling_outputs import MaskedLMOutput

from mdlm.decode.denoiser import CountedDenoiser, as_denoiser

# The projections LoRA adapts by default, by family, as the published checkpoints name their modules
# (attention and MLP of every block, not the embeddings nor the LM head). Names the loaded model does not
# have fall back to every linear layer but the output embedding (e.g. a native re-implementation whose
# module names differ from the published ones).
LLAMA_STYLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "ours": ("qkv", "out", "mlp.0", "mlp.2"),
    # LLaDA's published names and the Llama names of its native module (mdlm.families.llada)
    "llada": ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out", *LLAMA_STYLE[3:]),
    "llada-moe": LLAMA_STYLE,
    "llada2": ("query_key_value", "dense", "gate_proj", "up_proj", "down_proj"),
    "dream": LLAMA_STYLE,
    "sdar": LLAMA_STYLE,
}
ALL_LINEAR = "all-linear"

_BOUND: "weakref.WeakKeyDictionary[torch.nn.Module, CountedDenoiser]" = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------------------------------
# Finding the network behind wrappers, and its denoiser
# ----------------------------------------------------------------------------------------------------

def is_lora(model) -> bool:
    from peft import PeftModel

    return isinstance(unwrap_parallel(model), PeftModel)


def unwrap_parallel(model):
    """The module inside a DDP / FSDP / torch.compile wrapper (itself when there is none)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model) if isinstance(model, torch.nn.Module) else model


def base_model(model):
    """The family's own network inside every wrapper (parallel, peft, `TrainableDenoiser`)."""
    from peft import PeftModel

    model = unwrap_parallel(model)
    if isinstance(model, TrainableDenoiser):
        model = unwrap_parallel(model.model)
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    return model


def bind(model, denoiser: CountedDenoiser) -> None:
    """Make `denoiser` (as the loader built it, with its tokenizer's facts) the one `denoiser_for(model)`
    and every wrapper of `model` use."""
    _BOUND[base_model(model)] = denoiser


def denoiser_for(model) -> CountedDenoiser:
    """The denoiser of `model` (bare, wrapped or a denoiser already), calling `model` itself: a DDP or peft
    wrapper is what runs, so that gradients sync and the adapter applies."""
    if isinstance(model, CountedDenoiser):
        return model
    if isinstance(unwrap_parallel(model), TrainableDenoiser):
        return unwrap_parallel(model).denoiser_view()
    denoiser = base_denoiser(model)
    if model is denoiser.model:
        return denoiser
    view = _copy(denoiser)
    view.model = model
    return view


def _copy(denoiser):
    import copy

    return copy.copy(denoiser)


def training_logits(model, ids: torch.Tensor, valid: torch.Tensor | None, positions: torch.Tensor | None = None,
                    at: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L, V) logits with gradients, logits[:, i] predicting token i, of any family's `model` (bare,
    wrapped, or the adapter-disabled reference of a LoRA policy); (B, K, V) at positions `at`."""
    if isinstance(model, AdapterDisabled):
        with model.disabled():
            return training_logits(model.policy, ids, valid, positions, at)
    inner = unwrap_parallel(model)
    if isinstance(inner, TrainableDenoiser):
        return model(ids, attention_mask=valid, position_ids=positions, at=at).logits
    return base_denoiser(model).train_logits(ids, valid, positions, at=at, module=model)


def base_denoiser(model) -> CountedDenoiser:
    """The denoiser bound to the network inside `model` (made on first use)."""
    base = base_model(model)
    denoiser = _BOUND.get(base)
    if denoiser is None:
        denoiser = _BOUND[base] = as_denoiser(base)
    return denoiser


# ----------------------------------------------------------------------------------------------------
# The module the training loops take
# ----------------------------------------------------------------------------------------------------

class TrainableDenoiser(torch.nn.Module):
    """A family's network behind this stack's training convention (see the module docstring).

    `config` is the network's own config with `mask_token_id` set to the denoiser's (the losses read
    it); `context` the most positions the network takes. After `add_lora`, `model` is the peft model."""

    def __init__(self, denoiser: CountedDenoiser, source=None):
        super().__init__()
        self.model = denoiser.model
        object.__setattr__(self, "denoiser", denoiser)  # not a submodule: its model already is one
        bind(self.model, denoiser)
        self.config = self.model.config
        self.config.mask_token_id = denoiser.require_mask_id()
        # a native module (mdlm.families) is saved under the published names with the checkpoint's config
        self.published_config = published_config(source)

    @property
    def context(self) -> int | None:
        return self.denoiser.context

    def denoiser_view(self) -> CountedDenoiser:
        """The denoiser calling `self.model` (the peft model when LoRA is on), for decoding."""
        if self.model is self.denoiser.model:
            return self.denoiser
        view = _copy(self.denoiser)
        view.model = self.model
        return view

    def forward(self, input_ids, attention_mask=None, position_ids=None, at=None):
        valid = None if attention_mask is None else attention_mask.bool()
        logits = self.denoiser.train_logits(input_ids, valid, position_ids, at=at, module=self.model)
        return MaskedLMOutput(logits=logits)

    # -- training options -------------------------------------------------------------------------
    def add_lora(self, r: int, alpha: float | None = None, target: str | None = None, dropout: float = 0.0):
        self.model = add_lora(self.model, r, alpha, target, dropout, family=getattr(self.denoiser, "profile", None))
        return self

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each block's activations in the backward pass (transformers' switch on the network)."""
        network = base_model(self.model)
        # the network itself, or the transformers backbone inside a native module (mdlm.families)
        stack = next((m for m in network.modules() if getattr(m, "supports_gradient_checkpointing", False)
                      and hasattr(m, "gradient_checkpointing_enable")), None)
        if stack is None:
            raise ValueError(f"{type(network).__name__} does not support gradient checkpointing; drop "
                             "--gradient-checkpointing (or use LoRA / a smaller batch to save memory)")
        stack.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # -- saving -----------------------------------------------------------------------------------
    def save_pretrained(self, folder, **kwargs) -> None:
        """The network's weights as its family saves them (loadable by `load_denoiser`); with LoRA the
        merged weights, and the adapter alone in `folder/adapter`."""
        save_network(self.model, folder, self.published_config, getattr(self.denoiser, "profile", None), **kwargs)


def published_config(source) -> dict | None:
    """The config.json fields of the checkpoint `source` (a local folder or a hub name), or None."""
    if source is None:
        return None
    path = Path(str(source)) / "config.json"
    if not path.is_file() and not Path(str(source)).exists():  # a hub name: its config, cached by the load
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(str(source), "config.json"))
        except Exception:  # offline or not on the hub: a native module then cannot be saved (said there)
            return None
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def save_network(model, folder, fields: dict | None = None, profile=None, **kwargs) -> None:
    """`model` (bare or peft) saved as its family saves it, so that `load_denoiser` reads it as it read the
    checkpoint: transformers' `save_pretrained`, or a native module's weights under the published names
    with the checkpoint's config.json `fields`. A peft model's merged weights go at the top and its adapter
    alone in `folder/adapter` (adapter_config.json + adapter_model.safetensors)."""
    model = unwrap_parallel(model)
    lora = is_lora(model)
    network = model.get_base_model() if lora else model
    state = merged_state_dict(model) if lora else None
    if hasattr(network, "save_pretrained"):
        network.save_pretrained(folder, **({"state_dict": state} if state is not None else {}), **kwargs)
    else:
        save_published(network, folder, fields, getattr(profile, "name", None), state)
    if lora:
        model.save_pretrained(str(Path(folder) / "adapter"))


def save_published(network, folder, fields: dict | None, family: str | None, state: dict | None = None) -> None:
    """A native module of `mdlm.families` as the published checkpoint it was loaded from: model.safetensors
    under the published weight names (the family's WEIGHT_NAMES read backwards) and config.json."""
    from safetensors.torch import save_file

    from mdlm.families import NATIVE

    if family not in NATIVE or fields is None:
        raise ValueError(f"cannot save a {type(network).__name__}: it has no save_pretrained and is no native family "
                         "module loaded from a local checkpoint folder (whose config.json is written back)")
    state = dict(network.state_dict() if state is None else state)
    if getattr(network.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the published checkpoint holds the tied matrix once
    table = NATIVE[family][0].WEIGHT_NAMES
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({published_name(k, table): v.detach().contiguous() for k, v in state.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(fields, indent=1), encoding="utf-8")


def published_name(name: str, table) -> str:
    """Our name of a weight -> the published one, by a (published pattern, our template) table as
    `mdlm.families` loads with (groups such as `(\\d+)` become the template's `\\1`, and back)."""
    for published, ours in table:
        groups = re.findall(r"\((.*?)\)", published)
        pattern = re.escape(ours)
        for number, group in enumerate(groups, 1):
            pattern = pattern.replace(re.escape(f"\\{number}"), f"({group})")
        match = re.fullmatch(pattern, name)
        if match:
            template = published
            for number, group in enumerate(groups, 1):
                template = template.replace(f"({group})", f"\\{number}", 1)
            return match.expand(template.replace("\\.", "."))
    return name


# ----------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------

def lora_target_modules(model, family=None, target: str | None = None) -> list[str]:
    """Full names of the linear layers LoRA adapts: `target` (comma-separated name suffixes, or
    "all-linear"), else the family's `LORA_TARGETS`, else every linear layer; never the output embedding."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    name = getattr(family, "name", family)
    if target and target != ALL_LINEAR:
        suffixes = tuple(s.strip() for s in target.split(",") if s.strip())
    elif target == ALL_LINEAR:
        suffixes = ()
    else:
        suffixes = LORA_TARGETS.get(name, ())
    chosen = [n for n in linear if any(n == s or n.endswith("." + s) for s in suffixes)] if suffixes else []
    if target and target != ALL_LINEAR and not chosen:
        raise ValueError(f"--lora-target {target}: no linear layer of this model ends with those names; its linear "
                         f"layers end with {sorted({n.rsplit('.', 1)[-1] for n in linear})[:12]} (or pass all-linear)")
    if not chosen:
        chosen = list(linear)
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no linear layer for LoRA to adapt")
    return chosen


def add_lora(model, r: int, alpha: float | None = None, target: str | None = None, dropout: float = 0.0,
             family=None):
    """`model` with LoRA adapters of rank r on its target layers (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    if not isinstance(r, int) or r < 1:
        raise ValueError(f"--lora-r must be an integer >= 1, got {r!r}")
    config = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=dropout, bias="none",
                        target_modules=lora_target_modules(model, family, target))
    peft_model = get_peft_model(model, config)
    if hasattr(model, "config") and not hasattr(peft_model, "generation_config"):
        peft_model.generation_config = getattr(model, "generation_config", None)
    return peft_model


@torch.no_grad()
def merged_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """The base network's state dict with each adapted layer's weight W + delta (peft's own delta), under
    the base layer's original name; the live weights are not changed."""
    from peft.tuners.lora import LoraLayer

    network = peft_model.get_base_model()
    state = {}
    for name, tensor in network.state_dict().items():
        if ".lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    for name, layer in network.named_modules():
        if isinstance(layer, LoraLayer) and not layer.merged:
            weight = layer.get_base_layer().weight
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
            state[f"{name}.weight"] = (weight + delta).to(weight.dtype).contiguous()
    return state


class AdapterDisabled:
    """The reference policy of a LoRA run: the same network with its adapter switched off (no copy).
    `policy` is what to call (the trainer's prepared model); `peft_model` the one whose adapter is off."""

    def __init__(self, policy):
        self.policy = policy
        self.peft_model = unwrap_parallel(policy)

    @contextlib.contextmanager
    def disabled(self):
        with self.peft_model.disable_adapter():
            yield

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self
