"""generate_json: rounds of decode -> read -> compact / grow / re-mask (see `mdlm.decode.schema`)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace

import jsonschema
import torch

from mdlm.decode.config import DecodeConfig
from mdlm.decode.denoiser import as_denoiser
from mdlm.decode.registry import decode, make_generator
from mdlm.decode.schema.constraints import SlotConstraints, constrained, number_automaton
from mdlm.decode.schema.reading import assemble, read_slot
from mdlm.decode.schema.scaffold import Scaffold
from mdlm.decode.schema.tree import DEFAULT_SLOT_TOKENS, RETRY_TEMPERATURE, SchemaFitError, Slot


@dataclass
class GeneratedJSON:
    value: object  # the Python value (None when not valid)
    text: str  # JSON text of the value (json.dumps); the best attempt's text when not valid
    valid: bool  # validated against the whole schema with jsonschema
    nfe: int  # network calls over all rounds
    rounds: int = 1
    masked_tokens: int = 0  # mask positions decoded over all rounds
    canvas_tokens: int = 0  # skeleton length of the first round (fixed + masks)
    retries: dict[str, int] = field(default_factory=dict)  # slot path -> re-masks
    scored_choices: int = 0  # choice slots settled by scoring their options (after a mixed decode)
    repairs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _constraints_for(scaffold: Scaffold, canvas: torch.Tensor, offset: int, spans, states,
                     vocab_size: int) -> SlotConstraints:
    constraints = SlotConstraints(canvas, scaffold.mask_token_id)
    for slot, (start, end) in spans.items():
        state = states[slot]
        if state.done:
            continue
        if slot.kind == "choice":
            constraints.add_choice(list(range(offset + start, offset + end)), slot.option_ids)
        elif slot.kind in ("integer", "number"):
            constraints.add_automaton(number_automaton(scaffold.tokenizer, slot.kind, vocab_size,
                                                       list(range(offset + start, offset + end)), slot.may_be_empty))
    return constraints


@dataclass
class _Rounds:
    """What one `generate_json` call carries from round to round."""

    denoiser: object
    scaffold: Scaffold
    prompt_ids: list[int]
    config: DecodeConfig
    generator: torch.Generator | None
    constrain: bool
    tokens_per_step: int | None
    max_retries: int
    states: dict
    choices: dict = field(default_factory=dict)
    readings: dict = field(default_factory=dict)
    retrying: bool = False


def generate_json(model, tokenizer, prompt: str, schema: dict, config: DecodeConfig | None = None, *,
                  slot_tokens: int = DEFAULT_SLOT_TOKENS, max_retries: int = 2, constrain: bool = True,
                  strict: bool = True, tokens_per_step: int | None = None, generator=None,
                  scaffold: Scaffold | None = None) -> GeneratedJSON:
    """Generate a JSON value for `schema` after `prompt` by schema scaffolding (see the package docstring).

    config: any `DecodeConfig` (sampler, remasking, blocks, caches pass through); default: confidence
        sampler, low-confidence remasking, temperature 0, one token per step (the S3 paper's decoder).
    slot_tokens: B_f, the default slot length. max_retries: re-masks per slot before giving up.
    constrain: restrict number and choice slots to valid tokens (`mdlm.decode.schema.constraints`).
    tokens_per_step: if set, each round runs ceil(masks / tokens_per_step) steps (a step budget that
        scales with the work, as plain generation's does); else `config.steps` (capped at the masks).
    strict: raise `SchemaFitError` when the content cannot be made to fit; else return valid=False.

    Each round: 1. render the canvas (prompt + skeleton), 2. decode its masks, 3. read every open slot
    (accept, or grow a string that ran to its end), 4. check the finished slots, 5. settle mixed choice
    slots by scoring their options, 6. re-mask the slots that do not fit (within their retries).
    """
    started = time.perf_counter()
    if tokens_per_step is not None and (isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, int)
                                        or tokens_per_step < 1):
        raise ValueError(f"tokens_per_step must be a positive integer (tokens revealed per network call) or None, "
                         f"got {tokens_per_step!r}")
    config = config or DecodeConfig(sampler="confidence", remasking="low-confidence", temperature=0.0)
    if config.eos_token_id is None:
        config = replace(config, eos_token_id=tokenizer.eos_token_id)
    denoiser = as_denoiser(model, None if hasattr(model, "config") else tokenizer.mask_token_id)
    if denoiser.mask_token_id is None:
        raise ValueError("neither the model nor the tokenizer has a mask token; load the model with "
                         "mdlm.decode.loading.load_denoiser (its family knows the mask id) or the tokenizer with "
                         "mdlm.tokenizer.load_tokenizer")
    meter = denoiser.meter()
    scaffold = scaffold or Scaffold(schema, tokenizer, slot_tokens, context=denoiser.context)
    scaffold.mask_token_id = denoiser.require_mask_id()  # a family's mask id need not be its tokenizer's
    profile = getattr(denoiser, "profile", None)
    if constrain and profile is not None and profile.shifted_logits:
        raise ValueError(f"schema token constraints edit the model's raw logits, which a {profile.name} model shifts "
                         "by one position; pass constrain=False (the scaffold alone still gives the JSON's shape)")
    run = _Rounds(denoiser, scaffold, _token_ids(tokenizer, prompt), config,
                  make_generator(config.seed, generator), constrain, tokens_per_step, max_retries,
                  scaffold.initial_states())
    result = GeneratedJSON(value=None, text="", valid=False, nfe=0, rounds=0)
    growth_rounds = max((math.ceil((s.max_tokens - s.initial_tokens) / scaffold.slot_tokens) for s in scaffold.slots),
                        default=0)
    max_rounds = (1 + max_retries) * (1 + growth_rounds)
    while True:
        ids, spans = scaffold.render(run.states, run.choices)  # 1.
        if result.rounds == 0:
            result.canvas_tokens = len(ids)
        open_slots = [s for s in spans if not run.states[s].done]
        if not open_slots or result.rounds >= max_rounds:
            break
        context = denoiser.context
        if result.rounds > 0 and context is not None and len(run.prompt_ids) + len(ids) > context:
            # The first round fitted (else _decode_round refuses the input): content grew past the context.
            result.errors.append(f"slots {[s.path or '/' for s in open_slots]} grew until prompt "
                                 f"({len(run.prompt_ids)} tokens) + canvas ({len(ids)} tokens) exceed the model's "
                                 f"context of {context}")
            break
        tokens, masks = _decode_round(run, ids, spans)  # 2.
        result.rounds += 1
        result.masked_tokens += masks
        _read_round(run, open_slots, spans, tokens)  # 3.
        bad = _check_round(run, spans, result)  # 4.
        mixed_choices = [slot for slot in bad if slot.kind == "choice"]
        if mixed_choices:  # 5.
            readings, states, choices = _choose_by_score(denoiser, scaffold, run.prompt_ids, run.states, run.choices,
                                                         mixed_choices, [s for s in bad if s.kind != "choice"])
            for slot, reading in readings.items():
                run.readings[slot], run.states[slot], run.choices[slot] = reading, states[slot], choices[slot]
            result.scored_choices += len(mixed_choices)
        _remask(run, bad, result)  # 6.
        if result.errors:
            break
    result.nfe = meter.nfe
    return _finish(scaffold, run.states, run.choices, run.readings, result, strict, started)


def _token_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _decode_round(run: _Rounds, ids: list[int], spans) -> tuple[list[int], int]:
    """Decode the masks of prompt + skeleton under the slot constraints -> (skeleton tokens, masks)."""
    context, prompt_ids = run.denoiser.context, run.prompt_ids
    if context is not None and len(prompt_ids) + len(ids) > context:
        raise ValueError(f"prompt ({len(prompt_ids)} tokens) + schema scaffold ({len(ids)} tokens) exceed the "
                         f"model's context of {context}; shorten the prompt or lower slot_tokens/maxItems")
    mask_id = run.scaffold.mask_token_id
    canvas = torch.tensor([prompt_ids + ids], dtype=torch.long, device=run.denoiser.device)  # (1, L)
    masks = int((canvas == mask_id).sum())
    config = run.config
    # A re-masked slot decoded again at temperature 0 in the same context would repeat itself.
    if run.retrying:
        config = replace(config, temperature=max(config.temperature, RETRY_TEMPERATURE))
    if run.tokens_per_step is not None:
        config = replace(config, steps=max(1, math.ceil(masks / run.tokens_per_step)))
    elif config.steps is not None:
        config = replace(config, steps=min(config.steps, masks))
    vocab_size = run.denoiser.vocab_size or len(run.scaffold.tokenizer)
    constraints = _constraints_for(run.scaffold, canvas, len(prompt_ids), spans, run.states, vocab_size) \
        if run.constrain else SlotConstraints(canvas, mask_id)
    if constraints:  # the constraint hook edits the module's (B, L, V) output column by column
        config = replace(config, full_logits=True)
    with constrained(run.denoiser, constraints):
        decoded = decode(run.denoiser, canvas, config, generator=run.generator)
    return decoded.tokens[0].tolist()[len(prompt_ids):], masks


def _read_round(run: _Rounds, open_slots, spans, tokens: list[int]) -> None:
    """Read each open slot back: a string that ran to its end without closing grows (keeping what it
    wrote); any other slot is accepted as read (compacted to its content)."""
    for slot in open_slots:
        start, end = spans[slot]
        reading = read_slot(run.scaffold, slot, tokens[start:end])
        run.readings[slot] = reading
        state = run.states[slot]
        if slot.kind == "string" and not reading.terminated and end - start < slot.max_tokens:
            state.prefix = tokens[start:end]
            state.masks = min(run.scaffold.slot_tokens, slot.max_tokens - (end - start))
            continue
        state.prefix, state.masks, state.done = reading.ids, 0, True
        if slot.kind == "choice" and reading.error is None:
            run.choices[slot] = reading.value


def _check_round(run: _Rounds, spans, result: GeneratedJSON) -> dict[Slot, str]:
    """Slot -> why it does not fit: the whole value is assembled once every slot is done; while slots
    still grow only the finished ones are checked."""
    bad: dict[Slot, str] = {}
    result.repairs = []
    run.retrying = False
    rendered_done = {s: run.readings[s] for s in spans if run.states[s].done}
    if all(run.states[s].done for s in spans):
        assemble(run.scaffold.root, rendered_done, bad, result.repairs)
    else:
        for s, reading in rendered_done.items():
            if reading.error:
                bad[s] = reading.error
    return bad


def _remask(run: _Rounds, bad: dict[Slot, str], result: GeneratedJSON) -> None:
    """Send the slots that do not fit back to the decoder, or record an error once their retries are spent."""
    for slot, reason in bad.items():
        if slot.kind == "choice":
            continue
        state = run.states[slot]
        if state.attempts >= run.max_retries:
            result.errors.append(f"{slot.path or '/'}: {reason} (after {state.attempts} re-masks)")
            continue
        state.attempts += 1
        run.retrying = True
        result.retries[slot.path or "/"] = state.attempts
        state.prefix, state.masks, state.done = [], slot.initial_tokens, False
        run.choices.pop(slot, None)


def _choose_by_score(denoiser, scaffold: Scaffold, prompt_ids, states, choices, choice_slots, other_bad):
    """Settle choice slots whose decoded tokens mixed two options (a sampler that reveals several of a
    slot's positions in one step can do that): one network call on the canvas with these slots (and the
    other slots going back to the decoder) masked, then the option with the largest sum of token
    log-probabilities. Works on copies: returns (readings, states, choices) of the settled slots and
    leaves the caller's `states` and `choices` as they were."""
    states = {slot: replace(state, prefix=list(state.prefix)) for slot, state in states.items()}
    choices = dict(choices)
    for slot in list(choice_slots) + list(other_bad):
        states[slot] = replace(states[slot], prefix=[], masks=slot.initial_tokens, done=False)
        choices.pop(slot, None)
    ids, spans = scaffold.render(states, choices)
    device = denoiser.device
    canvas = torch.tensor([prompt_ids + ids], dtype=torch.long, device=device)  # (1, L)
    valid = torch.ones_like(canvas, dtype=torch.bool)
    positions = torch.arange(canvas.shape[1], device=device)[None]
    logprobs = torch.log_softmax(denoiser.logits(canvas, valid, positions)[0].double(), -1)  # (L, V)
    readings = {}
    for slot in choice_slots:
        if slot not in spans:
            continue  # an array ended before it: nothing to choose
        start = len(prompt_ids) + spans[slot][0]
        columns = torch.arange(start, start + slot.initial_tokens, device=device)
        scores = [float(logprobs[columns, torch.tensor(option, device=device)].sum()) for option in slot.option_ids]
        best = max(range(len(scores)), key=scores.__getitem__)
        readings[slot] = read_slot(scaffold, slot, slot.option_ids[best])
        states[slot] = replace(states[slot], prefix=readings[slot].ids, masks=0, done=True)
        choices[slot] = readings[slot].value
    return readings, states, choices


def _finish(scaffold, states, choices, readings, result: GeneratedJSON, strict, started) -> GeneratedJSON:
    ids, spans = scaffold.render(states, choices)
    if not result.errors:
        unfinished = [s.path or "/" for s in spans if not states[s].done]
        if unfinished:
            result.errors.append(f"slots {unfinished} were still open after {result.rounds} rounds")
    if not result.errors:
        bad: dict = {}
        repairs: list[str] = []
        value = assemble(scaffold.root, {s: readings[s] for s in spans}, bad, repairs)
        result.repairs = repairs
        if bad:
            result.errors += [f"{s.path or '/'}: {reason}" for s, reason in bad.items()]
        else:
            schema_errors = list(jsonschema.Draft202012Validator(scaffold.schema).iter_errors(value))
            if schema_errors:
                result.errors += [f"/{'/'.join(map(str, e.path))}: {e.message}" for e in schema_errors]
            else:
                result.value, result.valid = value, True
                result.text = json.dumps(value, ensure_ascii=False)
    if not result.valid:
        result.text = scaffold.tokenizer.decode([t for t in ids if t != scaffold.mask_token_id])
    result.seconds = time.perf_counter() - started
    if not result.valid and strict:
        raise SchemaFitError("the model's output could not be made to fit the schema: " + "; ".join(result.errors),
                             result)
    return result
