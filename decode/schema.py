"""Self-adaptive schema scaffolding (S3) for JSON output.

Paper: "Unveiling the Potential of Diffusion Large Language Model in Controllable Generation" (Xiong et
al. 2025). A masked diffusion model sees the whole canvas at once, so the JSON skeleton can be written
into the canvas before decoding: keys, quotes, colons, commas and braces are fixed tokens (never
remasked), and only the value slots are masks. While filling a slot the model sees every key, including
the ones after it, which left-to-right constrained decoding cannot offer. The model never spends
network calls on punctuation, so for the same tokens-per-step budget it needs fewer calls.

    from mdlm.decode.schema import generate_json
    out = generate_json(model, tokenizer, prompt, schema)          # raises SchemaFitError if it cannot fit
    out.value, out.text, out.valid, out.nfe

Supported JSON Schema subset (anything else raises `UnsupportedSchemaError` naming the keyword and its
JSON pointer):
- `type` one of object, array, string, integer, number, boolean, null, or a pair [T, "null"] (nullable);
  `enum` / `const` of JSON scalars, with or without `type`.
- object: `properties`, `required` (optional properties may come out absent), `additionalProperties`
  (never generated, so any value is accepted).
- string: `maxLength`, `minLength`, `enum`, `const`.
- integer / number: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `enum`, `const`.
- array: `items` (one schema), `maxItems` (required: the scaffold is bounded), `minItems`.
- annotations are ignored: title, description, default, examples, $comment, $schema, $id, deprecated,
  readOnly, writeOnly.

Canvas layout. The canvas is prompt + skeleton. Fixed text segments are tokenized separately and
concatenated (a BPE tokenizes a whole JSON text differently at the seams; segment boundaries are placed
where a GPT-2-style pre-tokenizer splits anyway: after `":` for bare values and after ` "` for strings),
and each slot's tokens are decoded separately. Slot kinds:
- string slot: B_f masks between fixed quotes (B_f = `slot_tokens`, 16 by default, or fewer when
  `maxLength` is smaller);
- integer / number slot: a short run of masks (6 / 10, at most B_f) after the colon;
- choice slot (booleans, enums, nullable/optional scalars that may be null): as many masks as the longest
  option's tokens; the logits are restricted to the options (`schema_constraints`);
- null and const values are fixed text: there is nothing to generate;
- arrays: `maxItems` item skeletons; before each item that `minItems` does not require, a choice slot
  decides between "one more item" (`, "`) and "the array ends here" (`"]`), so the model chooses the
  length, and items after the end are dropped.

Slot adaptation (our design; the paper's code has none). A slot ends where the model ends it: at the
first EOS/pad token, or at the first character that closes the value in JSON (an unescaped quote in a
string, a non-number character after a number). Everything after the end is discarded. The reason: a
model finetuned on plain JSON (as `train/sft.py` does) writes the closing quote and the next separator
itself, so its own terminator marks the value's length, and EOS padding (LLaDA's SFT convention) is the
explicit "nothing here". After each round every accepted slot is compacted to exactly its content, so
later rounds (and the final text) look like ordinary JSON. Two cases trigger another round:
- a string slot that was filled to the end without terminating grows: its tokens stay as a fixed prefix
  and B_f more masks are appended (up to `maxLength`, or 4 B_f tokens without one), because a too-short
  slot should not force a truncated value;
- a slot whose content does not fit its type (an integer that does not parse, a value outside
  `minimum`/`maximum`) is re-masked, at most `max_retries` times, and decoded again at temperature
  max(T, 1) (at temperature 0 the same context would give the same content again);
- a choice slot whose tokens mix two options (a sampler that reveals several positions of one slot in
  a step can do that) is settled by one network call: the option with the highest summed token
  log-probability given the rest of the canvas.
An optional property whose slots all come out empty is left out (or null when the type is nullable).
A string longer than `maxLength` after growth is truncated, and the repair is reported.

Every result is checked with `jsonschema` against the whole schema before it is returned as valid. If a
slot still does not fit after its retries, `generate_json` raises `SchemaFitError` (or, with
`strict=False`, returns a `GeneratedJSON` with `valid=False`, `value=None` and the reasons), never
invalid JSON presented as valid.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field, replace

import jsonschema
import torch

from mdlm.decode.config import DecodeConfig
from mdlm.decode.denoiser import as_denoiser
from mdlm.decode.registry import decode
from mdlm.decode.schema_constraints import SlotConstraints, constrained, number_automaton

DEFAULT_SLOT_TOKENS = 16
INTEGER_SLOT_TOKENS = 6
NUMBER_SLOT_TOKENS = 10
UNBOUNDED_STRING_GROWTH = 4  # a string without maxLength may grow to this many times B_f tokens
RETRY_TEMPERATURE = 1.0  # re-masked slots are decoded again at least this hot

ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "$schema", "$id", "deprecated",
               "readOnly", "writeOnly"}
NUMERIC_KEYWORDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
KEYWORDS_BY_TYPE = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "maxItems", "minItems"},
    "string": {"maxLength", "minLength"},
    "integer": NUMERIC_KEYWORDS,
    "number": NUMERIC_KEYWORDS,
    "boolean": set(),
    "null": set(),
}
SUPPORTED_TYPES = tuple(KEYWORDS_BY_TYPE)
ABSENT = object()  # an optional property the model left out


class UnsupportedSchemaError(ValueError):
    """The schema uses something outside the supported subset (see the module docstring)."""


class SchemaFitError(RuntimeError):
    """The model's content could not be made to fit the schema within the retry budget."""

    def __init__(self, message: str, result: "GeneratedJSON"):
        super().__init__(message)
        self.result = result


