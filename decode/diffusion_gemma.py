"""DiffusionGemma (transformers' `DiffusionGemmaForBlockDiffusion`) as a uniform-noise `Denoiser`.

DiffusionGemma is an encoder-decoder block diffusion LM: the encoder writes the keys/values of the prompt
and of every committed canvas into one KV cache; the decoder denoises a canvas of `canvas_length` tokens
that start as uniform random tokens (no mask token), attending to that cache and to the whole canvas, and
is self-conditioned on its own previous logits. This wrapper exposes exactly those two calls, in the
convention of transformers' own `generate` (`generation_diffusion_gemma.py`): `encode` appends tokens to
the encoder cache, `denoise` is one decoder call (one NFE). The algorithm around them (temperature
schedule, entropy-bound acceptance, re-noising, adaptive stopping, committing) is `mdlm.decode.uniform_noise`.

Nothing is loaded from remote code: the class is transformers' own. The checkpoint's generation config
(`generation_config.json`: steps, entropy bound, temperatures, stopping thresholds, eos / pad ids) gives
the decoding defaults, with transformers' own defaults where it says nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mdlm.decode.denoiser import CountedDenoiser

ARCHITECTURE = "DiffusionGemmaForBlockDiffusion"


@dataclass(frozen=True)
class UniformNoiseSettings:
    """The knobs of uniform-noise block decoding (the fields of `DiffusionGemmaGenerationConfig`).

    max_denoising_steps: decoder calls per canvas at most. entropy_bound: gamma of the entropy-bound
    acceptance (Ben-Hamu et al. 2025). t_max -> t_min: the temperature falls linearly over the steps.
    stability_threshold / confidence_threshold: adaptive stopping ends a canvas once its argmax has been
    the same for `stability_threshold` steps and its mean entropy is below `confidence_threshold`; either
    None turns adaptive stopping off. eos_token_ids / pad_token_id: a row whose canvas holds an eos is
    finished; what follows its eos (and every later canvas) becomes pad."""

    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_max: float = 0.8
    t_min: float = 0.4
    stability_threshold: int | None = 1
    confidence_threshold: float | None = 0.005
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if not (isinstance(self.max_denoising_steps, int) and self.max_denoising_steps >= 1):
            raise ValueError(f"steps (max_denoising_steps) must be an integer >= 1, got {self.max_denoising_steps}")
        if not self.entropy_bound > 0:
            raise ValueError(f"entropy_bound must be > 0 (it is the most mutual information a step may accept), "
                             f"got {self.entropy_bound}")
        if not 0 <= self.t_min < self.t_max:
            raise ValueError(f"the temperature schedule needs 0 <= t_min < t_max, got t_min={self.t_min}, "
                             f"t_max={self.t_max}")

    @property
    def adaptive_stopping(self) -> bool:
        return self.stability_threshold is not None and self.confidence_threshold is not None


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(i) for i in (value if isinstance(value, (list, tuple)) else [value]))


def settings_of_generation_config(generation_config, fallback_eos=(), fallback_pad=None) -> UniformNoiseSettings:
    """The checkpoint's DiffusionGemma generation config as settings; unset fields take transformers'
    own defaults (`DiffusionGemmaGenerationConfig._get_default_generation_params`)."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

    defaults = DiffusionGemmaGenerationConfig._get_default_generation_params()

    def field(name):
        value = getattr(generation_config, name, None)
        return defaults[name] if value is None else value

    sampler = getattr(generation_config, "sampler_config", None) or defaults["sampler_config"]
    eos = _ids(getattr(generation_config, "eos_token_id", None)) or tuple(fallback_eos)
    pad = getattr(generation_config, "pad_token_id", None)
    return UniformNoiseSettings(
        max_denoising_steps=int(field("max_denoising_steps")), entropy_bound=float(sampler.entropy_bound),
        t_max=float(field("t_max")), t_min=float(field("t_min")),
        stability_threshold=field("stability_threshold"), confidence_threshold=field("confidence_threshold"),
        eos_token_ids=eos, pad_token_id=fallback_pad if pad is None else int(pad))


@dataclass
class EncoderCache:
    """The encoder's KV cache of everything before the current canvas, and what the decoder needs to
    read it: the 2-D key validity (False at left padding), the number of columns encoded, and the
    decoder's attention mask over cache + canvas (built once per canvas, as transformers does)."""

    cache: object
    attention_mask: torch.Tensor  # (B, T) bool
    length: int
    decoder_mask: object = None


