"""Reading a slot back (where it ends, what value it holds) and assembling the value from the readings,
deciding which slots go back to the decoder."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import jsonschema

from mdlm.decode.schema.scaffold import Scaffold
from mdlm.decode.schema.tree import ABSENT, ANNOTATIONS, ArrayNode, Const, Leaf, ObjectNode, Slot



@dataclass
class SlotReading:
    ids: list[int]  # content tokens (before the end)
    text: str  # content text (JSON-escaped body for strings)
    terminated: bool  # the model ended the slot (EOS or a closing character) before its last position
    value: object = None
    error: str | None = None  # why the content does not fit its type

    @property
    def empty(self) -> bool:
        return self.text.strip() == ""


_NUMBER_CHARS = re.compile(r"\s*-?[0-9.eE+\-]*")
_INTEGER = re.compile(r"-?(0|[1-9]\d*)")  # JSON: no leading zeros
_JSON_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")


def _string_end(text: str) -> int | None:
    """Index of the first unescaped quote, or None."""
    escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return i
    return None


def read_slot(scaffold: Scaffold, slot: Slot, ids: list[int]) -> SlotReading:
    """Cut the slot at its end (EOS / closing character), decode it on its own, parse it by kind."""
    tokenizer = scaffold.tokenizer
    stop = next((i for i, t in enumerate(ids) if t in scaffold.stop_ids), None)
    content = ids if stop is None else ids[:stop]
    if slot.kind == "choice":
        reading = SlotReading(content, tokenizer.decode(content), True)
        padded = ids + [scaffold.eos_id] * (len(slot.option_ids[0]) - len(ids))
        matches = [k for k, option in enumerate(slot.option_ids) if option == padded]
        if not matches:  # without token constraints: accept the option the text starts with
            text = tokenizer.decode(content).strip()
            matches = sorted((k for k, t in enumerate(slot.option_texts) if text.startswith(t.strip())),
                             key=lambda k: -len(slot.option_texts[k]))
        if matches:
            reading.value = slot.options[matches[0]]
        else:
            reading.error = f"{reading.text!r} is none of the options {slot.option_texts}"
        return reading
    text = tokenizer.decode(content)
    if slot.kind == "string":
        end = _string_end(text)
        terminated = stop is not None or end is not None
        if end is not None:
            text = text[:end]
            content = _ids_covering(tokenizer, content, text)
        reading = SlotReading(content, text, terminated)
        try:
            reading.value = json.loads('"' + text + '"', strict=False)
        except json.JSONDecodeError:
            reading.value = text  # not valid JSON escapes: keep the characters literally (they get escaped)
        return reading
    match = _NUMBER_CHARS.match(text)
    number_text = match.group(0)
    terminated = stop is not None or len(number_text) < len(text)
    if len(number_text) < len(text):
        content = _ids_covering(tokenizer, content, number_text)
    reading = SlotReading(content, number_text, terminated)
    stripped = number_text.strip()
    if slot.kind == "integer":
        if _INTEGER.fullmatch(stripped):
            reading.value = int(stripped)
        else:
            reading.error = f"{stripped!r} is not an integer"
    elif _JSON_NUMBER.fullmatch(stripped):
        reading.value = float(stripped) if any(c in stripped for c in ".eE") else int(stripped)
        if isinstance(reading.value, float) and not math.isfinite(reading.value):
            reading.error = f"{stripped!r} is not a finite number"
    else:
        reading.error = f"{stripped!r} is not a JSON number"
    return reading


def _ids_covering(tokenizer, ids: list[int], text: str) -> list[int]:
    """The longest token prefix whose text is a prefix of `text`, plus the rest of `text` re-tokenized."""
    kept: list[int] = []
    for i in range(len(ids) + 1):
        if not text.startswith(tokenizer.decode(ids[:i])):
            break
        kept = ids[:i]
    rest = text[len(tokenizer.decode(kept)):]
    return kept + (list(tokenizer(rest, add_special_tokens=False)["input_ids"]) if rest else [])


# ----------------------------------------------------------------------------------------------------
# 4. Assembling the value and deciding which slots go back to the decoder


def _scalar_schema(schema: dict) -> dict:
    return {k: v for k, v in schema.items() if k not in ANNOTATIONS}


def _leaves(node):
    if isinstance(node, Leaf):
        yield node
    elif isinstance(node, ObjectNode):
        for _key, child, _required in node.properties:
            yield from _leaves(child)
    elif isinstance(node, ArrayNode):
        for item in node.items:
            yield from _leaves(item)


def _leaf_value(leaf: Leaf, reading: SlotReading, optional: bool, bad: dict, repairs: list):
    slot = leaf.slot
    if slot.kind == "choice":
        if reading.error:
            bad[slot] = reading.error
            return None
        if reading.value is None and not leaf.nullable:
            return ABSENT if optional else None
        return reading.value
    if reading.empty and (optional or leaf.nullable):
        return ABSENT if optional else None
    if reading.error:
        bad[slot] = reading.error
        return None
    value = reading.value
    limit = leaf.schema.get("maxLength")
    if isinstance(value, str) and limit is not None and len(value) > limit:
        repairs.append(f"{slot.path or '/'}: truncated a {len(value)}-character string to maxLength={limit}")
        value = value[:limit]
    errors = [e.message for e in jsonschema.Draft202012Validator(_scalar_schema(leaf.schema)).iter_errors(value)]
    if errors:
        bad[slot] = f"{value!r}: {errors[0]}"
    return value


def assemble(node, readings: dict[Slot, SlotReading], bad: dict, repairs: list, optional: bool = False):
    """The Python value of `node` from the slot readings; slots whose content does not fit go to `bad`."""
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Leaf):
        return _leaf_value(node, readings[node.slot], optional, bad, repairs)
    if optional and isinstance(node, ObjectNode):
        # An optional object whose value slots all came out empty is left out; slots of array items
        # after an array's end were not rendered and read as empty.
        leaves = [leaf for leaf in _leaves(node) if leaf.slot.kind != "choice"]
        if leaves and all(readings.get(leaf.slot) is None or readings[leaf.slot].empty for leaf in leaves):
            return ABSENT
    if isinstance(node, ObjectNode):
        value = {}
        for key, child, required in node.properties:
            child_value = assemble(child, readings, bad, repairs, optional=not required)
            if child_value is not ABSENT:
                value[key] = child_value
        return value
    items = []
    for k, item in enumerate(node.items):
        choice = node.continues.get(k)
        if choice is not None:
            reading = readings[choice]
            if reading.error:
                bad[choice] = reading.error
                break
            if reading.value is False:
                break
        items.append(assemble(item, readings, bad, repairs))
    return items