# ----------------------------------------------------------------------------------------------------
# 1. The schema as a tree of nodes


@dataclass(eq=False)
class Slot:
    """A run of masks in the canvas that the model fills: a scalar value or a structural choice."""

    path: str  # JSON pointer of the value (choices: of the array, with "#k" for the item k decision)
    kind: str  # "string", "integer", "number" or "choice"
    initial_tokens: int = 0
    max_tokens: int = 0
    may_be_empty: bool = False  # optional or nullable: an empty slot means absent / null
    options: list = field(default_factory=list)  # choice: the meaning of each option
    option_texts: list[str] = field(default_factory=list)
    option_ids: list[list[int]] = field(default_factory=list)  # filled by the tokenizer pass


@dataclass(eq=False)
class Leaf:
    schema: dict  # the scalar's own schema, to check its value
    slot: Slot
    nullable: bool
    lead: str  # whitespace before the value in JSON text (", " and ": " keep it inside the slot)


@dataclass(eq=False)
class Const:
    value: object
    lead: str


@dataclass(eq=False)
class ObjectNode:
    properties: list[tuple[str, object, bool]]  # (key, node, required)
    lead: str


@dataclass(eq=False)
class ArrayNode:
    items: list
    min_items: int
    continues: dict[int, Slot]  # item index -> choice slot "one more item" / "the array ends"
    lead: str


def _pointer(path: str, token) -> str:
    return f"{path}/{str(token).replace('~', '~0').replace('/', '~1')}"


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object or array"


