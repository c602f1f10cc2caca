"""The one loader: `load_denoiser(name_or_path)` -> (denoiser, tokenizer, profile).

Every entry point loads models here: `mdlm-generate --model`, the lm-eval model `mdlm`, `generate_json`
callers, the RL trainers and the benchmarks. A run folder of this stack, a local folder of any family in
`mdlm.decode.families`, or (for users with the hub) a hub name all come back as a `Denoiser` with the
tokenizer that goes with it and the family profile that says how the model is called.

Local folders are checked before anything is loaded, so that a folder that is not a checkpoint gets a
clear error (what is missing, what writes it); pickled weights are never loaded (unpickling runs code).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from mdlm.decode.families import (FAMILY_REGISTRY, FamilyProfile, ProfiledDenoiser, detect_family, get_family,
                                  stop_token_ids)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CAUSAL_ARCHITECTURE = re.compile(r"(ForCausalLM|LMHeadModel)$")
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def load_denoiser(name_or_path, family: str | None = None, dtype="float32", device=None,
                  trust_remote_code: bool = False, tokenizer=None, mask_token_id: int | None = None,
                  flag: str = "--model"):
    """(denoiser, tokenizer, profile) of a run folder, a local checkpoint folder or a hub name.

    family: a name of `FAMILY_REGISTRY` (default: detected from config.architectures / model_type).
    dtype: torch dtype or its name; device: where the model runs (default cpu).
    trust_remote_code: needed by families whose modeling code ships with the checkpoint.
    tokenizer: a tokenizer object to use instead of the checkpoint's. mask_token_id: overrides every source.
    flag: how the caller names the argument in its errors (`--model`, `pretrained=`)."""
    path = Path(str(name_or_path)).expanduser()
    local = path.exists() or not HUB_NAME.fullmatch(str(name_or_path))
    config_json = check_local_folder(path, flag, tokenizer is None) if local else None
    profile = _choose_profile(config_json, family, flag, name_or_path)
    if profile is not None and profile.trust_remote_code and not trust_remote_code:
        raise ValueError(f"{flag} {name_or_path}: the {profile.name} family's modeling code ships with the checkpoint; "
                         "loading it runs that code, so pass trust_remote_code=True (--trust-remote-code) if you "
                         "trust it")
    source = str(path) if local else str(name_or_path)
    model, tokenizer = _load(source, profile, dtype, trust_remote_code, tokenizer, flag)
    if profile is None:
        profile = _profile_of_loaded(model, tokenizer, mask_token_id, flag, name_or_path)
    _check_vocabulary(model, tokenizer, flag, name_or_path)
    model = model.to(device or "cpu").eval()
    return denoiser_of(model, profile, tokenizer, mask_token_id), tokenizer, profile


def denoiser_of(model, profile: FamilyProfile, tokenizer=None, mask_token_id: int | None = None):
    """A loaded model of `profile` as its denoiser."""
    from mdlm.decode.denoiser import MDLMDenoiser
    from mdlm.model import MDLMForMaskedLM

    if profile.name == "ours":
        if not isinstance(model, MDLMForMaskedLM):
            raise ValueError(f"family 'ours' is this stack's MDLMForMaskedLM, not a {type(model).__name__}; "
                             "leave --family out to detect the family")
        mask_id = mask_token_id if mask_token_id is not None else model.config.mask_token_id
        if mask_id is None and tokenizer is not None:
            mask_id = tokenizer.mask_token_id
        if mask_id is not None:
            model.config.mask_token_id = int(mask_id)
        return MDLMDenoiser(model)
    if profile.name == "diffusion-gemma":  # uniform noise: no mask id; its own encoder / decoder calls
        from mdlm.decode.diffusion_gemma import DiffusionGemmaDenoiser

        return DiffusionGemmaDenoiser(model, tokenizer, stop_token_ids(profile, tokenizer, model.config.text_config))
    return ProfiledDenoiser(model, profile, mask_token_id, tokenizer)


def check_local_folder(run: Path, flag: str, needs_tokenizer: bool) -> dict:
    """The config.json of a local checkpoint folder, with a clear error for anything that is not one."""
    if not run.is_dir():
        raise FileNotFoundError(f"{flag} {run} is not a folder: no such run folder; pass a run folder (config.json, "
                                "model.safetensors, tokenizer files) as mdlm-pretrain writes it, or a checkpoint folder")
    if not (run / "config.json").is_file():
        hint = " (training has not finished its first save yet?)" if (run / "checkpoints").is_dir() else ""
        raise FileNotFoundError(f"{flag} {run} is not a run folder: {run / 'config.json'} is missing{hint}; pass a "
                                "folder saved by mdlm-pretrain or save_pretrained")
    weights = list(run.glob("*.safetensors"))
    if not weights and list(run.glob("pytorch_model*.bin")):
        raise ValueError(f"{run} holds only pickled weights (pytorch_model.bin), which are never loaded here because "
                         "unpickling can run code; save the model with safetensors (save_pretrained)")
    has_tokenizer = any((run / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
    if not weights or (needs_tokenizer and not has_tokenizer):
        what = ", ".join(([] if weights else ["model.safetensors"]) + ([] if has_tokenizer else ["tokenizer.json"]))
        raise ValueError(f"{flag} {run} is not a run folder: {what} missing. A run folder is what train/pretrain.py "
                         "writes (model.save_pretrained + tokenizer.save_pretrained)")
    try:
        return json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"could not load the run in {run} ({type(error).__name__}: its config.json is not JSON); "
                         "retrain it or copy the run folder again") from None


class _ConfigView:
    def __init__(self, fields: dict):
        self.architectures = fields.get("architectures")
        self.model_type = fields.get("model_type")


def _choose_profile(config_json, family, flag, name) -> FamilyProfile | None:
    if family:
        return get_family(family)
    if config_json is None:  # a hub name: the family is read from the config once it is loaded
        return None
    profile = detect_family(_ConfigView(config_json))
    if profile is None:
        _refuse_causal(_ConfigView(config_json), flag, name)
    return profile


def _refuse_causal(config, flag, name) -> None:
    architectures = list(config.architectures or [])
    if any(CAUSAL_ARCHITECTURE.search(a) for a in architectures) or getattr(config, "is_decoder", False):
        raise ValueError(f"{flag} {name} is a causal (autoregressive) LM ({', '.join(architectures) or config.model_type}): "
                         "it predicts the next token and cannot fill masks, so it is no denoiser; use a masked "
                         f"diffusion LM (families: {', '.join(FAMILY_REGISTRY)}) or name its family with --family")


def _load(source, profile, dtype, trust_remote_code, tokenizer, flag):
    import transformers
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    import mdlm  # noqa: F401  (registers MDLMForMaskedLM with the Auto classes)

    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    try:
        if profile is None:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            profile = detect_family(config)
            if profile is None:
                _refuse_causal(config, flag, source)
        auto = getattr(transformers, profile.auto_class) if profile is not None else AutoModelForMaskedLM
        model = auto.from_pretrained(source, use_safetensors=True, trust_remote_code=trust_remote_code,
                                     dtype=torch_dtype)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ValueError(f"{flag} {source}: its modeling code ships with the checkpoint; pass "
                             "trust_remote_code=True (--trust-remote-code) if you trust it") from None
        raise _load_error(source, error) from None
    except Exception as error:  # a bad config value or a damaged file surfaces as many types
        raise _load_error(source, error) from None
    return model, tokenizer


def _load_error(source, error) -> ValueError:
    detail = " ".join(str(error).split())[:200]
    return ValueError(f"could not load the run in {source} ({type(error).__name__}: {detail}); its config.json or "
                      "weights are damaged: retrain it or copy the run folder again")


def _profile_of_loaded(model, tokenizer, mask_token_id, flag, name) -> FamilyProfile:
    """A model no family claims: a masked LM with a mask token runs as a generic masked LM."""
    config = getattr(model, "config", None)
    profile = detect_family(config)
    if profile is not None:
        return profile
    _refuse_causal(config, flag, name)
    has_mask = any(m is not None for m in (mask_token_id, getattr(config, "mask_token_id", None),
                                          getattr(tokenizer, "mask_token_id", None)))
    if not has_mask:
        raise ValueError(f"{flag} {name}: no known family ({getattr(config, 'model_type', None)}) and no mask token in "
                         "its config or tokenizer; name the family with --family (family=) or pass mask_token_id=")
    return get_family("masked-lm")


def _check_vocabulary(model, tokenizer, flag, name) -> None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    rows = getattr(head, "out_features", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    if rows is not None and tokenizer is not None and len(tokenizer) > int(rows):
        raise ValueError(f"{flag} {name}: the checkpoint's vocabulary has {rows} tokens but its tokenizer {len(tokenizer)}; "
                         "the tokenizer does not belong to this model: save the model's own tokenizer with it (or "
                         "resize the embeddings after adding tokens)")


def load_model(name_or_path, **options):
    """(model, tokenizer) through `load_denoiser`, for callers that train or score the module itself
    (benchmarks, RL): the network without its denoiser wrapper."""
    denoiser, tokenizer, _ = load_denoiser(name_or_path, **options)
    return denoiser.model, tokenizer
