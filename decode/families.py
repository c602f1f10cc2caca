"""Model families: how to call each public masked diffusion LM, and one denoiser that applies it.

A `FamilyProfile` holds what differs between the published models' forward passes and decoders (the
facts their own generation code relies on):
- calling convention: the attention-mask form (2-D long / 2-D bool / 4-D bool / 4-D additive / none),
  whether position ids are passed, a time input (MDLM-OWT and BD3-LM take `timesteps`; both decode
  time-agnostically with t = 0), fixed extra kwargs;
- output form (`.logits` or a plain tensor) and the logit shift of Dream / DiffuCoder (AR-initialised:
  position i's prediction sits at i - 1, their generation code shifts it back);
- where the mask id comes from (config, tokenizer, or the family's known id), SUBS post-processing
  (the raw logits get the mask logit at -inf), the stop tokens (several: end of text, end of turn),
  whether instruct checkpoints want the chat template;
- block-causal attention with its block size (LLaDA2 32, SDAR 4, BD3-LM from its config), the
  Hugging Face `past_key_values` cache where the family's convention allows the exact block KV cache,
  and whether the model's code needs `trust_remote_code`.

Profiles live in `FAMILY_REGISTRY` (like the sampler registry); `detect_family(config)` picks one from
`config.architectures` / `config.model_type`, or a name is given (`--family`). `ProfiledDenoiser`
turns any such model into the `Denoiser` every decoder takes (Nie et al. 2025 LLaDA; Ye et al. 2025
Dream; Gong et al. 2025 DiffuCoder; Cheng et al. 2025 SDAR; Sahoo et al. 2024 MDLM; Arriola et al. 2025
BD3-LM; inclusionAI 2025 LLaDA-MoE / LLaDA2).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch

from mdlm.decode.canvas import default_position_ids
from mdlm.decode.denoiser import CountedDenoiser, gather_at
from mdlm.model import KVCache

ATTENTION_MASK_FORMS = ("2d-long", "2d-bool", "4d-bool", "4d-additive", "none")


@dataclass(frozen=True)
class FamilyProfile:
    """How to call one family of models and read what it returns (see the module docstring)."""

    name: str
    description: str
    architectures: tuple[str, ...] = ()  # config.architectures entries that identify the family
    model_types: tuple[str, ...] = ()  # config.model_type values that identify it
    auto_class: str = "AutoModelForMaskedLM"  # the transformers Auto class its checkpoints load with
    trust_remote_code: bool = False  # its modeling code lives in the checkpoint, not in transformers
    attention_mask: str = "2d-long"
    position_ids: bool = False  # forward takes position_ids
    position_offset: int | str = 0  # added to our 0-based positions; "pad+1": RoBERTa counts from padding_idx + 1
    time_input: str | None = None  # name of a noise-level kwarg, given t = 0 (time-agnostic decoding)
    extra_kwargs: tuple[tuple[str, object], ...] = ()
    shifted_logits: bool = False  # logits[:, i] predicts token i + 1 (the model was initialised from an AR LM)
    known_mask_token_id: int | None = None  # the family's mask id when neither config nor tokenizer has it
    subs: bool = True  # set the mask token's logit to -inf (SUBS) on the raw logits
    ban_special_tokens: bool = False  # [CLS]/[SEP]/[PAD]/... are never generated (BERT-style encoders)
    stop_tokens: tuple[str, ...] = ()  # token strings that end a completion, besides the tokenizer's EOS
    chat_template: bool = False  # instruct checkpoints read prompts through the tokenizer's chat template
    attention: str = "bidirectional"
    block_size: int | None = None  # attention block of a block-causal family
    block_size_key: str | None = None  # config field that overrides block_size
    kv_cache: bool = False  # forward takes and returns a Hugging Face Cache (`past_key_values`)
    schedule: str | None = None  # the family's own unmasking schedule, used unless --schedule is given
    native: bool = False  # loaded into mdlm.families' own module (no code of the checkpoint runs)
    # the calling convention of the family's published modeling code (a model the user loaded with
    # trust_remote_code): overrides of the fields above, applied when the model is not our native module
    published_code: tuple[tuple[str, object], ...] = ()
    examples: tuple[str, ...] = ()  # hub checkpoints of the family
    features: dict = field(default_factory=dict)  # what of this stack runs on it (README table)

    def __post_init__(self):
        if self.attention_mask not in ATTENTION_MASK_FORMS:
            raise ValueError(f"family {self.name}: attention_mask={self.attention_mask!r}; choose one of "
                             f"{', '.join(ATTENTION_MASK_FORMS)}")
        if self.attention == "block-causal" and self.attention_mask in ("2d-long", "2d-bool"):
            raise ValueError(f"family {self.name}: block-causal attention is passed as a 4-D mask (or built by "
                             "the model itself with attention_mask='none')")
        if self.kv_cache and not self.attention_mask.startswith("4d"):
            raise ValueError(f"family {self.name}: a KV cache needs a 4-D mask (the cached keys' attention)")
        if self.kv_cache and self.shifted_logits and self.attention == "block-causal":
            raise ValueError(f"family {self.name}: the exact block KV cache needs unshifted logits")

    def for_model(self, model) -> "FamilyProfile":
        """This profile for `model`: the published code's calling convention unless it is our native module."""
        from mdlm.families import NATIVE

        if not self.native or isinstance(model, tuple(cls for _, cls in NATIVE.values())) or not self.published_code:
            return self
        return dataclasses.replace(self, **dict(self.published_code), native=False, published_code=())