def _types_of(schema: dict, path: str) -> tuple[str, bool]:
    """(the one non-null type, nullable) of a schema, inferred from enum/const when `type` is absent."""
    declared = schema.get("type")
    if declared is None:
        values = schema["enum"] if "enum" in schema else [schema["const"]] if "const" in schema else None
        if values is None:
            if "properties" in schema:
                return "object", False
            raise UnsupportedSchemaError(f"the schema at {path or '/'} has no `type` (and no enum/const); "
                                         f"add \"type\": one of {', '.join(SUPPORTED_TYPES)}")
        kinds = {_json_type(v) for v in values}
        nullable = "null" in kinds
        kinds.discard("null")
        if "object or array" in kinds:
            raise UnsupportedSchemaError(f"`enum`/`const` at {path or '/'} holds objects or arrays; only JSON "
                                         "scalars are supported")
        if kinds == {"integer", "number"}:
            kinds = {"number"}
        if len(kinds) > 1:
            raise UnsupportedSchemaError(f"`enum` at {path or '/'} mixes types {sorted(kinds)}; give one type")
        return (kinds.pop() if kinds else "null"), nullable
    types = [declared] if isinstance(declared, str) else list(declared)
    for t in types:
        if t not in SUPPORTED_TYPES:
            raise UnsupportedSchemaError(f"unsupported type {t!r} at {_pointer(path, 'type')}; supported: "
                                         f"{', '.join(SUPPORTED_TYPES)}")
    non_null = [t for t in types if t != "null"]
    if len(non_null) > 1:
        raise UnsupportedSchemaError(f"type union {types} at {_pointer(path, 'type')} is not supported; only "
                                     "one type, optionally with \"null\"")
    return (non_null[0] if non_null else "null"), "null" in types


class _Builder:
    """Turns a schema into the node tree, checking the supported subset on the way."""

    def __init__(self, slot_tokens: int):
        if slot_tokens < 1:
            raise ValueError(f"slot_tokens must be >= 1, got {slot_tokens}")
        self.slot_tokens = slot_tokens
        self.slots: list[Slot] = []

    def node(self, schema, path: str, lead: str, optional: bool = False):
        if schema is True or schema == {}:
            raise UnsupportedSchemaError(f"the schema at {path or '/'} accepts anything; give it a `type`")
        if not isinstance(schema, dict):
            raise UnsupportedSchemaError(f"the schema at {path or '/'} must be an object, got {schema!r}")
        kind, nullable = _types_of(schema, path)
        allowed = KEYWORDS_BY_TYPE[kind] | ANNOTATIONS | {"type", "enum", "const"}
        for keyword in schema:
            if keyword not in allowed:
                raise UnsupportedSchemaError(
                    f"unsupported keyword {keyword!r} at {_pointer(path, keyword)} (type {kind}); schema "
                    f"scaffolding supports {', '.join(sorted(KEYWORDS_BY_TYPE[kind] | {'type', 'enum', 'const'}))} "
                    "for this type: remove it or check the value after generation")
        if kind == "object":
            return self.object(schema, path, lead, nullable)
        if kind == "array":
            return self.array(schema, path, lead, nullable)
        return self.scalar(schema, kind, path, lead, nullable or optional, nullable)

    def object(self, schema, path, lead, nullable):
        if nullable:
            raise UnsupportedSchemaError(f"nullable objects at {_pointer(path, 'type')} are not supported")
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        missing = [name for name in required if name not in properties]
        if missing:
            raise UnsupportedSchemaError(f"{_pointer(path, 'required')} lists {missing} that are not in "
                                         "`properties`; define them")
        nodes = [(key, self.node(sub, _pointer(_pointer(path, "properties"), key), " ", key not in required),
                  key in required) for key, sub in properties.items()]
        return ObjectNode(nodes, lead)

    def array(self, schema, path, lead, nullable):
        if nullable:
            raise UnsupportedSchemaError(f"nullable arrays at {_pointer(path, 'type')} are not supported")
        if "maxItems" not in schema:
            raise UnsupportedSchemaError(f"the array at {path or '/'} has no `maxItems`; the scaffold needs a "
                                         "bound: add \"maxItems\": N")
        if not isinstance(schema.get("items"), dict):
            raise UnsupportedSchemaError(f"the array at {path or '/'} needs `items` as one schema (tuple forms "
                                         "and `prefixItems` are not supported)")
        max_items, min_items = int(schema["maxItems"]), int(schema.get("minItems", 0))
        if min_items > max_items:
            raise UnsupportedSchemaError(f"minItems > maxItems at {path or '/'}")
        items, continues = [], {}
        for k in range(max_items):
            first_slot_of_item = len(self.slots)
            items.append(self.node(schema["items"], _pointer(path, "items"), "" if k == 0 else " "))
            if k >= min_items:  # the choice "the array ends here / one more item" comes before item k
                close = _close_text(items[k - 1]) if k > 0 else ""
                stop = (lead + "[]") if k == 0 else close + "]"
                go_on = (lead + "[" + _open_text(items[0])) if k == 0 else close + "," + _open_text(items[k])
                continues[k] = Slot(f"{path}#{k}", "choice", options=[False, True], option_texts=[stop, go_on])
                self.slots.insert(first_slot_of_item, continues[k])  # slots stay in canvas order
        return ArrayNode(items, min_items, continues, lead)

    def scalar(self, schema, kind, path, lead, may_be_null, nullable):
        values = schema["enum"] if "enum" in schema else [schema["const"]] if "const" in schema else None
        if kind == "null" or (values is not None and len(values) == 1 and not may_be_null):
            return Const(None if values is None else values[0], lead)
        if kind == "boolean" and values is None:
            values = [True, False]
        if values is not None:
            options = list(values) + ([None] if may_be_null and None not in values else [])
            slot = Slot(path, "choice", options=options, option_texts=[lead + json.dumps(v) for v in options])
        elif kind == "string":
            limit = schema.get("maxLength")
            initial = min(self.slot_tokens, limit) if limit is not None else self.slot_tokens
            cap = max(initial, limit if limit is not None else UNBOUNDED_STRING_GROWTH * self.slot_tokens)
            slot = Slot(path, "string", max(1, initial), max(1, cap), may_be_null)
        else:
            size = min(self.slot_tokens, INTEGER_SLOT_TOKENS if kind == "integer" else NUMBER_SLOT_TOKENS)
            slot = Slot(path, kind, size, size, may_be_null)
        self.slots.append(slot)
        return Leaf(schema, slot, nullable, lead)


