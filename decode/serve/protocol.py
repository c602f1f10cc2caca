"""The OpenAI request and response shapes: a request body -> a validated `Request`, or an `APIError` that
names the field (the HTTP side answers it as an OpenAI-style JSON error with a 4xx status).

OpenAI fields keep their meaning: model, prompt / messages, max_tokens (the number of positions
the diffusion canvas gets; the text is cut at EOS and at `stop`), temperature (default 1), top_p, n, stop,
seed, stream, stream_options.include_usage, response_format. Decoding knobs are extra body fields named as
in `DecodeConfig` (DECODE_FIELDS: sampler, steps, unmasking_schedule (or its former name schedule),
remasking, threshold, entropy_bound, block_length, top_k, eoser, ..., the caches, the ASSD knobs).
stream_options.include_denoising adds one event per network call (step, nfe, revealed positions, canvas).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields

from mdlm.decode.config import DecodeConfig

DECODE_FIELDS = ("sampler", "steps", "unmasking_schedule", "schedule", "remasking", "threshold", "entropy_bound",
                 "block_length", "top_k", "eoser", "eoser_gamma_min", "use_cache", "approximate_prefix_cache",
                 "dual_cache", "full_logits", "masking_schedule", "draft_size", "adaptive_draft", "order")
OPENAI_FIELDS = ("model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
                 "stream", "stream_options", "response_format")
# Accepted for compatibility and ignored (their neutral value changes nothing here).
IGNORED_FIELDS = ("user", "logprobs", "top_logprobs", "echo", "best_of", "logit_bias", "frequency_penalty",
                  "presence_penalty", "suffix", "metadata", "store", "parallel_tool_calls", "service_tier")
MAX_STOP_STRINGS = 4
# The knobs of the masked samplers: a uniform-noise model (DiffusionGemma) has no mask to fill, and its one
# sampler ('uniform-noise') takes steps (per canvas) and entropy_bound only; the rest would be silently ignored.
MASKED_ONLY_FIELDS = tuple(name for name in DECODE_FIELDS if name not in ("sampler", "steps", "entropy_bound"))


class APIError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Request:
    """A validated request: prompts (token ids, one per prompt), settings, and the stream options."""

    prompts: list[list[int]]
    prompt_texts: list[str]
    max_tokens: int
    n: int
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    include_denoising: bool
    config: DecodeConfig
    schema: dict | None
    model: str

    def seeds(self) -> list[int]:
        """One seed per choice (prompt p, sample j) -> seed + p n + j; random ones without a seed."""
        count = len(self.prompts) * self.n
        if self.seed is None:
            return [int.from_bytes(os.urandom(4), "little") for _ in range(count)]
        return [self.seed + k for k in range(count)]


def _type_error(name: str, expected: str, value) -> APIError:
    return APIError(f"{name} must be {expected}, got {value!r}", name)


def _integer(body: dict, name: str, default, low: int | None = None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer", value)
    if low is not None and value < low:
        raise APIError(f"{name} must be >= {low}, got {value}", name)
    return value


def _number(body: dict, name: str, default):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _type_error(name, "a finite number", value)
    return float(value)


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _type_error("stop", "a string or a list of strings", stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(f"stop holds {len(stops)} strings; at most {MAX_STOP_STRINGS} are allowed", "stop")
    return [s for s in stops if s]


def _param_of(message: str) -> str | None:
    """The DecodeConfig field a ValueError of its validation names: the field it starts with ('steps must
    be', 'sampler=...', 'block_length applies'), else the first field it mentions."""
    match = re.match(r"\s*(\w+)", message)
    if match and match.group(1) in {f.name for f in fields(DecodeConfig)}:
        return match.group(1)
    for name in DECODE_FIELDS:
        if re.search(rf"\b{name}\b", message):
            return name
    return None


def uniform_noise_options(body: dict, options: dict) -> None:
    """A uniform-noise model's request: sampler 'uniform-noise' by default (and the only one), masked-only
    knobs refused naming the field."""
    sampler = options.setdefault("sampler", "uniform-noise")
    if sampler != "uniform-noise":
        raise APIError(f"sampler {sampler!r} fills masks, and this uniform-noise model (DiffusionGemma) has none; "
                       "use sampler 'uniform-noise' (the default) or leave it out", "sampler")
    for name in (*MASKED_ONLY_FIELDS, "top_p"):
        if body.get(name) is not None and not (name == "top_p" and body[name] == 1):
            raise APIError(f"{name} applies to the masked samplers; this uniform-noise model's sampler takes steps "
                           "(per canvas) and entropy_bound only: drop it", name)
    if body.get("response_format") not in (None, {"type": "text"}):
        raise APIError("response_format json_schema scaffolds a masked canvas; a uniform-noise model has no masks: "
                       "drop response_format", "response_format")


def decode_config(body: dict, eos_token_id, corruption: str = "absorbing") -> DecodeConfig:
    """The DecodeConfig of a request's body (OpenAI's temperature/top_p/seed and the extra knobs)."""
    options = {name: body[name] for name in DECODE_FIELDS if body.get(name) is not None}
    if "sampler" in options and not isinstance(options["sampler"], str):
        raise _type_error("sampler", "a string", options["sampler"])
    if corruption == "uniform":
        uniform_noise_options(body, options)
    for name in ("steps", "block_length", "top_k", "draft_size"):
        if name in options:
            _integer(options, name, None, 1)
    if "schedule" in options:  # DecodeConfig's former name of unmasking_schedule
        options.setdefault("unmasking_schedule", options.pop("schedule"))
    for name in ("threshold", "eoser_gamma_min", "entropy_bound"):
        if name in options:
            options[name] = _number(options, name, None)
    for name in ("eoser", "use_cache", "approximate_prefix_cache", "dual_cache", "full_logits", "adaptive_draft"):
        if name in options and not isinstance(options[name], bool):
            raise _type_error(name, "true or false", options[name])
    temperature = _number(body, "temperature", 1.0)
    if temperature < 0:
        raise APIError(f"temperature must be >= 0, got {temperature}", "temperature")
    top_p = _number(body, "top_p", None)
    try:
        return DecodeConfig(temperature=temperature, top_p=None if top_p == 1.0 else top_p,
                            seed=_integer(body, "seed", None), eos_token_id=eos_token_id, **options)
    except ValueError as error:
        raise APIError(str(error), _param_of(str(error)) or ("top_p" if "top_p" in str(error) else None)) from None


def check_fields(body: dict, prompt_field: str) -> None:
    known = set(DECODE_FIELDS) | set(OPENAI_FIELDS) | set(IGNORED_FIELDS) | {prompt_field}
    for name in body:
        if name not in known:
            raise APIError(f"unknown field {name!r}; the decoding fields are {', '.join(DECODE_FIELDS)}", name)


def stream_options(body: dict) -> tuple[bool, bool]:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    unknown = set(options) - {"include_usage", "include_denoising"}
    if unknown:
        raise APIError(f"unknown stream option {sorted(unknown)[0]!r}; use include_usage, include_denoising",
                       "stream_options")
    return bool(options.get("include_usage")), bool(options.get("include_denoising"))


def json_schema_of(body: dict) -> dict | None:
    """The JSON schema of response_format {"type": "json_schema", "json_schema": {"schema": ...}}, or None."""
    response_format = body.get("response_format")
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or "type" not in response_format:
        raise _type_error("response_format", 'an object with a "type"', response_format)
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind != "json_schema":
        raise APIError(f"response_format type {kind!r} is not supported; use 'json_schema' with a schema (schema "
                       "scaffolding needs the schema to write the JSON skeleton) or 'text'", "response_format")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise APIError("response_format.json_schema.schema must be a JSON Schema object",
                       "response_format.json_schema.schema")
    return schema


def chat_text(tokenizer, messages) -> str:
    """The prompt of a chat: the tokenizer's chat template with the generation prompt; a tokenizer without
    one gets plain `role: content` lines ending in `assistant:`."""
    if not isinstance(messages, list) or not messages:
        raise APIError("messages must be a non-empty list of {role, content} objects", "messages")
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise APIError(f"messages[{k}] must be an object with a role and a content", f"messages[{k}]")
        content = message.get("content")
        if isinstance(content, list):  # the content-parts form: the text parts in order
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            message = {**message, "content": content}
            messages[k] = message
        if not isinstance(message.get("content"), str):
            raise APIError(f"messages[{k}].content must be a string", f"messages[{k}].content")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def parse_request(body, tokenizer, *, chat: bool, context: int | None, max_batch: int, eos_token_id,
                  model_name: str, default_max_tokens: int = 64, corruption: str = "absorbing") -> Request:
    """Validate an OpenAI request body -> `Request` (raises `APIError` naming the field). `corruption`: the
    model's ("uniform": DiffusionGemma, whose default and only sampler is 'uniform-noise')."""
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object", None)
    prompt_field = "messages" if chat else "prompt"
    check_fields(body, prompt_field)
    if prompt_field not in body:
        raise APIError(f"{prompt_field} is required", prompt_field)
    if chat:
        texts = [chat_text(tokenizer, body["messages"])]
    else:
        prompt = body["prompt"]
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise _type_error("prompt", "a string or a non-empty list of strings", prompt)
    prompts = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) if t else [] for t in texts]
    n = _integer(body, "n", 1, 1)
    if n * len(prompts) > max_batch:
        param = "n" if len(prompts) == 1 else "prompt"
        raise APIError(f"{len(prompts)} prompt(s) x n={n} is {n * len(prompts)} sequences, more than this server's "
                       f"--max-batch {max_batch}; ask for fewer", param)
    longest = max(len(p) for p in prompts)
    room = None if context is None else context - longest
    if room is not None and room < 1:
        raise APIError(f"the prompt is {longest} tokens, the model's whole context ({context}); shorten it",
                       prompt_field)
    requested = body.get("max_tokens", body.get("max_completion_tokens"))
    name = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = _integer({name: requested}, name, None, 1)
    if max_tokens is None:
        max_tokens = default_max_tokens if room is None else min(default_max_tokens, room)
    if room is not None and max_tokens > room:
        raise APIError(f"max_tokens={max_tokens} with a {longest}-token prompt is {longest + max_tokens} tokens, past "
                       f"the model's context of {context}; ask for max_tokens <= {room}", name)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _type_error("stream", "true or false", stream)
    include_usage, include_denoising = stream_options(body)
    config = decode_config(body, eos_token_id, corruption)
    model = body.get("model") or model_name
    if not isinstance(model, str):
        raise _type_error("model", "a string", model)
    return Request(prompts=prompts, prompt_texts=texts, max_tokens=max_tokens, n=n, stop=_stops(body),
                   seed=config.seed, stream=stream, include_usage=include_usage, include_denoising=include_denoising,
                   config=config, schema=json_schema_of(body), model=model)