def _features(kv_cache="RADD reuse", assd="no", schema="yes", lm_eval="yes", rl="no"):
    return {"KV cache": kv_cache, "ASSD": assd, "schema": schema, "lm-eval": lm_eval, "finetuning": rl}


QWEN_STOPS = ("<|endoftext|>", "<|im_end|>")
LLADA_STOPS = ("<|endoftext|>", "<|eot_id|>")

FAMILY_REGISTRY: dict[str, FamilyProfile] = {p.name: p for p in (
    FamilyProfile("ours", "this stack's MDLMForMaskedLM (mdlm-pretrain runs)", ("MDLMForMaskedLM",),
                  features=_features("RADD reuse, exact block KV", "as-arm runs", rl="SFT, RL (full or LoRA)")),
    FamilyProfile("bert", "BERT masked LMs (transformers BertForMaskedLM)", ("BertForMaskedLM",), ("bert",),
                  position_ids=True, ban_special_tokens=True, examples=("google-bert/bert-base-uncased",), features=_features()),
    FamilyProfile("roberta", "RoBERTa masked LMs (transformers RobertaForMaskedLM)", ("RobertaForMaskedLM",),
                  ("roberta", "xlm-roberta"), position_ids=True, position_offset="pad+1", ban_special_tokens=True, examples=("FacebookAI/roberta-base",),
                  features=_features()),
    FamilyProfile("modernbert", "ModernBERT (transformers ModernBertForMaskedLM)", ("ModernBertForMaskedLM",),
                  ("modernbert",), position_ids=True, ban_special_tokens=True, examples=("answerdotai/ModernBERT-base",),
                  features=_features()),
    FamilyProfile("llada", "LLaDA 8B / 1.5 (Nie et al. 2025): Llama blocks, bidirectional; native (mdlm.families.llada)",
                  ("LLaDAModelLM",), ("llada",), attention_mask="4d-bool", position_ids=True,
                  known_mask_token_id=126336, stop_tokens=LLADA_STOPS, chat_template=True, kv_cache=True, native=True,
                  published_code=(("attention_mask", "2d-long"), ("position_ids", False), ("kv_cache", False),
                                  ("trust_remote_code", True), ("auto_class", "AutoModel")),
                  examples=("GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct", "GSAI-ML/LLaDA-1.5"),
                  features=_features("RADD reuse, Fast-dLLM prefix + dual (approximate)", rl="SFT, RL (full or LoRA)")),
    FamilyProfile("llada-moe", "LLaDA-MoE (inclusionAI): bidirectional MoE", ("LLaDAMoEModelLM",),
                  ("lladamoe", "llada_moe"), auto_class="AutoModel", trust_remote_code=True,
                  known_mask_token_id=156895, stop_tokens=("<|endoftext|>", "<|role_end|>"), chat_template=True,
                  examples=("inclusionAI/LLaDA-MoE-7B-A1B-Instruct",), features=_features()),
    FamilyProfile("llada2", "LLaDA2 (inclusionAI): block diffusion, 4-D additive block-causal mask, HF cache",
                  ("LLaDA2MoeModelLM",), ("llada2_moe",), auto_class="AutoModelForCausalLM", trust_remote_code=True,
                  attention_mask="4d-additive", position_ids=True, known_mask_token_id=156895,
                  stop_tokens=("<|endoftext|>", "<|role_end|>"), chat_template=True, attention="block-causal",
                  block_size=32, kv_cache=True, examples=("inclusionAI/LLaDA2.0-mini-preview",),
                  features=_features("RADD reuse, exact block KV")),
    FamilyProfile("dream", "Dream / DiffuCoder (Qwen2.5-initialised): Qwen2 blocks, shifted logits; native "
                  "(mdlm.families.dream)", ("DreamModel",), ("Dream", "dream"), attention_mask="4d-bool",
                  position_ids=True, shifted_logits=True, known_mask_token_id=151666, stop_tokens=QWEN_STOPS,
                  chat_template=True, kv_cache=True, native=True, schedule="dream",
                  published_code=(("kv_cache", False), ("trust_remote_code", True), ("auto_class", "AutoModel"),
                                  ("schedule", None)),
                  examples=("Dream-org/Dream-v0-Instruct-7B", "apple/DiffuCoder-7B-Instruct"),
                  features=_features("RADD reuse, Fast-dLLM prefix + dual (approximate)",
                                     schema="unconstrained (shifted logits)", rl="SFT, RL (full or LoRA)")),
    FamilyProfile("sdar", "SDAR (Qwen3-initialised): Qwen3 blocks, block diffusion (block 4); native "
                  "(mdlm.families.sdar)", ("SDARForCausalLM",), ("sdar",), attention_mask="4d-bool", position_ids=True,
                  known_mask_token_id=151669, stop_tokens=QWEN_STOPS, chat_template=True, attention="block-causal",
                  block_size=4, block_size_key="block_size", kv_cache=True, native=True,
                  published_code=(("kv_cache", False), ("trust_remote_code", True),
                                  ("auto_class", "AutoModelForCausalLM")),
                  examples=("JetLM/SDAR-1.7B-Chat",),
                  features=_features("RADD reuse, exact block KV", rl="SFT, RL (full or LoRA)")),
    FamilyProfile("mdlm-owt", "MDLM on OpenWebText (Sahoo et al. 2024): a DiT, bidirectional, timesteps input; "
                  "native (mdlm.families.dit)", ("MDLM",), attention_mask="4d-bool", position_ids=True,
                  time_input="timesteps", known_mask_token_id=50257, kv_cache=True, native=True,
                  published_code=(("attention_mask", "none"), ("position_ids", False), ("kv_cache", False),
                                  ("trust_remote_code", True), ("auto_class", "AutoModelForMaskedLM")),
                  examples=("kuleshov-group/mdlm-owt",),
                  features=_features("RADD reuse, Fast-dLLM prefix + dual (approximate)")),
    FamilyProfile("bd3lm", "BD3-LM (Arriola et al. 2025): the DiT, block-causal in sample mode; native "
                  "(mdlm.families.dit)", ("BD3LM",), ("bd3lm",), attention_mask="4d-bool", position_ids=True,
                  time_input="timesteps", known_mask_token_id=50257, attention="block-causal", block_size=4,
                  block_size_key="block_size", kv_cache=True, native=True,
                  published_code=(("attention_mask", "none"), ("position_ids", False), ("kv_cache", False),
                                  ("trust_remote_code", True), ("auto_class", "AutoModelForMaskedLM"),
                                  ("extra_kwargs", (("sample_mode", True), ("store_kv", False)))),
                  examples=("kuleshov-group/bd3lm-owt-block_size4",), features=_features("RADD reuse, exact block KV")),
    FamilyProfile("masked-lm", "any other transformers masked LM whose config or tokenizer has a mask token "
                  "(never detected: the fallback)", ban_special_tokens=True, features=_features()),
    FamilyProfile("diffusion-gemma", "DiffusionGemma (transformers' own DiffusionGemmaForBlockDiffusion): uniform-noise "
                  "block diffusion, no mask token; canvases of `canvas_length` denoised with the entropy-bound sampler "
                  "(mdlm.decode.uniform_noise)", ("DiffusionGemmaForBlockDiffusion",), ("diffusion_gemma",),
                  auto_class="DiffusionGemmaForBlockDiffusion", attention_mask="none", attention="block-causal",
                  block_size=256, block_size_key="canvas_length", stop_tokens=("<end_of_turn>", "<turn|>", "<eos>"),
                  chat_template=True, examples=("google/diffusiongemma-26B-A4B-it",),
                  features={**_features("encoder KV cache of committed canvases", "no (uniform noise)",
                                        "no (uniform noise)", "generate_until (no likelihood)"),
                            "mask id": "none (uniform noise)"}),
)}


