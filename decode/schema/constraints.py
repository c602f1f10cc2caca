"""Token constraints for schema slots, applied to the logits of any sampler in `mdlm.decode`.

Schema scaffolding (`mdlm.decode.schema`) fixes the JSON skeleton; inside a value slot the model is free,
except where its type leaves only a few valid tokens:
- integer / number slots: a token-level automaton of the JSON grammar (RFC 8259: `-?(0|[1-9][0-9]*)`, then
  for numbers an optional `.[0-9]+` and `[eE][+-]?[0-9]+`; an optional leading space; then EOS padding to
  the slot's end). A character DFA (`NUMBER_DFA`) is lifted to the tokenizer's vocabulary once per
  tokenizer: table[state, token] = the state after the token's characters, or -1.
  Why not a left-to-right grammar mask: a diffusion decoder reveals the slot's positions in any order,
  so a position is constrained given the tokens already fixed on BOTH sides. At every network call a
  forward pass over the slot gives the DFA states reachable before each position (fixed tokens move
  the state set, masked positions take any token), a backward pass the states from which the rest of
  the slot can still be completed (end of slot or EOS in an accepting state); a masked position may take
  token t iff some reachable state s has table[s, t] in the completable set. Any order of one-position
  reveals therefore ends on a valid number (no leading zeros, no dangling '-', '.', 'e'), for any model,
  even an untrained one. Two positions of one slot revealed in the same step are each consistent with
  the fixed tokens but may not be with each other; the scaffold then re-masks the slot (its retries).
  A well-kept library (outlines, lm-format-enforcer, xgrammar) was not used: they constrain a
  left-to-right prefix, which a diffusion decoder that reveals positions out of order does not produce.
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

from contextlib import contextmanager
from dataclasses import dataclass

import torch

# The JSON number grammar as a character DFA. States: 0 start, 1 after the leading space, 2 after '-',
# 3 a leading '0', 4 integer digits, 5 after '.', 6 fraction digits, 7 after 'e', 8 after the exponent
# sign, 9 exponent digits. DONE (10) follows the first EOS and only takes more EOS.
START, DONE = 0, 10
NUMBER_ACCEPTING = (3, 4, 6, 9)


def _number_step(state: int, ch: str, kind: str) -> int:
    digit = ch.isascii() and ch.isdigit()
    if state == 0 and ch == " ":
        return 1
    if state in (0, 1) and ch == "-":
        return 2
    if state in (0, 1, 2) and digit:
        return 3 if ch == "0" else 4
    if state == 4 and digit:
        return 4
    if kind == "integer":
        return -1
    if state in (3, 4) and ch == ".":
        return 5
    if state in (5, 6) and digit:
        return 6
    if state in (3, 4, 6) and ch in "eE":
        return 7
    if state == 7 and ch in "+-":
        return 8
    if state in (7, 8, 9) and digit:
        return 9
    return -1


_TABLE_CACHE: dict[tuple, torch.Tensor] = {}


def number_token_table(tokenizer, kind: str, vocab_size: int) -> torch.Tensor:
    """(11, vocab) long: the DFA state after each token from each state, -1 where the token cannot
    follow. EOS leads from an accepting state (or DONE) to DONE; other special tokens never fit."""
    key = (id(tokenizer), kind, vocab_size)
    if key in _TABLE_CACHE:
        return _TABLE_CACHE[key]
    table = torch.full((DONE + 1, vocab_size), -1, dtype=torch.long)
    special = set(tokenizer.all_special_ids)
    for token_id in range(min(vocab_size, len(tokenizer))):
        if token_id in special:
            continue
        text = tokenizer.decode([token_id])
        if not text:
            continue
        for start in range(DONE):
            state = start
            for ch in text:
                state = _number_step(state, ch, kind)
                if state < 0:
                    break
            table[start, token_id] = state
    eos = tokenizer.eos_token_id
    for state in (*NUMBER_ACCEPTING, DONE):
        table[state, eos] = DONE
    _TABLE_CACHE[key] = table
    return table


@dataclass
class AutomatonConstraint:
    positions: list[int]  # canvas positions of the slot
    table: torch.Tensor  # (states, vocab) transitions, -1 = not allowed
    accepting: torch.Tensor  # (states,) bool: the slot may end here (its positions are used up)
    start_states: torch.Tensor  # (states,) bool

    def allowed(self, current: torch.Tensor, mask_token_id: int) -> dict[int, torch.Tensor]:
        """Allowed tokens (vocab,) bool at each masked position of the slot, given its fixed tokens."""
        tokens = [int(current[p]) for p in self.positions]
        n, states = len(tokens), self.table.shape[0]
        legal = self.table >= 0
        target = self.table.clamp_min(0)
        forward = [self.start_states]
        for token in tokens:
            reach = forward[-1]
            if token == mask_token_id:
                nxt = torch.zeros(states, dtype=torch.bool)
                nxt[target[reach][legal[reach]]] = True
            else:
                column = self.table[reach, token]
                nxt = torch.zeros(states, dtype=torch.bool)
                nxt[column[column >= 0]] = True
            forward.append(nxt)
        backward = [None] * (n + 1)
        backward[n] = self.accepting
        for i in range(n - 1, -1, -1):
            ok_next = legal & backward[i + 1][target]  # (states, vocab): the token keeps a completion
            backward[i] = ok_next.any(-1) if tokens[i] == mask_token_id else ok_next[:, tokens[i]]
        out = {}
        for i, token in enumerate(tokens):
            if token == mask_token_id:
                ok_next = legal & backward[i + 1][target]
                out[self.positions[i]] = (ok_next & forward[i][:, None]).any(0)
        return out


def number_automaton(tokenizer, kind: str, vocab_size: int, positions: list[int],
                     may_be_empty: bool) -> AutomatonConstraint:
    """The constraint of an integer/number slot on `positions`; an empty slot (EOS first) only when
    `may_be_empty` (an optional or nullable value)."""
    table = number_token_table(tokenizer, kind, vocab_size)
    if may_be_empty:
        table = table.clone()
        table[START, tokenizer.eos_token_id] = DONE
    accepting = torch.zeros(table.shape[0], dtype=torch.bool)
    accepting[list(NUMBER_ACCEPTING) + [DONE]] = True
    start = torch.zeros(table.shape[0], dtype=torch.bool)
    start[START] = True
    return AutomatonConstraint(positions, table, accepting, start)


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
        self.automaton_of_position: dict[int, AutomatonConstraint] = {}

    def add_static(self, position: int, allowed: torch.Tensor) -> None:
        self.static[position] = allowed

    def add_choice(self, positions: list[int], options: list[list[int]]) -> None:
        choice = ChoiceConstraint(positions, options)
        self.choices.append(choice)
        for p in positions:
            self.choice_of_position[p] = choice

    def add_automaton(self, automaton: AutomatonConstraint) -> None:
        for p in automaton.positions:
            self.automaton_of_position[p] = automaton

    def __bool__(self) -> bool:
        return bool(self.static or self.choices or self.automaton_of_position)

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

    def apply(self, logits: torch.Tensor, input_ids: torch.Tensor, position_ids: torch.Tensor | None,
              logits_at: torch.Tensor | None = None) -> None:
        """Set the logits of disallowed tokens to -inf at constrained masked positions (in place). With
        `logits_at` (B, K) the logits are (B, K, V) at those columns of the call (the model's head ran only
        there, as first-hitting asks), else (B, L, V)."""
        if position_ids is None:
            if input_ids.shape[1] != len(self.current):
                raise ValueError("schema constraints need the call's position ids when it does not run the "
                                 "whole canvas (pass position_ids to the model)")
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        for row in range(input_ids.shape[0]):
            self._observe(input_ids[row], position_ids[row])
            positions = position_ids[row].tolist()
            masked = (input_ids[row] == self.mask_token_id).tolist()
            automaton_allowed: dict[int, torch.Tensor] = {}
            for automaton in {id(a): a for a in self.automaton_of_position.values()}.values():
                automaton_allowed.update(automaton.allowed(self.current, self.mask_token_id))
            columns = range(len(positions)) if logits_at is None else logits_at[row].tolist()
            for column, canvas_column in enumerate(columns):
                p, is_masked = positions[canvas_column], masked[canvas_column]
                if not is_masked:
                    continue
                # No allowed token: fixed tokens revealed together in one step contradict each other; the
                # position stays free and the scaffold re-masks the slot.
                if p in automaton_allowed and bool(automaton_allowed[p].any()):
                    allowed = automaton_allowed[p].to(logits.device)
                    logits[row, column, : allowed.shape[0]].masked_fill_(~allowed, float("-inf"))
                    logits[row, column, allowed.shape[0]:] = float("-inf")
                elif p in self.static:
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
        constraints.apply(logits, input_ids, position_ids, kwargs.get("logits_at"))
        return output

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()
