"""Token constraints for schema slots, applied to the logits of any sampler in `mdlm.decode`.

Schema scaffolding (`mdlm.decode.schema`) fixes the JSON skeleton; inside a value slot the model is free,
except where its type leaves only a few valid tokens:
- integer / number slots: tokens made of the number's characters (a leading space or minus sign only at
  the slot's first position) or the stop token (EOS), so a slot always holds a number prefix;
- choice slots (booleans, enums, "does the array go on?"): the tokens of the options still consistent
  with what is already revealed in the slot, position by position. The options are tokenized, padded
  with EOS to the slot's length, and at every network call each masked slot position may only take the
  token that some still-consistent option has there. A sampler that reveals one token per step therefore
  always lands on an option; one that reveals two positions of a slot in the same step may mix two
  options, which the scaffold detects and re-masks.

The constraints live in a forward hook on the model, so they compose with every sampler and cache
(block KV caches, Fast-dLLM prefix caches, ASSD's two-stream calls): the hook maps each query column to
its canvas position through the call's position ids, which for one un-padded row are the canvas indices.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_INTEGER_FIRST = re.compile(r"^\s?-?\d*$")
_INTEGER_REST = re.compile(r"^\d+$")
_NUMBER_FIRST = re.compile(r"^\s?-?[\d.eE+\-]*$")
_NUMBER_REST = re.compile(r"^[\d.eE+\-]+$")

_VOCAB_MASK_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def number_token_masks(tokenizer, kind: str, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(allowed at a slot's first position, allowed later) over the vocabulary for an integer/number
    slot; the stop token (EOS) is allowed everywhere. Cached per tokenizer."""
    key = (id(tokenizer), kind, vocab_size)
    if key not in _VOCAB_MASK_CACHE:
        first_re, rest_re = (_INTEGER_FIRST, _INTEGER_REST) if kind == "integer" else (_NUMBER_FIRST, _NUMBER_REST)
        first = torch.zeros(vocab_size, dtype=torch.bool)
        rest = torch.zeros(vocab_size, dtype=torch.bool)
        special = set(tokenizer.all_special_ids)
        for token_id in range(min(vocab_size, len(tokenizer))):
            if token_id in special:
                continue
            text = tokenizer.decode([token_id])
            if text.strip() and first_re.match(text):
                first[token_id] = True
            if rest_re.match(text):
                rest[token_id] = True
        first[tokenizer.eos_token_id] = rest[tokenizer.eos_token_id] = True
        _VOCAB_MASK_CACHE[key] = (first, rest)
    return _VOCAB_MASK_CACHE[key]


@dataclass
class ChoiceConstraint:
    positions: list[int]  # canvas positions of the slot
    options: list[list[int]]  # each option's token ids, padded with EOS to len(positions)


class SlotConstraints:
    """The constraints of one canvas: static allowed-token masks per position, and choice slots."""

    def __init__(self, canvas: torch.Tensor, mask_token_id: int):
        self.mask_token_id = mask_token_id
        self.current = canvas[0].clone().cpu()  # the canvas as the latest calls saw it
        self.static: dict[int, torch.Tensor] = {}
        self.choices: list[ChoiceConstraint] = []
        self.choice_of_position: dict[int, ChoiceConstraint] = {}

    def add_static(self, position: int, allowed: torch.Tensor) -> None:
        self.static[position] = allowed

    def add_choice(self, positions: list[int], options: list[list[int]]) -> None:
        choice = ChoiceConstraint(positions, options)
        self.choices.append(choice)
        for p in positions:
            self.choice_of_position[p] = choice

    def __bool__(self) -> bool:
        return bool(self.static or self.choices)

    def _observe(self, input_ids: torch.Tensor, positions: torch.Tensor) -> None:
        # A position may appear twice in one call (two-stream attention): a revealed token wins.
        tokens = input_ids.cpu().tolist()
        seen: dict[int, int] = {}
        for token, p in zip(tokens, positions.cpu().tolist()):
            if 0 <= p < len(self.current) and (p not in seen or token != self.mask_token_id):
                seen[p] = token
        for p, token in seen.items():
            self.current[p] = token

    def _choice_allowed(self, choice: ChoiceConstraint, position: int) -> set[int]:
        revealed = [(i, int(self.current[p])) for i, p in enumerate(choice.positions)
                    if int(self.current[p]) != self.mask_token_id]
        consistent = [o for o in choice.options if all(o[i] == t for i, t in revealed)] or choice.options
        index = choice.positions.index(position)
        return {o[index] for o in consistent}

    def apply(self, logits: torch.Tensor, input_ids: torch.Tensor, position_ids: torch.Tensor | None) -> None:
        """Set the logits of disallowed tokens to -inf at constrained masked positions (in place)."""
        if position_ids is None:
            if input_ids.shape[1] != len(self.current):
                raise ValueError("schema constraints need the call's position ids when it does not run the "
                                 "whole canvas (pass position_ids to the model)")
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        for row in range(input_ids.shape[0]):
            self._observe(input_ids[row], position_ids[row])
            positions = position_ids[row].tolist()
            masked = (input_ids[row] == self.mask_token_id).tolist()
            for column, (p, is_masked) in enumerate(zip(positions, masked)):
                if not is_masked:
                    continue
                if p in self.static:
                    allowed = self.static[p].to(logits.device)
                    logits[row, column, : allowed.shape[0]].masked_fill_(~allowed, float("-inf"))
                    logits[row, column, allowed.shape[0]:] = float("-inf")
                elif p in self.choice_of_position:
                    keep = torch.tensor(sorted(self._choice_allowed(self.choice_of_position[p], p)),
                                        device=logits.device)
                    kept = logits[row, column, keep].clone()
                    logits[row, column] = float("-inf")
                    logits[row, column, keep] = kept


@contextmanager
def constrained(model, constraints: SlotConstraints):
    """Apply `constraints` to every forward call of `model` inside the block (a forward hook)."""
    if not constraints:
        yield model
        return
    module = model if isinstance(model, torch.nn.Module) else getattr(model, "model", None)
    if not isinstance(module, torch.nn.Module):
        raise TypeError("schema token constraints need a torch module (or a denoiser with a .model module); "
                        "pass constrain=False to decode this denoiser without them")

    def hook(_module, args, kwargs, output):
        input_ids = args[0] if args else kwargs["input_ids"]
        position_ids = kwargs.get("position_ids", args[2] if len(args) > 2 else None)
        logits = output.logits if hasattr(output, "logits") else output
        constraints.apply(logits, input_ids, position_ids)
        return output

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()