def families_table() -> str:
    """The README's table of families and what of this stack runs on each (kept equal by a test)."""
    columns = ["KV cache", "ASSD", "schema", "lm-eval", "finetuning"]
    lines = ["| family | detected from | mask id | calling convention | " + " | ".join(columns) + " |",
             "| --- " * (4 + len(columns)) + "|"]
    for p in FAMILY_REGISTRY.values():
        detected = ", ".join(f"`{a}`" for a in p.architectures) or "fallback"
        mask = f"config / tokenizer, else {p.known_mask_token_id}" if p.known_mask_token_id else "config / tokenizer"
        mask = p.features.get("mask id", mask)  # a family with no mask token says so
        convention = [f"mask {p.attention_mask}"] + (["positions"] if p.position_ids else []) + \
            ([f"`{p.time_input}`=0"] if p.time_input else []) + (["shifted logits"] if p.shifted_logits else []) + \
            ([f"block-causal ({p.block_size})"] if p.attention == "block-causal" else []) + \
            (["remote code"] if p.trust_remote_code else []) + (["native (no remote code)"] if p.native else []) + \
            ([f"{p.schedule} schedule"] if p.schedule else []) + (["chat template"] if p.chat_template else [])
        if p.name == "ours":
            convention = ["any mask, positions, own KV cache"]
        lines.append(f"| `{p.name}` | {detected} | {mask} | {', '.join(convention)} | " +
                     " | ".join(p.features.get(c, "") for c in columns) + " |")
    return "\n".join(lines)


