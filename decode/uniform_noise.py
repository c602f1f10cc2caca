"""Uniform-noise block diffusion decoding (DiffusionGemma) with entropy-bounded acceptance.

A uniform-noise model has no mask token: a canvas of C positions starts as tokens drawn uniformly from
the vocabulary, and every step the denoiser proposes a whole canvas. The entropy-bounded sampler (EB
sampler; Ben-Hamu, Gat, Severo, Nolte, Karrer 2025, "Accelerated Sampling from Masked Diffusion Models
via Entropy Bounded Unmasking", arXiv 2505.24857) accepts the lowest-entropy positions for as long as
their summed entropy minus their largest entropy (an upper bound on the mutual information between the
accepted tokens) stays under gamma; the other positions are re-noised with fresh uniform tokens. This
file follows transformers' own `DiffusionGemmaGenerationMixin.generate` (generation_diffusion_gemma.py)
step for step, and draws its random numbers in the same order, so that with the same seed both produce
the same tokens (tests/test_diffusion_gemma.py checks it).

Pseudocode (C = canvas length, N = max_denoising_steps, gamma = entropy_bound):
    cache = encode(prompt)                                    # encoder KV cache
    for each canvas, until max_new_tokens or every row has ended:
        x ~ Uniform(V)^C;  s = None                           # random canvas; no self-conditioning yet
        for n = N, N-1, ..., 1:                               # n = steps remaining
            l = denoise(x, s, cache) / T_n,   T_n = t_min + (t_max - t_min) n / N
            y_i ~ softmax(l_i);  a_i = argmax l_i;  H_i = entropy(softmax(l_i))
            sort H ascending; accept the prefix k with  sum_{j<=k} H_j - H_k <= gamma   (k >= 1)
            x_i = y_i if i accepted else u_i ~ Uniform(V)     # re-noise the rest
            adaptive stopping: a row is done once a has not changed for `stability_threshold` steps
                and mean_i H_i < `confidence_threshold` (a done row keeps its x, a, s)
            s = l                                             # self-conditioning on the previous logits
        commit a (the last argmax canvas); a row whose canvas holds an eos has ended: pad after the eos,
        and every later canvas of it is pad
        cache = encode(committed canvas)

Random draws, all from the run's generator, in this order: per canvas the initial canvas (B, C); per step
the categorical draws of y (B * C) and then the re-noising tokens (B, C), for every row of the batch
(done and ended rows too, as transformers does, so that one row's draws never depend on another's state).

Trace: one `TraceStep` per decoder call. `state` is each row before the step (prompt, committed canvases,
the current canvas as the noisy tokens it holds, the mask id at canvases still to come); `revealed` = the
accepted positions, `remasked` = the re-noised ones (they hold fresh noise tokens, not a mask: `x0` is the
row after the step, noise included); `logprob` = log p of each accepted token at temperature 1,
`policy_logprob` at the step's temperature.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from mdlm.decode.canvas import Canvas
from mdlm.decode.config import DecodeResult
from mdlm.decode.denoiser import as_denoiser
from mdlm.decode.trace import TraceRecorder


def scheduled_temperature(settings, steps_left: int, device) -> torch.Tensor:
    """T_n = t_min + (t_max - t_min) * n / N, computed in float32 from an int32 step as transformers'
    `LinearTemperatureScheduleLogitsProcessor` does (a float64 value can differ in the last bit)."""
    n = torch.tensor(steps_left, dtype=torch.int32, device=device)
    return settings.t_min + (settings.t_max - settings.t_min) * (n / settings.max_denoising_steps)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (B, C) of softmax(logits) per position (torch's Categorical, as the reference computes it)."""
    return torch.distributions.Categorical(logits=logits).entropy()


def entropy_bound_accept(entropy: torch.Tensor, bound: float) -> torch.Tensor:
    """(B, C) bool: per row the lowest-entropy positions whose summed entropy minus their largest entropy
    is <= bound (EB sampler). Sorted ascending, the largest entropy of a prefix is its last one, so the
    prefix of length k is accepted when cumsum_k - H_(k) <= bound; the first position always is."""
    sorted_entropy, order = torch.sort(entropy, dim=-1, descending=False)
    within_bound = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy <= bound
    return torch.scatter(torch.zeros_like(within_bound), -1, order, within_bound)