class DiffusionGemmaDenoiser(CountedDenoiser):
    """`DiffusionGemmaForBlockDiffusion` as a uniform-noise denoiser.

    corruption = "uniform": there is no mask token. The canvas still marks the positions to generate
    with `mask_token_id`, an id one past the vocabulary that the network never sees (the decoder
    replaces every such slot with uniform noise before the first call). `nfe` counts decoder calls;
    `encoder_calls` the encoder's (one per canvas)."""

    corruption = "uniform"
    attention = "block-causal"  # each canvas sees the cached past and itself, never a later canvas
    supports_cache = False  # the masked-model KV-cache protocol; the encoder cache is its own (encode)

    def __init__(self, model, tokenizer=None, stop_token_ids=()):
        config = model.config
        text = config.text_config
        super().__init__(model, int(text.vocab_size), getattr(text, "max_position_embeddings", None))
        self.config = config
        self.vocab_size = int(text.vocab_size)
        self.canvas_length = self.block_size = int(config.canvas_length)
        stops = list(stop_token_ids) or list(_ids(getattr(tokenizer, "eos_token_id", None)) + _ids(text.eos_token_id))
        self.stop_token_ids = list(dict.fromkeys(stops))
        self.eos_token_id = self.stop_token_ids[0] if self.stop_token_ids else None
        pad = getattr(tokenizer, "pad_token_id", None)
        self.settings = settings_of_generation_config(getattr(model, "generation_config", None), self.stop_token_ids,
                                                      text.pad_token_id if pad is None else pad)
        self.encoder_calls = 0

    # The masked-model face does not apply: refuse it in one line instead of computing nonsense.
    def _logits(self, ids, valid, positions, cache, use_cache, at):
        raise ValueError("DiffusionGemma is a uniform-noise model (no mask token): it denoises whole canvases; decode "
                         "it with sampler='uniform-noise' (mdlm-generate picks it by itself)")

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def encode(self, ids: torch.Tensor, attention_mask: torch.Tensor, encoded: EncoderCache | None = None
               ) -> EncoderCache:
        """Append `ids` (B, n) to the encoder cache (a new one for the prompt). `attention_mask` (B, T + n)
        covers every column so far; positions are columns (as the model's own generate numbers them)."""
        from transformers import DynamicCache

        model = self.model
        cache = encoded.cache if encoded is not None else DynamicCache(config=self.config.get_text_config(decoder=True))
        start = encoded.length if encoded is not None else 0
        batch, n = ids.shape
        positions = torch.arange(start, start + n, dtype=torch.int32, device=ids.device).unsqueeze(0)
        ids = ids.clone(memory_format=torch.contiguous_format)
        with torch.no_grad():
            mask = model.model.encoder.create_masks_for_generate(
                config=self.config, inputs_embeds=torch.empty((batch, n, 0), dtype=self.dtype, device=ids.device),
                attention_mask=attention_mask, cache=cache, position_ids=positions, mm_token_type_ids=None)
            cache = model.model.encoder(input_ids=ids, attention_mask=mask, cache=cache, position_ids=positions).cache
            decoder_mask = model.model.decoder.create_diffusion_decoder_attention_mask(
                config=self.config,
                # only its shape is read (transformers passes the long canvas here, so its dtype too)
                inputs_embeds=torch.empty((batch, self.canvas_length, 1), dtype=torch.long, device=ids.device),
                cache=cache,
                decoder_attention_mask=torch.nn.functional.pad(attention_mask, (0, self.canvas_length), value=True))
        self.encoder_calls += 1
        return EncoderCache(cache, attention_mask, start + n, decoder_mask)

    def denoise(self, canvas: torch.Tensor, self_conditioning_logits: torch.Tensor | None,
                encoded: EncoderCache) -> torch.Tensor:
        """One decoder call: logits (B, C, V) float32 (soft-capped, as the model returns them) for the
        canvas (B, C) at the columns after the cache, self-conditioned on the previous step's logits."""
        positions = torch.arange(encoded.length, encoded.length + canvas.shape[1], dtype=torch.int32,
                                 device=canvas.device).unsqueeze(0)
        self.nfe += 1
        self.row_evaluations += canvas.shape[0]
        with torch.no_grad():
            return self.model(decoder_input_ids=canvas, self_conditioning_logits=self_conditioning_logits,
                              decoder_attention_mask=encoded.decoder_mask, cache=encoded.cache,
                              decoder_position_ids=positions).logits

    @property
    def embedding_dtype(self) -> torch.dtype:
        """The dtype the self-conditioning logits are fed back in (the decoder's embeddings')."""
        return self.model.model.decoder.embed_tokens.weight.dtype


def tiny_diffusion_gemma(vocab_size: int, canvas_length: int = 8, hidden_size: int = 32, layers: int = 2,
                         seed: int = 0, sharpness: float = 1.0, **text_fields):
    """A small random `DiffusionGemmaForBlockDiffusion` built from its config (tests and benchmarks; nothing
    is downloaded): text sizes of a few dozen and a one-layer vision tower the text path never runs (the
    class always builds one). `sharpness` scales the weight matrices: random weights at the 0.02 init
    give near-uniform predictions; larger ones spread the entropies over the bound's range."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    text = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden_size // 2,
                global_head_dim=hidden_size // 2, max_position_embeddings=1024, sliding_window=16,
                layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"], num_experts=2, top_k_experts=1,
                moe_intermediate_size=hidden_size, **text_fields)
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8, position_embedding_size=64)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(DiffusionGemmaConfig(text_config=text, vision_config=vision,
                                                                 canvas_length=canvas_length)).eval()
    if sharpness != 1.0:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() == 2:
                    parameter.mul_(sharpness)
    return model