def register_family(profile: FamilyProfile) -> None:
    """Add (or replace) a family: `--family NAME` and detection from its architectures / model types."""
    FAMILY_REGISTRY[profile.name] = profile


def get_family(name: str) -> FamilyProfile:
    if name not in FAMILY_REGISTRY:
        raise ValueError(f"unknown --family {name!r}; choose one of {', '.join(FAMILY_REGISTRY)}")
    return FAMILY_REGISTRY[name]


def detect_family(config) -> FamilyProfile | None:
    """The family of a model config, from its architectures first (MDLM-OWT and this stack share
    model_type "mdlm"), then its model_type; None when no family claims it."""
    architectures = list(getattr(config, "architectures", None) or [])
    for profile in FAMILY_REGISTRY.values():
        if any(a in profile.architectures for a in architectures):
            return profile
    model_type = getattr(config, "model_type", None)
    if model_type == "mdlm" and not architectures:
        return FAMILY_REGISTRY["ours"]
    for profile in FAMILY_REGISTRY.values():
        if model_type in profile.model_types:
            return profile
    return None


def resolve_mask_token_id(profile: FamilyProfile, config, tokenizer=None, mask_token_id: int | None = None) -> int:
    """The mask id: given, else the config's, else the tokenizer's, else the family's known id."""
    for candidate in (mask_token_id, getattr(config, "mask_token_id", None),
                      getattr(tokenizer, "mask_token_id", None), profile.known_mask_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError(f"this {profile.name} model has no mask token: neither its config nor its tokenizer names one "
                     "and the family knows none; name the family with --family (family=) or pass mask_token_id=")


CONTEXT_FIELDS = ("max_position_embeddings", "max_sequence_length", "model_length", "n_positions")


def context_length(config) -> int | None:
    """The most positions the model takes, from whichever field its family names it with (transformers'
    max_position_embeddings; LLaDA's published config max_sequence_length; MDLM-OWT / BD3-LM model_length)."""
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def stop_token_ids(profile: FamilyProfile, tokenizer, config) -> list[int]:
    """End-of-text first (the tokenizer's EOS, else the config's), then the family's other stop tokens
    that the tokenizer has."""
    ids = []
    for candidate in (getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        for i in (candidate if isinstance(candidate, (list, tuple)) else [candidate]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    for token in profile.stop_tokens:
        if token in vocab and vocab[token] not in ids:
            ids.append(int(vocab[token]))
    return ids


class ProfiledDenoiser(CountedDenoiser):
    """Any model of a registered family as a `Denoiser`: its profile says how to call it.

    `at=` positions: where the model exposes its output embedding (`get_output_embeddings()`), the
    hidden states are gathered at those positions right before it, so the (B, L, V) logits are never
    made; else the logits are gathered. Block-causal families with a Hugging Face cache get the exact
    block KV cache (`supports_cache`); rows of a family that takes no attention mask are run one by one
    with their padding cut."""

    def __init__(self, model, profile: FamilyProfile, mask_token_id: int | None = None, tokenizer=None,
                 block_size: int | None = None, banned_token_ids=()):
        config = getattr(model, "config", None)
        profile = profile.for_model(model)
        super().__init__(model, resolve_mask_token_id(profile, config, tokenizer, mask_token_id), context_length(config))
        self.profile, self.config = profile, config
        self.attention = profile.attention
        if profile.attention == "block-causal":
            configured = getattr(config, profile.block_size_key, None) if profile.block_size_key else None
            self.block_size = int(block_size or configured or profile.block_size)
        self.supports_cache = profile.kv_cache
        self.stop_token_ids = stop_token_ids(profile, tokenizer, config)
        self.eos_token_id = self.stop_token_ids[0] if self.stop_token_ids else None
        banned = ({self.mask_token_id} if profile.subs else set()) | {int(i) for i in banned_token_ids}
        if profile.ban_special_tokens and tokenizer is not None:
            banned |= {int(i) for i in tokenizer.all_special_ids if i not in (self.mask_token_id, self.eos_token_id)}
        self.banned_token_ids = sorted(banned)
        head = getattr(model, "get_output_embeddings", None)
        self.head = head() if callable(head) else None

    # ---------------------------------------------------------------------------------------- calling
    def _logits(self, ids, valid, positions, cache, use_cache, at):
        valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.bool()
        positions = default_position_ids(valid) if positions is None else positions
        if self.profile.attention_mask == "none" and not bool(valid.all()):
            return self._row_by_row(ids, valid, positions, at)
        if not self.profile.position_ids:
            _check_relative_positions(positions, valid, self.profile.name)
        kwargs = self._call_kwargs(ids, valid, positions, cache, use_cache)
        out, gathered = self._forward(ids, kwargs, at)
        logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)
        if not gathered:
            if self.profile.shifted_logits:
                logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
            logits = gather_at(logits, at)
        if self.banned_token_ids:
            logits = logits.clone()
            logits[..., self.banned_token_ids] = float("-inf")
        if use_cache:
            return logits, self._new_cache(out, cache, positions, valid)
        return logits

    def _forward(self, ids, kwargs, at):
        """The model's output, and whether its head already ran at `at` only."""
        head_positions = at
        if at is not None and self.profile.shifted_logits:
            head_positions = (at - 1).clamp_min(0)  # position i is read from the hidden state at i - 1
        with _head_only_at(self.head, head_positions) as gathered:
            out = self.model(input_ids=ids, **kwargs)
        return out, bool(gathered)

    def _call_kwargs(self, ids, valid, positions, cache, use_cache) -> dict:
        profile = self.profile
        kwargs = dict(profile.extra_kwargs)
        if profile.time_input:
            kwargs[profile.time_input] = torch.zeros(ids.shape[0], device=ids.device)
        if profile.position_ids:
            offset = profile.position_offset
            kwargs["position_ids"] = positions + (int(self.config.pad_token_id) + 1 if offset == "pad+1" else offset)
        if profile.attention_mask in ("2d-long", "2d-bool"):
            kwargs["attention_mask"] = valid.long() if profile.attention_mask == "2d-long" else valid
        elif profile.attention_mask.startswith("4d"):
            keys_valid, keys_position = valid, positions
            if cache is not None:
                keys_valid = torch.cat([cache.valid, valid], 1)
                keys_position = torch.cat([cache.positions, positions], 1)
            allowed = self._allowed(valid, positions, keys_valid, keys_position)
            if profile.attention_mask == "4d-additive":
                dtype = _float_dtype(self.model)
                kwargs["attention_mask"] = torch.zeros(allowed.shape, dtype=dtype, device=ids.device).masked_fill(
                    ~allowed, torch.finfo(dtype).min)
            else:
                kwargs["attention_mask"] = allowed
        if cache is not None or use_cache:
            kwargs["past_key_values"] = _hf_cache(cache)
            kwargs["use_cache"] = True
        return kwargs

    def _allowed(self, valid, positions, keys_valid, keys_position) -> torch.Tensor:
        """(B, 1, Lq, Lk) bool: query q may attend key k. Every query sees itself, so that a padding
        query never has an empty row (which SDPA turns into NaN)."""
        allowed = keys_valid[:, None, None, :].expand(-1, 1, valid.shape[1], -1)
        if self.attention == "block-causal":
            query_block = positions[:, None, :, None] // self.block_size
            key_block = keys_position[:, None, None, :] // self.block_size
            allowed = allowed & (key_block <= query_block)
        offset = keys_valid.shape[1] - valid.shape[1]
        own = torch.zeros(allowed.shape[-2:], dtype=torch.bool, device=valid.device)
        own[:, offset:] = torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
        return allowed | own

    def _row_by_row(self, ids, valid, positions, at):
        """A family without an attention mask cannot ignore padding: each row runs alone, padding cut."""
        rows = []
        for b in range(ids.shape[0]):
            columns = valid[b].nonzero()[:, 0]
            if len(columns) == 0 or int(columns[-1] - columns[0]) + 1 != len(columns):
                raise ValueError(f"family {self.profile.name} takes no attention mask, so a row's valid tokens must "
                                 "be one contiguous span (padding on one side only)")
            lo, hi = int(columns[0]), int(columns[-1]) + 1
            piece = self._logits(ids[b:b + 1, lo:hi], valid[b:b + 1, lo:hi], positions[b:b + 1, lo:hi], None,
                                 False, None)
            full = piece.new_zeros((1, ids.shape[1], piece.shape[-1]))
            full[:, lo:hi] = piece
            rows.append(gather_at(full, None if at is None else at[b:b + 1]))
        return torch.cat(rows)

    @staticmethod
    def _new_cache(out, cache, positions, valid) -> KVCache:
        """This call's keys/values appended to the cache, as an immutable `KVCache` (what the block
        decoder truncates); the model's own Cache object is rebuilt from it at every call."""
        keys, values = _cache_tensors(out.past_key_values)
        old_positions = cache.positions if cache is not None else positions[:, :0]
        old_valid = cache.valid if cache is not None else valid[:, :0]
        return KVCache(keys, values, torch.cat([old_positions, positions], 1), torch.cat([old_valid, valid], 1))


class HFMaskedLMDenoiser(ProfiledDenoiser):
    """A Hugging Face masked LM that no family claims, by the generic `masked-lm` profile: the mask
    token's logit at -inf (SUBS); other tokens it should never generate are the caller's `banned_token_ids`."""

    def __init__(self, model, mask_token_id: int | None = None, banned_token_ids=()):
        super().__init__(model, FAMILY_REGISTRY["masked-lm"], mask_token_id, banned_token_ids=banned_token_ids)


def _check_relative_positions(positions, valid, family: str) -> None:
    """A model without position ids uses each column's index; with relative (rotary) positions that is
    the same as ours when a row's positions are its columns plus a constant."""
    columns = torch.arange(positions.shape[1], device=positions.device).expand_as(positions)
    offset = (positions - columns).masked_fill(~valid, 0)
    first = offset.gather(1, valid.long().argmax(1, keepdim=True))
    if bool(((offset != first) & valid).any()):
        raise ValueError(f"family {family} takes no position ids: a canvas row's positions must be consecutive "
                         "columns (no custom position_ids)")


def _float_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _hf_cache(cache: KVCache | None):
    """A fresh transformers DynamicCache holding `cache`'s keys/values (the model may grow it in place;
    our cache stays as it was, so a block can be run many times against the same prefix)."""
    from transformers import DynamicCache

    fresh = DynamicCache()
    if cache is not None:
        for layer, (k, v) in enumerate(zip(cache.keys, cache.values)):
            fresh.update(k, v, layer)
    return fresh


def _cache_tensors(hf_cache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if hasattr(hf_cache, "layers"):  # transformers >= 4.56
        return [layer.keys for layer in hf_cache.layers], [layer.values for layer in hf_cache.layers]
    if hasattr(hf_cache, "key_cache"):
        return list(hf_cache.key_cache), list(hf_cache.value_cache)
    return [k for k, _ in hf_cache], [v for _, v in hf_cache]  # legacy tuple of (key, value) per layer


@contextlib.contextmanager
def _head_only_at(head, at):
    """Within the block, the output embedding `head` sees its input (B, L, H) gathered at `at` (B, K);
    yields a list that is non-empty once that happened (a model whose head input is not (B, L, H) is
    left alone and its logits are gathered instead)."""
    applied = []
    if head is None or at is None:
        yield applied
        return

    def gather_input(module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[0] != at.shape[0]:
            return None
        applied.append(True)
        return (hidden.gather(1, at[..., None].expand(-1, -1, hidden.shape[-1])), *args[1:])

    handle = head.register_forward_pre_hook(gather_input)
    try:
        yield applied
    finally:
        handle.remove()