class StableAndConfident:
    """Adaptive stopping: done once the argmax canvas equals each of the last `stability` ones and the
    mean entropy is below `confidence` (transformers' StableAndConfidentStoppingCriteria)."""

    def __init__(self, stability: int, confidence: float):
        self.stability, self.confidence = stability, confidence
        self.history = None  # (stability, B, C) argmax canvases, oldest first; -1 before any

    def __call__(self, argmax: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        if self.stability == 0:
            stable = torch.ones(argmax.shape[0], dtype=torch.bool, device=argmax.device)
        else:
            if self.history is None:
                self.history = torch.full((self.stability, *argmax.shape), -1, dtype=argmax.dtype,
                                          device=argmax.device)
            stable = (self.history == argmax[None]).all(dim=-1).all(dim=0)
            self.history = torch.roll(self.history, shifts=-1, dims=0)
            self.history[-1] = argmax
        return stable & (entropy.mean(dim=-1) < self.confidence)


def settings_for(denoiser, config):
    """The denoiser's (checkpoint's) settings, with what the DecodeConfig sets: `steps` is the most
    denoising steps per canvas, `entropy_bound` (when the config has one) the acceptance bound."""
    settings, changes = denoiser.settings, {}
    if config.steps is not None:
        changes["max_denoising_steps"] = int(config.steps)
    if getattr(config, "entropy_bound", None) is not None:
        changes["entropy_bound"] = float(config.entropy_bound)
    return replace(settings, **changes) if changes else settings


def generated_columns(canvas: Canvas) -> int:
    """The first generated column P: every row must generate exactly the columns [P, L) after its prompt
    (uniform-noise decoding continues a prompt with whole canvases; it has no mask to infill with)."""
    L = canvas.tokens.shape[1]
    count = int(canvas.generated[0].sum())
    first = L - count
    trailing = torch.arange(L, device=canvas.generated.device)[None, :] >= first
    if count == 0 or not bool((canvas.generated == trailing).all()):
        raise ValueError("uniform-noise decoding continues each prompt with whole canvases: the positions to generate "
                         "must be the last columns of every row (no infill suffix, no schema slots); build the canvas "
                         "with prompts only")
    if first == 0 or not bool(canvas.valid[:, :first].any(-1).all()):
        raise ValueError("uniform-noise decoding needs a prompt of at least one token in every row (the encoder "
                         "conditions the canvas on it); give a prompt or a BOS token (add_bos=True)")
    return first


def _generator_on(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """The run's generator where the draws happen: itself on its own device (the exact-match case), else
    a generator on `device` seeded from it (still reproducible from the run's seed)."""
    if generator is None or generator.device == torch.device(device):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def uniform_noise_decode(denoiser, canvas, config, valid=None, position_ids=None, generator=None,
                         settings=None) -> DecodeResult:
    """Fill the generated columns of `canvas` with whole canvases of uniform-noise block diffusion.

    `settings` (UniformNoiseSettings): default the denoiser's (from the checkpoint's generation config),
    with `config.steps` / `config.entropy_bound` applied. The generator is the run's (None: torch's
    global one, as transformers' generate uses). stats: the encoder calls, the denoising steps of each
    canvas, and per row the tokens per decoder call (transformers' `tokens_per_forward`)."""
    denoiser = as_denoiser(denoiser)
    if getattr(denoiser, "corruption", "absorbing") != "uniform":
        raise ValueError("sampler 'uniform-noise' decodes uniform-noise models (DiffusionGemma); this model fills "
                         "masks: use a masked sampler (confidence, ancestral, first-hitting)")
    canvas = Canvas.of(denoiser, canvas, valid, position_ids)
    settings = settings or settings_for(denoiser, config)
    meter, device = denoiser.meter(), denoiser.device
    generator = _generator_on(generator, device)
    tokens = canvas.tokens.clone()
    batch, length = tokens.shape
    first = generated_columns(canvas)
    C, V = denoiser.canvas_length, denoiser.vocab_size
    num_canvases = math.ceil((length - first) / C)
    eos = torch.tensor(settings.eos_token_ids, device=device) if settings.eos_token_ids else None
    recorder = TraceRecorder(config.trace, config.step_callback)

    attention_mask = canvas.valid[:, :first].clone()
    encoded, encoder_calls = denoiser.encode(tokens[:, :first], attention_mask), 1
    ended = torch.zeros(batch, dtype=torch.bool, device=device)  # rows whose text has ended (an eos)
    decoder_passes = torch.zeros(batch, dtype=torch.long, device=device)
    steps_per_canvas = []
    for k in range(num_canvases):
        start = first + k * C
        keep = min(C, length - start)  # the last canvas may reach past the columns asked for

        def row_state(current):  # the rows as they stand, for the trace
            state = tokens.clone()
            state[:, start:start + keep] = current[:, :keep]
            return state

        # --- denoise one canvas ---
        x = torch.randint(0, V, (batch, C), generator=generator, device=device)
        argmax, self_conditioning = x, None
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        stopping = StableAndConfident(settings.stability_threshold, settings.confidence_threshold) \
            if settings.adaptive_stopping else None
        steps = 0
        for steps_left in range(settings.max_denoising_steps, 0, -1):
            active = ~(done | ended)
            decoder_passes += active
            steps += 1
            raw = denoiser.denoise(x, self_conditioning, encoded)
            logits = raw / scheduled_temperature(settings, steps_left, device)
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            draw = torch.multinomial(probs.view(-1, V), num_samples=1, generator=generator).view(batch, C)
            new_argmax = torch.argmax(logits, dim=-1)
            entropy = token_entropy(logits)
            accepted = entropy_bound_accept(entropy, settings.entropy_bound)
            noise = torch.randint(0, V, (batch, C), generator=generator, device=device)
            new_x = torch.where(accepted, draw, noise)  # accepted: the proposal; the rest: fresh noise
            if stopping is not None:
                if done.any():  # a done row keeps its canvas, argmax and logits
                    new_argmax = torch.where(done[:, None], argmax, new_argmax)
                    new_x = torch.where(done[:, None], x, new_x)
                    logits = torch.where(done[:, None, None], self_conditioning, logits)
                done = done | stopping(new_argmax, entropy)  # a done row's entropy no longer matters
            if recorder.active:
                revealed, remasked = accepted & active[:, None], ~accepted & active[:, None]
                recorder.record(row_state(x), _full(revealed, tokens, start, keep),
                                logprob=_full(torch.log_softmax(raw.double(), -1).gather(-1, draw[..., None])[..., 0],
                                              tokens, start, keep, 0.0),
                                remasked=_full(remasked, tokens, start, keep), x0=row_state(new_x),
                                policy_logprob=_full(probs.double().log().gather(-1, draw[..., None])[..., 0],
                                                     tokens, start, keep, 0.0))
            self_conditioning = logits.to(denoiser.embedding_dtype)
            x, argmax = new_x, new_argmax
            if bool(done.all()):
                break
        steps_per_canvas.append(steps)

        # --- commit the argmax canvas; rows with an eos end (pad after it) ---
        committed = argmax.clone()
        ended_here = torch.ones_like(ended) if k == num_canvases - 1 else torch.zeros_like(ended)  # max length
        if eos is not None:
            ended_here |= torch.isin(committed, eos).any(dim=-1)
        ended_before, ended = ended, ended | ended_here
        if settings.pad_token_id is not None and bool(ended.any()):
            committed[ended_before] = settings.pad_token_id
            if eos is not None and bool(ended_here.any()):
                is_eos = torch.isin(committed, eos)
                seen = is_eos.cumsum(dim=-1)
                committed[(seen > 0) & ~((seen == 1) & is_eos)] = settings.pad_token_id
        tokens[:, start:start + keep] = committed[:, :keep]
        if bool(ended.all()):  # every row has ended: the canvases not decoded are padding
            filler = settings.pad_token_id if settings.pad_token_id is not None else settings.eos_token_ids[0]
            tokens[:, start + keep:] = filler
            break
        attention_mask = torch.nn.functional.pad(attention_mask, (0, C), value=True)
        encoded, encoder_calls = denoiser.encode(committed, attention_mask, encoded), encoder_calls + 1

    new = tokens[:, first:]
    real = (new != settings.pad_token_id).sum(-1) if settings.pad_token_id is not None else \
        torch.full((batch,), new.shape[1], device=device)
    stats = {"encoder_calls": encoder_calls, "steps_per_canvas": steps_per_canvas,
             "tokens_per_forward": (real / decoder_passes.clamp_min(1)).tolist(), "settings": settings}
    return DecodeResult(tokens=tokens, nfe=meter.nfe, trace=recorder.result(), stats=stats)


def _full(values: torch.Tensor, tokens: torch.Tensor, start: int, keep: int, fill=False) -> torch.Tensor:
    """A (B, C) canvas quantity placed at its columns of a (B, L) row, `fill` elsewhere."""
    out = torch.full(tokens.shape, fill, dtype=values.dtype, device=values.device)
    out[:, start:start + keep] = values[:, :keep]
    return out


def render_uniform_trace_html(trace, final_tokens, valid, token_text, mask_token_id: int, titles=None,
                              title="mdlm decoding trace: uniform noise", interval_ms: int = 120) -> str:
    """The HTML replay (`mdlm.decode.trace_html`) of a uniform-noise trace. Its first state already holds
    the first canvas's noise, so "fixed" (shown bold, never coloured) is what no step ever touched, not
    what was no mask at the start; re-noised positions show their noise token, flashing red."""
    import html
    import json

    from mdlm.decode.trace_html import PAGE, trace_payload

    data = trace_payload(trace, final_tokens, valid, token_text, mask_token_id, titles)
    for row in data["rows"]:
        touched = {i for step in row["revealed"] + row["remasked"] for i in step}
        row["fixed"] = [fixed and i not in touched for i, fixed in enumerate(row["fixed"])]
    page_data = json.dumps(data).replace("</", "<\\/")
    return PAGE % {"title": html.escape(title), "data": page_data, "interval": interval_ms}