def _open_text(node) -> str:
    """The text that opens a string or object item (its lead included); other items open themselves."""
    if isinstance(node, Leaf) and node.slot.kind == "string":
        return node.lead + '"'
    return node.lead + "{" if isinstance(node, ObjectNode) else ""


def _close_text(node) -> str:
    if isinstance(node, Leaf) and node.slot.kind == "string":
        return '"'
    return "}" if isinstance(node, ObjectNode) else ""


# ----------------------------------------------------------------------------------------------------
# 2. The scaffold: rendering the tree into canvas pieces given each slot's state


@dataclass
class SlotState:
    """prefix: tokens already accepted (a grown slot keeps what it had); masks: masks still to fill;
    done: accepted; attempts: re-masks so far."""

    prefix: list[int]
    masks: int
    done: bool = False
    attempts: int = 0


class Scaffold:
    """A compiled schema bound to a tokenizer: renders canvases and reads slots back."""

    def __init__(self, schema: dict, tokenizer, slot_tokens: int = DEFAULT_SLOT_TOKENS):
        if not isinstance(schema, dict):
            raise UnsupportedSchemaError(f"the schema must be a JSON object, got {type(schema).__name__}")
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            where = "".join(_pointer("", part) for part in error.path) or "/"
            raise UnsupportedSchemaError(f"the schema itself is not valid JSON Schema at {where}: "
                                         f"{error.message}") from None
        self.schema = schema
        self.tokenizer = tokenizer
        builder = _Builder(slot_tokens)
        self.root = builder.node(schema, "", "")
        self.slots = builder.slots
        self.slot_tokens = slot_tokens
        self._text_ids: dict[str, list[int]] = {}
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError("the tokenizer has no EOS token (slots end with it); load it with "
                             "mdlm.tokenizer.load_tokenizer")
        self.stop_ids = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)
                         if i is not None}
        for slot in self.slots:
            if slot.kind == "choice":
                ids = [self.text_ids(t) for t in slot.option_texts]
                width = max(len(i) for i in ids)
                if len({tuple(i) for i in ids}) < len(ids):
                    raise UnsupportedSchemaError(f"the options at {slot.path or '/'} tokenize identically")
                slot.option_ids = [i + [self.eos_id] * (width - len(i)) for i in ids]
                slot.initial_tokens = slot.max_tokens = width

    def text_ids(self, text: str) -> list[int]:
        if text not in self._text_ids:
            self._text_ids[text] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        return self._text_ids[text]

    def initial_states(self) -> dict[Slot, SlotState]:
        return {slot: SlotState([], slot.initial_tokens) for slot in self.slots}

    # Rendering produces a list of pieces: str (fixed text) or Slot.
    def pieces(self, states: dict[Slot, SlotState], choices: dict[Slot, object] | None = None) -> list:
        out: list = []
        self._emit(self.root, out, states, choices or {}, skip_open=False, skip_close=False)
        return out

    def _emit(self, node, out, states, choices, skip_open, skip_close):
        if isinstance(node, Const):
            out.append(node.lead + json.dumps(node.value))
        elif isinstance(node, Leaf):
            if node.slot.kind == "string":
                out.append("" if skip_open else node.lead + '"')
                out.append(node.slot)
                out.append("" if skip_close else '"')
            else:
                out.append(node.slot)
        elif isinstance(node, ObjectNode):
            out.append("" if skip_open else node.lead + "{")
            for i, (key, child, _required) in enumerate(node.properties):
                out.append(("" if i == 0 else ", ") + json.dumps(key) + ":")
                self._emit(child, out, states, choices, False, False)
            out.append("" if skip_close else "}")
        else:
            self._emit_array(node, out, states, choices)

    def _emit_array(self, node: ArrayNode, out, states, choices):
        if not node.items:
            out.append(node.lead + "[]")
            return
        for k, item in enumerate(node.items):
            choice = node.continues.get(k)
            if choice is not None:
                out.append(choice)
                if choices.get(choice) is False:
                    return  # the array ended before item k; the choice's text closes it
            elif k == 0:
                out.append(node.lead + "[" + _open_text(item))
            else:
                out.append(_close_text(node.items[k - 1]) + "," + _open_text(item))
            self._emit(item, out, states, choices, skip_open=True, skip_close=True)
        out.append(_close_text(node.items[-1]) + "]")

    def render(self, states, choices) -> tuple[list[int], dict[Slot, tuple[int, int]]]:
        """Token ids of the skeleton and each rendered slot's [start, end) in them."""
        ids: list[int] = []
        spans: dict[Slot, tuple[int, int]] = {}
        text = ""
        for piece in self.pieces(states, choices):
            if isinstance(piece, str):
                text += piece
                continue
            ids += self.text_ids(text)
            text = ""
            state = states[piece]
            start = len(ids)
            if state.done:
                ids += state.prefix
            else:
                ids += state.prefix + [self.tokenizer.mask_token_id] * state.masks
            spans[piece] = (start, len(ids))
        ids += self.text_ids(text)
        return ids, spans

    def preview(self, placeholder: str = "<{kind}:{n}>") -> str:
        """The skeleton as text with a placeholder per slot (for docs, tests and the CLI)."""
        states = self.initial_states()
        return "".join(p if isinstance(p, str) else placeholder.format(kind=p.kind, n=states[p].masks)
                       for p in self.pieces(states))


