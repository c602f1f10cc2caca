"""The scaffold: the schema tree rendered into canvas pieces (fixed tokens and masked slots) given each
slot's state."""

from __future__ import annotations

import json
from dataclasses import dataclass

import jsonschema

from mdlm.decode.schema.tree import (DEFAULT_SLOT_TOKENS, ArrayNode, Const, Leaf, ObjectNode, Slot,
                                     UnsupportedSchemaError, TreeBuilder, close_text, open_text, pointer)



@dataclass
class SlotState:
    """prefix: tokens already accepted (a grown slot keeps what it had); masks: masks still to fill;
    done: accepted; attempts: re-masks so far."""

    prefix: list[int]
    masks: int
    done: bool = False
    attempts: int = 0


# Bounds checked before anything is built. The schema document may nest at most MAX_SCHEMA_NESTING levels of
# objects/arrays (jsonschema's own check and the tree builder recurse once per level; Python's stack ends
# near 200 array levels), and the scaffold may hold at most MAX_SCAFFOLD_VALUES values once arrays are
# expanded to their maxItems (nested arrays multiply: four levels of maxItems 100 are 10^8 values, which
# would take minutes and gigabytes to build before any context check could refuse them).
MAX_SCHEMA_NESTING = 100
MAX_SCAFFOLD_VALUES = 4096


def _check_shape(schema) -> None:
    """Refuse, without recursion, a schema that contains itself (a Python object built that way; JSON text
    cannot) or nests deeper than MAX_SCHEMA_NESTING levels, naming the place."""
    stack = [(schema, "", 0, frozenset())]
    while stack:
        value, path, depth, open_ids = stack.pop()
        if not isinstance(value, (dict, list)):
            continue
        if id(value) in open_ids:
            raise UnsupportedSchemaError(f"the schema refers to itself at {path or '/'} (a Python object that "
                                         "contains itself); recursive schemas cannot be scaffolded")
        if depth >= MAX_SCHEMA_NESTING:
            raise UnsupportedSchemaError(f"the schema nests deeper than {MAX_SCHEMA_NESTING} levels (at "
                                         f"{path[:120]}...); scaffolds are built for shallower schemas: flatten it")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend((item, f"{path}/{key}", depth + 1, open_ids | {id(value)}) for key, item in items)


def expanded_values(schema: dict, limit: int = MAX_SCAFFOLD_VALUES) -> int:
    """How many values (objects, arrays, scalars) the scaffold of `schema` holds with every array at its
    maxItems, counted without building it; counting stops once past `limit`. Call on a checked schema."""
    total, stack = 0, [(schema, 1)]
    while stack and total <= limit:
        node, copies = stack.pop()
        if not isinstance(node, dict):
            continue
        total += copies
        for sub in (node.get("properties") or {}).values() if isinstance(node.get("properties"), dict) else ():
            stack.append((sub, copies))
        max_items = node.get("maxItems")
        if isinstance(node.get("items"), dict) and isinstance(max_items, int) and max_items > 0:
            total += copies * max_items  # an item's "one more / the end" choice
            stack.append((node["items"], copies * max_items))
    return total


def check_scaffold_size(schema: dict, context: int | None = None) -> None:
    """Refuse a schema whose scaffold would hold more than MAX_SCAFFOLD_VALUES values, or more values than
    the model's `context` has tokens (every value takes at least one), before it is built."""
    limit = MAX_SCAFFOLD_VALUES if context is None else min(MAX_SCAFFOLD_VALUES, context)
    count = expanded_values(schema, limit)
    if count > limit:
        bound = (f"the model's context of {context} tokens (each value takes one at least)" if limit == context
                 else f"the {MAX_SCAFFOLD_VALUES} a scaffold is built for")
        raise UnsupportedSchemaError(f"the schema's scaffold would hold more than {limit} values with every array at "
                                     f"its maxItems (nested arrays multiply), more than {bound}; lower maxItems")


class Scaffold:
    """A compiled schema bound to a tokenizer: renders canvases and reads slots back."""

    def __init__(self, schema: dict, tokenizer, slot_tokens: int = DEFAULT_SLOT_TOKENS, context: int | None = None):
        """`context`: the model's, when known: a scaffold that cannot fit it is refused before it is built."""
        if not isinstance(schema, dict):
            raise UnsupportedSchemaError(f"the schema must be a JSON object, got {type(schema).__name__}")
        _check_shape(schema)
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            where = "".join(pointer("", part) for part in error.path) or "/"
            raise UnsupportedSchemaError(f"the schema itself is not valid JSON Schema at {where}: "
                                         f"{error.message}") from None
        check_scaffold_size(schema, context)
        self.schema = schema
        self.tokenizer = tokenizer
        builder = TreeBuilder(slot_tokens)
        self.root = builder.node(schema, "", "")
        self.slots = builder.slots
        self.slot_tokens = slot_tokens
        self._text_ids: dict[str, list[int]] = {}
        self.mask_token_id = tokenizer.mask_token_id  # the model's, when its family names another (generate_json)
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
                out.append(node.lead + "[" + open_text(item))
            else:
                out.append(close_text(node.items[k - 1]) + "," + open_text(item))
            self._emit(item, out, states, choices, skip_open=True, skip_close=True)
        out.append(close_text(node.items[-1]) + "]")

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
                ids += state.prefix + [self.mask_token_id] * state.masks
            spans[piece] = (start, len(ids))
        ids += self.text_ids(text)
        return ids, spans

    def preview(self, placeholder: str = "<{kind}:{n}>") -> str:
        """The skeleton as text with a placeholder per slot (for docs, tests and the CLI)."""
        states = self.initial_states()
        return "".join(p if isinstance(p, str) else placeholder.format(kind=p.kind, n=states[p].masks)
                       for p in self.pieces(states))
