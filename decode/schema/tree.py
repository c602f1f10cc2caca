"""The schema as a tree of nodes: slots (what the model fills), constants, objects and arrays, and the
supported JSON Schema subset (see `mdlm.decode.schema`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


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


def pointer(path: str, token) -> str:
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
            raise UnsupportedSchemaError(f"unsupported type {t!r} at {pointer(path, 'type')}; supported: "
                                         f"{', '.join(SUPPORTED_TYPES)}")
    non_null = [t for t in types if t != "null"]
    if len(non_null) > 1:
        raise UnsupportedSchemaError(f"type union {types} at {pointer(path, 'type')} is not supported; only "
                                     "one type, optionally with \"null\"")
    return (non_null[0] if non_null else "null"), "null" in types


class TreeBuilder:
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
                    f"unsupported keyword {keyword!r} at {pointer(path, keyword)} (type {kind}); schema "
                    f"scaffolding supports {', '.join(sorted(KEYWORDS_BY_TYPE[kind] | {'type', 'enum', 'const'}))} "
                    "for this type: remove it or check the value after generation")
        if kind == "object":
            return self.object(schema, path, lead, nullable)
        if kind == "array":
            return self.array(schema, path, lead, nullable)
        return self.scalar(schema, kind, path, lead, nullable or optional, nullable)

    def object(self, schema, path, lead, nullable):
        if nullable:
            raise UnsupportedSchemaError(f"nullable objects at {pointer(path, 'type')} are not supported")
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        missing = [name for name in required if name not in properties]
        if missing:
            raise UnsupportedSchemaError(f"{pointer(path, 'required')} lists {missing} that are not in "
                                         "`properties`; define them")
        nodes = [(key, self.node(sub, pointer(pointer(path, "properties"), key), " ", key not in required),
                  key in required) for key, sub in properties.items()]
        return ObjectNode(nodes, lead)

    def array(self, schema, path, lead, nullable):
        if nullable:
            raise UnsupportedSchemaError(f"nullable arrays at {pointer(path, 'type')} are not supported")
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
            items.append(self.node(schema["items"], pointer(path, "items"), "" if k == 0 else " "))
            if k >= min_items:  # the choice "the array ends here / one more item" comes before item k
                close = close_text(items[k - 1]) if k > 0 else ""
                stop = (lead + "[]") if k == 0 else close + "]"
                go_on = (lead + "[" + open_text(items[0])) if k == 0 else close + "," + open_text(items[k])
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


def open_text(node) -> str:
    """The text that opens a string or object item (its lead included); other items open themselves."""
    if isinstance(node, Leaf) and node.slot.kind == "string":
        return node.lead + '"'
    return node.lead + "{" if isinstance(node, ObjectNode) else ""


def close_text(node) -> str:
    if isinstance(node, Leaf) and node.slot.kind == "string":
        return '"'
    return "}" if isinstance(node, ObjectNode) else ""