# ----------------------------------------------------------------------------------------------------
# 3. Reading a slot back: where it ends and what value it holds


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


# ----------------------------------------------------------------------------------------------------
# 5. generate_json: rounds of decode -> read -> compact / grow / re-mask


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


def _device_of(model) -> torch.device:
    for candidate in (model, getattr(model, "model", None)):
        try:
            return next(candidate.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            continue
    return torch.device("cpu")


def _constraints_for(scaffold: Scaffold, canvas: torch.Tensor, offset: int, spans, states,
                     vocab_size: int) -> SlotConstraints:
    constraints = SlotConstraints(canvas, scaffold.tokenizer.mask_token_id)
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


def _vocab_size(model, tokenizer) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "vocab_size", None) or len(tokenizer))


def generate_json(model, tokenizer, prompt: str, schema: dict, config: DecodeConfig | None = None, *,
                  slot_tokens: int = DEFAULT_SLOT_TOKENS, max_retries: int = 2, constrain: bool = True,
                  strict: bool = True, tokens_per_step: int | None = None, generator=None,
                  scaffold: Scaffold | None = None) -> GeneratedJSON:
    """Generate a JSON value for `schema` after `prompt` by schema scaffolding (see the module docstring).

    config: any `DecodeConfig` (sampler, remasking, blocks, caches pass through); default: confidence
        sampler, low-confidence remasking, temperature 0, one token per step (the S3 paper's decoder).
    slot_tokens: B_f, the default slot length. max_retries: re-masks per slot before giving up.
    constrain: restrict number and choice slots to valid tokens (`schema_constraints`).
    tokens_per_step: if set, each round runs ceil(masks / tokens_per_step) steps (a step budget that
        scales with the work, as plain generation's does); else `config.steps` (capped at the masks).
    strict: raise `SchemaFitError` when the content cannot be made to fit; else return valid=False.
    """
    started = time.perf_counter()
    config = config or DecodeConfig(sampler="confidence", remasking="low-confidence", temperature=0.0)
    if config.eos_token_id is None:
        config = replace(config, eos_token_id=tokenizer.eos_token_id)
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token; load it with mdlm.tokenizer.load_tokenizer")
    scaffold = scaffold or Scaffold(schema, tokenizer, slot_tokens)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    device = _device_of(model)
    vocab_size = _vocab_size(model, tokenizer)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if generator is None and config.seed is not None:
        generator = torch.Generator().manual_seed(int(config.seed))
    states = scaffold.initial_states()
    choices: dict[Slot, object] = {}
    retrying = False
    result = GeneratedJSON(value=None, text="", valid=False, nfe=0, rounds=0)
    readings: dict[Slot, SlotReading] = {}
    growth_rounds = max((math.ceil((s.max_tokens - s.initial_tokens) / scaffold.slot_tokens) for s in scaffold.slots),
                        default=0)
    max_rounds = (1 + max_retries) * (1 + growth_rounds)
    while True:
        ids, spans = scaffold.render(states, choices)
        if result.rounds == 0:
            result.canvas_tokens = len(ids)
        open_slots = [s for s in spans if not states[s].done]
        if not open_slots or result.rounds >= max_rounds:
            break
        if context is not None and len(prompt_ids) + len(ids) > context:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + schema scaffold ({len(ids)} tokens) exceed the "
                             f"model's context of {context}; shorten the prompt or lower slot_tokens/maxItems")
        canvas = torch.tensor([prompt_ids + ids], dtype=torch.long, device=device)
        masks = int((canvas == tokenizer.mask_token_id).sum())
        # A re-masked slot decoded again at temperature 0 in the same context would repeat itself.
        round_config = config if not retrying else replace(config, temperature=max(config.temperature,
                                                                                    RETRY_TEMPERATURE))
        if tokens_per_step is not None:
            round_config = replace(round_config, steps=max(1, math.ceil(masks / tokens_per_step)))
        elif config.steps is not None:
            round_config = replace(round_config, steps=min(config.steps, masks))
        constraints = _constraints_for(scaffold, canvas, len(prompt_ids), spans, states, vocab_size) \
            if constrain else SlotConstraints(canvas, tokenizer.mask_token_id)
        with constrained(model, constraints):
            decoded = decode(model, canvas, round_config, generator=generator)
        result.nfe += decoded.nfe
        result.rounds += 1
        result.masked_tokens += masks
        tokens = decoded.tokens[0].tolist()[len(prompt_ids):]
        for slot in open_slots:
            start, end = spans[slot]
            reading = read_slot(scaffold, slot, tokens[start:end])
            readings[slot] = reading
            state = states[slot]
            if slot.kind == "string" and not reading.terminated and end - start < slot.max_tokens:
                # Filled to the end without closing: grow, keeping what it wrote.
                state.prefix = tokens[start:end]
                state.masks = min(scaffold.slot_tokens, slot.max_tokens - (end - start))
                continue
            state.prefix, state.masks, state.done = reading.ids, 0, True
            if slot.kind == "choice" and reading.error is None:
                choices[slot] = reading.value
        bad: dict[Slot, str] = {}
        result.repairs = []
        retrying = False
        rendered_done = {s: readings[s] for s in spans if states[s].done}
        if all(states[s].done for s in spans):
            assemble(scaffold.root, rendered_done, bad, result.repairs)
        else:  # slots still growing: check the finished ones only
            for s, reading in rendered_done.items():
                if reading.error:
                    bad[s] = reading.error
        mixed_choices = [slot for slot in bad if slot.kind == "choice"]
        if mixed_choices:
            readings.update(_choose_by_score(model, scaffold, prompt_ids, states, choices, mixed_choices,
                                             [s for s in bad if s.kind != "choice"], device))
            result.nfe += 1
            result.scored_choices += len(mixed_choices)
        for slot, reason in bad.items():
            if slot.kind == "choice":
                continue
            state = states[slot]
            if state.attempts >= max_retries:
                result.errors.append(f"{slot.path or '/'}: {reason} (after {state.attempts} re-masks)")
                continue
            state.attempts += 1
            retrying = True
            result.retries[slot.path or "/"] = state.attempts
            state.prefix, state.masks, state.done = [], slot.initial_tokens, False
            choices.pop(slot, None)
        if result.errors:
            break
    return _finish(scaffold, states, choices, readings, result, strict, started)


