"""Decoding for masked diffusion language models.

    from mdlm.decode import DecodeConfig, decode, generate
    result = decode(model, canvas, DecodeConfig(sampler="first-hitting", seed=0))
    texts = generate(model, tokenizer, ["def parse("], 64, DecodeConfig(sampler="confidence", steps=32))

Samplers: confidence (LLaDA / Fast-dLLM / MDPO RCR / EOSER+ASS / entropy-bound, semi-autoregressive
blocks, block KV caches), ancestral (tau-leaping with the RADD cache), first-hitting (Zheng et al. 2024),
assd (any-subset speculative decoding). Each lives in its own module; `registry.SAMPLER_REGISTRY` maps names to them.
Structured output: `generate_json(model, tokenizer, prompt, schema)` (schema scaffolding, `mdlm.decode.schema`).
"""

from mdlm.decode.canvas import Canvas
from mdlm.decode.config import DecodeConfig, DecodeResult
from mdlm.decode.denoiser import Denoiser, MDLMDenoiser, as_denoiser
from mdlm.decode.families import HFMaskedLMDenoiser, ProfiledDenoiser
from mdlm.decode.generate import Watcher, build_canvas, completion_stop_ids, generate, generate_with_result
from mdlm.decode.registry import SAMPLER_REGISTRY, decode, register_sampler
from mdlm.decode.schema import SchemaFitError, UnsupportedSchemaError, generate_json
from mdlm.decode.trace import TraceStep

__all__ = ["DecodeConfig", "DecodeResult", "TraceStep", "Denoiser", "HFMaskedLMDenoiser", "ProfiledDenoiser",
           "MDLMDenoiser", "as_denoiser", "Canvas", "decode", "generate", "generate_with_result", "build_canvas",
           "completion_stop_ids", "Watcher", "register_sampler", "SAMPLER_REGISTRY", "generate_json", "SchemaFitError",
           "UnsupportedSchemaError"]
