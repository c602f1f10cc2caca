"""The one loader: `load_denoiser(name_or_path)` -> (denoiser, tokenizer, profile).

Every entry point loads models here: `mdlm-generate --model`, the lm-eval model `mdlm`, `generate_json`
callers, the RL trainers and the benchmarks. A run folder of this stack, a local folder of any family in
`mdlm.decode.families`, or (for users with the hub) a hub name all come back as a `Denoiser` with the
tokenizer that goes with it and the family profile that says how the model is called.

Local folders are checked before anything is loaded, so that a folder that is not a checkpoint gets a
clear error (what is missing, what writes it); pickled weights are never loaded (unpickling runs code).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from mdlm.decode.families import (FAMILY_REGISTRY, FamilyProfile, ProfiledDenoiser, detect_family, get_family,
                                  stop_token_ids)
from mdlm.families import has_native, load_native

logger = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CAUSAL_ARCHITECTURE = re.compile(r"(ForCausalLM|LMHeadModel)$")
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
RUN_FOLDER_PARENTS = ("runs", "checkpoints", "outputs", "output", "models", "logs", "results")


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
    local = is_local_name(str(name_or_path))
    config_json = check_local_folder(path, flag, tokenizer is None) if local else None
    profile = _choose_profile(config_json, family, flag, name_or_path)
    if not local and (profile is None or profile.native):
        path, config_json, profile = _native_hub_snapshot(str(name_or_path), family, profile, flag)
        local = path is not None
    model = None
    if profile is not None and local and has_native(profile.name, config_json):
        try:
            model = _load_native(path, profile, config_json, dtype)
        except ValueError as error:
            # a checkpoint of the family that the native implementation does not read (another release's
            # names or options): with --trust-remote-code its own code is the fallback, else the error stands
            if not (trust_remote_code and config_json and config_json.get("auto_map")):
                raise
            logger.warning("%s; loading it with the checkpoint's own code (--trust-remote-code)", error)
            profile = dataclasses.replace(profile, **dict(profile.published_code), native=False, published_code=())
        else:
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path, flag)
    if model is None:
        if profile is not None and profile.trust_remote_code and not trust_remote_code:
            raise ValueError(f"{flag} {name_or_path}: the {profile.name} family's modeling code ships with the "
                             "checkpoint; loading it runs that code, so pass trust_remote_code=True "
                             "(--trust-remote-code) if you trust it")
        source = str(path) if local else str(name_or_path)
        with quiet_transformers_progress():
            model, tokenizer = _load(source, profile, dtype, trust_remote_code, tokenizer, flag)
        if trust_remote_code:
            check_remote_code_model(model, source, flag)
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


def is_local_name(name: str) -> bool:
    """Whether `name` means a folder here rather than a hub id: it exists, or it is not of the form
    owner/name, or it reads as a path (./x, ../x, ~/x, /x, a backslash), or its first part is a folder here
    or one that runs are written to (runs/mdlm-small before training must not go to the hub: five retries
    and a misleading error later)."""
    path = Path(name).expanduser()
    if path.exists() or not HUB_NAME.fullmatch(name):
        return True
    first = name.split("/")[0]
    return first in (".", "..") or first in RUN_FOLDER_PARENTS or Path(first).is_dir()


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


@contextmanager
def quiet_transformers_progress():
    """No transformers progress bar inside: "Loading weights" before every load (console output is quiet),
    "Writing model shards" from save_pretrained (it would break into a training bar's line)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


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
        if trust_remote_code and (_raised_in_remote_code(error) or (profile is not None and profile.trust_remote_code)):
            detail = " ".join(str(error).split())[:160]
            raise ValueError(f"{flag} {source}: the checkpoint's own modeling code fails under transformers "
                             f"{transformers.__version__} ({type(error).__name__}: {detail}); use a family with a "
                             "native implementation (see docs/public-models.md) or the transformers version its "
                             "code was written for") from None
        raise _load_error(source, error) from None
    return model, tokenizer


def _raised_in_remote_code(error: BaseException) -> bool:
    """Whether the traceback passes through a module transformers loaded from a checkpoint folder."""
    traceback = error.__traceback__
    while traceback is not None:
        if "transformers_modules" in traceback.tb_frame.f_code.co_filename:
            return True
        traceback = traceback.tb_next
    return False


def _load_native(path: Path, profile: FamilyProfile, config_json: dict, dtype):
    """The published checkpoint in `path` as mdlm.families' module of its family (no code of the folder runs)."""
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    try:
        return load_native(path, profile.name, torch_dtype, config_json)
    except ValueError:
        raise
    except (KeyError, TypeError) as error:  # a config field missing or of the wrong type
        raise ValueError(f"{path}: its config.json is not a published {profile.name} config ({type(error).__name__}: "
                         f"{error}); pass the checkpoint as published, or --trust-remote-code to run its own code "
                         "instead") from None
    except Exception as error:
        raise _load_error(str(path), error) from None


def load_tokenizer(path: Path, flag: str = "--model"):
    """The folder's tokenizer without running code from it: a tokenizer_config that names its own class
    through auto_map (Dream's DreamTokenizer, a Qwen2 tokenizer) is read as the fast tokenizer its
    tokenizer.json (or vocab.json + merges.txt) defines, with its special tokens."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its config.json's model_type is no transformers type: not news
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except ValueError as error:
        if "custom code" not in str(error) and "trust_remote_code" not in str(error):
            raise _load_error(str(path), error) from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    try:
        if (path / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(path))
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            from transformers import Qwen2Tokenizer

            return Qwen2Tokenizer.from_pretrained(str(path))
    except Exception as error:
        raise _load_error(str(path), error) from None
    raise ValueError(f"{flag} {path}: its tokenizer is defined by code in the folder and it has no tokenizer.json "
                     "(or vocab.json + merges.txt) to read instead; pass the family's tokenizer folder with --tokenizer")


def _native_hub_snapshot(name: str, family: str | None, profile, flag):
    """(local folder, config fields, profile) of a hub checkpoint of a native family, downloaded without its
    code files; (None, None, profile) when the hub cannot be reached or the family is not native."""
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        config_json = json.loads(Path(hf_hub_download(name, "config.json")).read_text(encoding="utf-8"))
    except Exception as error:
        detail = " ".join(str(error).split())[:160]
        raise FileNotFoundError(f"{flag} {name}: no such folder here, and as a hub id it could not be fetched "
                                f"({type(error).__name__}: {detail}); pass an existing checkpoint folder, or a hub id "
                                "with the hub reachable") from None
    profile = profile or detect_family(_ConfigView(config_json))
    if profile is None or not has_native(profile.name, config_json):
        return None, None, profile
    folder = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    return Path(folder), config_json, profile


def check_remote_code_model(model, source, flag) -> None:
    """Remote modeling code written for another transformers can load "successfully" and still be wrong:
    tensors left on the meta device, or a rotary `inv_freq` buffer never computed (this transformers
    builds models on the meta device and only materialises what it knows to initialise), which decodes
    garbage that changes from process to process. Refused in one line naming the cause and the fix."""
    import transformers

    fix = (f"the checkpoint's own code does not work under transformers {transformers.__version__}; use a family "
           "with a native implementation (see docs/public-models.md) or the transformers version its code was written for")
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type == "meta":
            raise ValueError(f"{flag} {source}: {name} was left on the meta device (never loaded): {fix}")
    for name, buffer in model.named_buffers():
        if name.endswith("inv_freq") and buffer.is_floating_point() and buffer.numel():
            frequencies = buffer.detach().float().flatten()
            # 1 / theta^(2i/d): starts at 1 and falls strictly, all finite and positive
            ok = bool(torch.isfinite(frequencies).all()) and abs(float(frequencies[0]) - 1.0) < 1e-3 and \
                bool((frequencies > 0).all()) and bool((frequencies[1:] < frequencies[:-1]).all())
            if not ok:
                raise ValueError(f"{flag} {source}: its rotary buffer {name} was left uninitialised by the checkpoint's "
                                 f"code (values {frequencies[:3].tolist()}...): {fix}")


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
