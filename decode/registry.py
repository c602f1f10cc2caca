"""Sampler registry and the one entry point `decode`.

Samplers are named "module:function" so that a sampler's module (and its dependencies) is imported only
when it is used, and other parts of the project can add samplers (`register_sampler`). Each function has
the signature `fn(denoiser, canvas, config, valid=None, position_ids=None, generator=None) -> DecodeResult`.
This module imports nothing of `mdlm.decode`, so `DecodeConfig` can check sampler names against it.
"""

from __future__ import annotations

import importlib

import torch

SAMPLER_REGISTRY: dict[str, str] = {
    "confidence": "mdlm.decode.confidence:confidence_decode",
    "ancestral": "mdlm.decode.ancestral:ancestral_decode",
    "first-hitting": "mdlm.decode.first_hitting:first_hitting_decode",
    "assd": "mdlm.decode.speculative:assd_decode",
    # ASSD's two baselines: one token per call (its distribution), and conditionally independent drafts.
    "assd-sequential": "mdlm.decode.speculative:sequential_decode",
    "assd-parallel": "mdlm.decode.speculative:parallel_decode",
    # Uniform-noise block diffusion (DiffusionGemma): random canvases, entropy-bound acceptance, re-noising.
    "uniform-noise": "mdlm.decode.uniform_noise:uniform_noise_decode",
}


def register_sampler(name: str, target: str) -> None:
    """Make `DecodeConfig(sampler=name)` call `target` ("package.module:function")."""
    if ":" not in target:
        raise ValueError(f"a sampler target is 'module:function', got {target!r}")
    SAMPLER_REGISTRY[name] = target


def resolve_sampler(name: str):
    if name not in SAMPLER_REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_REGISTRY)}")
    module_name, function_name = SAMPLER_REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ValueError(f"sampler {name!r} is registered as {SAMPLER_REGISTRY[name]} but its module "
                         f"cannot be imported ({error})") from error
    return getattr(module, function_name)


def make_generator(seed: int | None, generator: torch.Generator | None = None) -> torch.Generator | None:
    """The run's random stream: the caller's generator, else one seeded from the config, else None
    (torch's global generator)."""
    if generator is not None or seed is None:
        return generator
    return torch.Generator().manual_seed(int(seed))


def decode(model, canvas, config, valid=None, position_ids=None, generator=None):
    """Fill every mask-id position of `canvas` (B, L) with the sampler of `config` -> DecodeResult.

    `model` is wrapped once here (`as_denoiser`); every network call of the sampler goes through it."""
    from mdlm.decode.denoiser import as_denoiser

    sampler = resolve_sampler(config.sampler)
    denoiser = as_denoiser(model)
    was_training = denoiser.training
    if was_training:
        denoiser.eval()
    try:
        return sampler(denoiser, canvas, config, valid=valid, position_ids=position_ids,
                       generator=make_generator(config.seed, generator))
    finally:
        if was_training:
            denoiser.train()
