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

The package follows the method's steps: `tree` (the schema as nodes and slots, the supported subset),
`scaffold` (the canvas pieces for each slot's state), `reading` (where a slot ends, its value, the
assembled JSON), `constraints` (token constraints of number and choice slots), `generate` (the rounds).

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
  option's tokens; the logits are restricted to the options (`mdlm.decode.schema.constraints`);
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

from mdlm.decode.schema.constraints import SlotConstraints, constrained, number_automaton
from mdlm.decode.schema.generate import GeneratedJSON, generate_json
from mdlm.decode.schema.reading import SlotReading, assemble, read_slot
from mdlm.decode.schema.scaffold import Scaffold, SlotState
from mdlm.decode.schema.tree import (ABSENT, DEFAULT_SLOT_TOKENS, INTEGER_SLOT_TOKENS, NUMBER_SLOT_TOKENS,
                                     RETRY_TEMPERATURE, UNBOUNDED_STRING_GROWTH, ArrayNode, Const, Leaf, ObjectNode,
                                     SchemaFitError, Slot, UnsupportedSchemaError)

__all__ = ["generate_json", "GeneratedJSON", "SchemaFitError", "UnsupportedSchemaError", "Scaffold", "SlotState",
           "Slot", "Leaf", "Const", "ObjectNode", "ArrayNode", "SlotReading", "read_slot", "assemble", "ABSENT",
           "SlotConstraints", "constrained", "number_automaton", "DEFAULT_SLOT_TOKENS", "INTEGER_SLOT_TOKENS",
           "NUMBER_SLOT_TOKENS", "RETRY_TEMPERATURE", "UNBOUNDED_STRING_GROWTH"]