def _choose_by_score(model, scaffold: Scaffold, prompt_ids, states, choices, choice_slots, other_bad,
                     device) -> dict[Slot, SlotReading]:
    """Settle choice slots whose decoded tokens mixed two options (a sampler that reveals several of a
    slot's positions in one step can do that): one network call on the canvas with these slots (and the
    other slots going back to the decoder) masked, then the option with the largest sum of token
    log-probabilities (one network call). Returns the new readings of the choice slots."""
    for slot in list(choice_slots) + list(other_bad):
        states[slot].prefix, states[slot].masks, states[slot].done = [], slot.initial_tokens, False
        choices.pop(slot, None)
    ids, spans = scaffold.render(states, choices)
    canvas = torch.tensor([prompt_ids + ids], dtype=torch.long, device=device)
    valid = torch.ones_like(canvas, dtype=torch.bool)
    positions = torch.arange(canvas.shape[1], device=device)[None]
    logprobs = torch.log_softmax(as_denoiser(model).logits(canvas, valid, positions)[0].double(), -1)
    readings = {}
    for slot in choice_slots:
        if slot not in spans:
            continue  # an array ended before it: nothing to choose
        start = len(prompt_ids) + spans[slot][0]
        columns = torch.arange(start, start + slot.initial_tokens, device=device)
        scores = [float(logprobs[columns, torch.tensor(option, device=device)].sum()) for option in slot.option_ids]
        best = max(range(len(scores)), key=scores.__getitem__)
        readings[slot] = read_slot(scaffold, slot, slot.option_ids[best])
        states[slot].prefix, states[slot].masks, states[slot].done = readings[slot].ids, 0, True
        choices[slot] = readings[slot].value
    return readings


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
        result.text = scaffold.tokenizer.decode([t for t in ids if t != scaffold.tokenizer.mask_token_id])
    result.seconds = time.perf_counter() - started
    if not result.valid and strict:
        raise SchemaFitError("the model's output could not be made to fit the schema: " + "; ".join(result.errors),
                             result)
    return result
