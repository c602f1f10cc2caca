"""Schema scaffolding (S3): the scaffold builder per schema feature, slot reading, the supported subset's
errors, and generate_json end to end with a tiny real model (every sampler; random schemas by hypothesis)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdlm import MDLMForMaskedLM
from mdlm.decode import DecodeConfig
from mdlm.decode.schema import (ABSENT, Scaffold, SchemaFitError, UnsupportedSchemaError, assemble,
                                generate_json, read_slot)
from mdlm.decode.schema.constraints import SlotConstraints
from mdlm.train.tasks.signatures import SIGNATURE_SCHEMA
from tests.conftest import tiny_config

OBJECT = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5},
                                           "n": {"type": "integer"}, "ok": {"type": "boolean"}},
          "required": ["name", "n"]}


@pytest.fixture(scope="module")
def model(stdlib_tokenizer):
    torch.manual_seed(0)
    return MDLMForMaskedLM(tiny_config(stdlib_tokenizer, max_position_embeddings=512)).eval()


def preview(schema, tokenizer, slot_tokens=16):
    return Scaffold(schema, tokenizer, slot_tokens).preview()


# --- the scaffold builder, feature by feature ---------------------------------------------------------

def test_object_keys_and_punctuation_are_fixed_text(stdlib_tokenizer):
    assert preview(OBJECT, stdlib_tokenizer) == \
        '{"name": "<string:5>", "n":<integer:6>, "ok":<choice:%d>}' % Scaffold(OBJECT, stdlib_tokenizer).slots[2].initial_tokens


def test_string_slot_length_follows_max_length_and_slot_tokens(stdlib_tokenizer):
    assert preview({"type": "string"}, stdlib_tokenizer) == '"<string:16>"'
    assert preview({"type": "string"}, stdlib_tokenizer, slot_tokens=4) == '"<string:4>"'
    assert preview({"type": "string", "maxLength": 3}, stdlib_tokenizer) == '"<string:3>"'
    slot = Scaffold({"type": "string", "maxLength": 40}, stdlib_tokenizer, 8).slots[0]
    assert (slot.initial_tokens, slot.max_tokens) == (8, 40)


def test_number_slots(stdlib_tokenizer):
    assert preview({"type": "integer"}, stdlib_tokenizer) == "<integer:6>"
    assert preview({"type": "number"}, stdlib_tokenizer) == "<number:10>"
    assert preview({"type": "number"}, stdlib_tokenizer, slot_tokens=4) == "<number:4>"


def test_boolean_and_enum_are_choices_over_their_json_texts(stdlib_tokenizer):
    scaffold = Scaffold({"type": "object", "properties": {"b": {"type": "boolean"},
                                                          "e": {"enum": ["red", "green", "blue"]}},
                         "required": ["b", "e"]}, stdlib_tokenizer)
    b, e = scaffold.slots
    assert (b.kind, b.options, b.option_texts) == ("choice", [True, False], [" true", " false"])
    assert e.option_texts == [' "red"', ' "green"', ' "blue"']
    width = max(len(stdlib_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in e.option_texts)
    assert all(len(ids) == width for ids in e.option_ids)  # padded with EOS to one slot length
    assert all(ids[-1] == stdlib_tokenizer.eos_token_id for ids in e.option_ids
               if len(stdlib_tokenizer(scaffold.tokenizer.decode(ids, skip_special_tokens=True))["input_ids"]) < width)


def test_null_const_and_single_enum_are_fixed(stdlib_tokenizer):
    schema = {"type": "object", "properties": {"a": {"type": "null"}, "b": {"const": "x"}, "c": {"enum": [3]}},
              "required": ["a", "b", "c"]}
    scaffold = Scaffold(schema, stdlib_tokenizer)
    assert scaffold.slots == []
    assert scaffold.preview() == '{"a": null, "b": "x", "c": 3}'


def test_optional_and_nullable_scalars_may_choose_null(stdlib_tokenizer):
    scaffold = Scaffold({"type": "object", "properties": {"b": {"type": "boolean"}, "c": {"enum": ["x", "y"]}},
                         "required": ["c"]}, stdlib_tokenizer)
    assert scaffold.slots[0].options == [True, False, None]  # optional: null means absent
    assert scaffold.slots[1].options == ["x", "y"]
    nullable = Scaffold({"type": ["boolean", "null"]}, stdlib_tokenizer)
    assert nullable.slots[0].options == [True, False, None]


def test_nested_objects(stdlib_tokenizer):
    schema = {"type": "object", "properties": {"outer": {"type": "object", "properties": {
        "inner": {"type": "integer"}}, "required": ["inner"]}}, "required": ["outer"]}
    assert preview(schema, stdlib_tokenizer) == '{"outer": {"inner":<integer:6>}}'


def test_array_items_with_end_choices(stdlib_tokenizer):
    schema = {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3, "minItems": 1}
    scaffold = Scaffold(schema, stdlib_tokenizer)
    assert [s.kind for s in scaffold.slots] == ["string", "choice", "string", "choice", "string"]
    assert scaffold.preview(placeholder="<{kind}>") == '["<string><choice><string><choice><string>"]'
    first_choice = scaffold.slots[1]
    assert first_choice.option_texts == ['"]', '", "']  # end the array / one more item
    # Once the model ends the array, the items after the end are not rendered.
    states = scaffold.initial_states()
    pieces = scaffold.pieces(states, {first_choice: False})
    assert [p for p in pieces if not isinstance(p, str)] == scaffold.slots[:2]


def test_array_that_may_be_empty_and_arrays_of_objects(stdlib_tokenizer):
    empty_ok = Scaffold({"type": "array", "items": {"type": "integer"}, "maxItems": 2}, stdlib_tokenizer)
    assert empty_ok.slots[0].option_texts == ["[]", "["]
    assert empty_ok.slots[2].option_texts == ["]", ","]
    objects = Scaffold({"type": "array", "items": {"type": "object", "properties": {"k": {"type": "boolean"}},
                                                   "required": ["k"]}, "maxItems": 2, "minItems": 2},
                       stdlib_tokenizer)
    assert objects.preview(placeholder="<{kind}>") == '[{"k":<choice>}, {"k":<choice>}]'
    assert Scaffold({"type": "array", "items": {"type": "integer"}, "maxItems": 0}, stdlib_tokenizer).preview() == "[]"


def test_canvas_tokenizes_fixed_segments_separately(stdlib_tokenizer):
    scaffold = Scaffold(OBJECT, stdlib_tokenizer)
    states = scaffold.initial_states()
    ids, spans = scaffold.render(states, {})
    mask = stdlib_tokenizer.mask_token_id
    assert ids[: spans[scaffold.slots[0]][0]] == stdlib_tokenizer('{"name": "', add_special_tokens=False)["input_ids"]
    for slot, (start, end) in spans.items():
        assert ids[start:end] == [mask] * slot.initial_tokens
    assert sum(t == mask for t in ids) == sum(s.initial_tokens for s in scaffold.slots)


# --- unsupported schemas get clear errors ---------------------------------------------------------------

@pytest.mark.parametrize("schema, expected", [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}}}, "'pattern' at /properties/a/pattern"),
    ({"anyOf": [{"type": "string"}], "type": "string"}, "'anyOf' at /anyOf"),
    ({"type": "array", "items": {"type": "integer"}}, "no `maxItems`"),
    ({"type": ["string", "integer"]}, "type union"),
    ({"type": "object", "properties": {"a/b": {"type": "date"}}}, "not valid JSON Schema at /properties/a~1b/type"),
    ({"type": "string", "maxLength": "ten"}, "not valid JSON Schema"),
    ({"type": "object", "properties": {}, "required": ["x"]}, "not in `properties`"),
    ({"properties": {"a": {}}}, "accepts anything"),
    ({"enum": ["a", 1]}, "mixes types"),
])
def test_unsupported_schemas_name_the_keyword_and_its_path(stdlib_tokenizer, schema, expected):
    with pytest.raises(UnsupportedSchemaError, match=expected):
        Scaffold(schema, stdlib_tokenizer)


def _nested(schema, levels, **array):
    for _ in range(levels):
        schema = {"type": "array", "items": schema, **array} if array else \
            {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize("schema, expected", [
    # issue 30: these built (or tried to build) the whole scaffold before any check: 60 s and 1 GB, growing
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 1_000_000_000}, "more than 512 values"),
    (_nested({"type": "integer"}, 4, maxItems=100), "nested arrays multiply"),
    # a RecursionError from the cycle check, jsonschema and the tree builder
    (_nested({"type": "integer"}, 5000), "nests deeper than 100 levels"),
    (_nested({"type": "integer"}, 5000, maxItems=1), "nests deeper than 100 levels"),
])
def test_schema_bounds_are_checked_before_the_scaffold_is_built(model, stdlib_tokenizer, schema, expected):
    import time

    started = time.perf_counter()
    with pytest.raises(UnsupportedSchemaError, match=expected):
        generate_json(model, stdlib_tokenizer, "x", schema)
    with pytest.raises(UnsupportedSchemaError, match=expected.replace("512", "4096")):
        Scaffold(schema, stdlib_tokenizer)  # no model, no context: the fixed bound
    assert time.perf_counter() - started < 5


# --- reading a slot back --------------------------------------------------------------------------------

def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_string_slot_ends_at_the_closing_quote_or_eos(stdlib_tokenizer):
    scaffold = Scaffold({"type": "string"}, stdlib_tokenizer)
    slot = scaffold.slots[0]
    reading = read_slot(scaffold, slot, _ids(stdlib_tokenizer, 'parse_args", "args": ['))
    assert (reading.value, reading.terminated) == ("parse_args", True)
    assert stdlib_tokenizer.decode(reading.ids) == "parse_args"
    eos = stdlib_tokenizer.eos_token_id
    reading = read_slot(scaffold, slot, _ids(stdlib_tokenizer, "abc") + [eos, *_ids(stdlib_tokenizer, "zzz")])
    assert (reading.value, reading.terminated) == ("abc", True)
    reading = read_slot(scaffold, slot, _ids(stdlib_tokenizer, r'say \"hi\" \\ now" tail'))
    assert reading.value == 'say "hi" \\ now'
    reading = read_slot(scaffold, slot, _ids(stdlib_tokenizer, "no end here"))
    assert not reading.terminated


def test_number_slots_parse_by_type(stdlib_tokenizer):
    integer = Scaffold({"type": "integer"}, stdlib_tokenizer)
    number = Scaffold({"type": "number"}, stdlib_tokenizer)
    assert read_slot(integer, integer.slots[0], _ids(stdlib_tokenizer, ' 42, "x"')).value == 42
    assert read_slot(integer, integer.slots[0], _ids(stdlib_tokenizer, " -7}")).value == -7
    assert read_slot(integer, integer.slots[0], _ids(stdlib_tokenizer, " 4.5")).error
    assert read_slot(integer, integer.slots[0], _ids(stdlib_tokenizer, " x")).error
    assert read_slot(integer, integer.slots[0], _ids(stdlib_tokenizer, " 007")).error  # JSON has no leading zeros
    assert read_slot(number, number.slots[0], _ids(stdlib_tokenizer, " 4.5e3]")).value == 4500.0
    assert read_slot(number, number.slots[0], _ids(stdlib_tokenizer, " 1.")).error


def test_choice_slot_matches_an_option_or_reports(stdlib_tokenizer):
    scaffold = Scaffold({"type": "boolean"}, stdlib_tokenizer)
    slot = scaffold.slots[0]
    assert read_slot(scaffold, slot, slot.option_ids[1]).value is False
    assert read_slot(scaffold, slot, slot.option_ids[0]).value is True
    mixed = [slot.option_ids[0][0]] + slot.option_ids[1][1:]
    if mixed not in slot.option_ids:
        assert read_slot(scaffold, slot, mixed).error


def test_assemble_drops_empty_optional_values_and_flags_bad_ones(stdlib_tokenizer):
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"},
                                               "c": {"type": ["integer", "null"]},
                                               "d": {"type": "integer", "minimum": 10}},
              "required": ["a", "c", "d"]}
    scaffold = Scaffold(schema, stdlib_tokenizer)
    a, b, c, d = scaffold.slots
    eos = [stdlib_tokenizer.eos_token_id]
    readings = {a: read_slot(scaffold, a, eos), b: read_slot(scaffold, b, eos), c: read_slot(scaffold, c, eos),
                d: read_slot(scaffold, d, _ids(stdlib_tokenizer, " 3"))}
    bad, repairs = {}, []
    value = assemble(scaffold.root, readings, bad, repairs)
    assert value == {"a": "", "c": None, "d": 3}  # b optional and empty: absent; c nullable: null
    assert list(bad) == [d] and "minimum" in bad[d]
    assert assemble(scaffold.root.properties[1][1], readings, {}, [], optional=True) is ABSENT


def test_choice_constraints_follow_the_revealed_tokens(stdlib_tokenizer):
    mask = stdlib_tokenizer.mask_token_id
    options = [[5, 6, 7], [5, 8, 9], [10, 11, 12]]
    canvas = torch.tensor([[1, mask, mask, mask]])
    constraints = SlotConstraints(canvas, mask)
    constraints.add_choice([1, 2, 3], options)
    logits = torch.zeros(1, 4, 20)
    constraints.apply(logits, canvas, None)
    assert set(torch.isfinite(logits[0, 1]).nonzero().flatten().tolist()) == {5, 10}
    after = torch.tensor([[1, 10, mask, mask]])
    logits = torch.zeros(1, 4, 20)
    constraints.apply(logits, after, None)
    assert torch.isfinite(logits[0, 2]).nonzero().flatten().tolist() == [11]
    assert torch.isfinite(logits[0, 3]).nonzero().flatten().tolist() == [12]


# --- generate_json end to end ---------------------------------------------------------------------------

def _check(out, schema):
    assert out.valid
    jsonschema.validate(out.value, schema)
    assert json.loads(out.text) == out.value


def test_generate_json_is_valid_and_needs_fewer_calls_than_plain_generation(model, stdlib_tokenizer):
    out = generate_json(model, stdlib_tokenizer, "def f(x):\n    return x\n", SIGNATURE_SCHEMA, slot_tokens=8)
    _check(out, SIGNATURE_SCHEMA)
    # One token per step: plain generation of the same skeleton length needs one call per token.
    assert out.nfe <= out.masked_tokens < out.canvas_tokens
    assert set(out.value) == set(SIGNATURE_SCHEMA["properties"])


SAMPLER_CONFIGS = [
    DecodeConfig(sampler="confidence", temperature=0.0),
    DecodeConfig(sampler="confidence", remasking="random", seed=1),
    DecodeConfig(sampler="confidence", remasking="margin", block_length=8, seed=1),
    DecodeConfig(sampler="confidence", block_length=8, approximate_prefix_cache=True, seed=1),
    DecodeConfig(sampler="confidence", remasking="entropy", schedule="cosine", steps=8, seed=1),
    DecodeConfig(sampler="confidence", remasking="threshold", threshold=0.5, seed=1),
    DecodeConfig(sampler="confidence", remasking="rcr", steps=8, seed=1),
    DecodeConfig(sampler="confidence", schedule="ascending", eoser=True, seed=1),
    DecodeConfig(sampler="ancestral", steps=16, seed=1),
    DecodeConfig(sampler="first-hitting", seed=1),
    DecodeConfig(sampler="assd", seed=1),
]


@pytest.mark.parametrize("config", SAMPLER_CONFIGS, ids=lambda c: f"{c.sampler}-{c.remasking}-{c.schedule}")
def test_generate_json_composes_with_every_sampler(model, stdlib_tokenizer, config):
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 6}, "count": {"type": "integer"},
        "flag": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
        "required": ["name", "count", "flag", "color", "tags"]}
    out = generate_json(model, stdlib_tokenizer, "x = 1\n", schema, config, slot_tokens=4, strict=False)
    if out.valid:
        _check(out, schema)
    else:
        assert out.value is None and out.errors
    # Number and choice slots are constrained to valid tokens: a random model fills them validly.
    assert out.valid, out.errors


def test_fixed_tokens_are_kept_and_block_causal_models_work(stdlib_tokenizer):
    torch.manual_seed(1)
    block_model = MDLMForMaskedLM(tiny_config(stdlib_tokenizer, attention="block-causal", block_size=8,
                                              max_position_embeddings=512)).eval()
    # Steer the model to write the letter "a" everywhere it may write: any fixed token (a key, a quote, a
    # brace) the decoder failed to keep would turn into "a" and change the keys or break the JSON.
    handle = _steer(block_model, _ids(stdlib_tokenizer, "a")[0])
    try:
        out = generate_json(block_model, stdlib_tokenizer, "y = 2\n", OBJECT, DecodeConfig(temperature=0.0),
                            slot_tokens=4)
    finally:
        handle.remove()
    _check(out, OBJECT)
    assert out.repairs == []
    assert list(out.value) in (["name", "n"], ["name", "n", "ok"])  # the scaffold's keys, in its order
    assert out.value["name"] and set(out.value["name"]) == {"a"}  # the value slot took the steered token


def _steer(model, token_id, bonus=50.0):
    """A forward hook that makes the real model strongly prefer one token (to drive slot behaviour)."""
    def hook(_module, _args, output):
        output.logits[..., token_id] += bonus
        return output
    return model.register_forward_hook(hook)


def test_a_slot_that_never_ends_grows_then_is_truncated(model, stdlib_tokenizer):
    letter = _ids(stdlib_tokenizer, "a")[0]
    handle = _steer(model, letter)
    try:
        out = generate_json(model, stdlib_tokenizer, "", {"type": "string", "maxLength": 10}, slot_tokens=3)
    finally:
        handle.remove()
    assert out.rounds == 4  # 3 -> 6 -> 9 -> 10 tokens
    assert out.value == "a" * 10 and out.repairs == []
    assert out.masked_tokens == 3 + 3 + 3 + 1


def test_eos_ends_slots_and_optional_values_are_left_out(model, stdlib_tokenizer):
    handle = _steer(model, stdlib_tokenizer.eos_token_id)
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"},
                                               "c": {"type": "integer"}}, "required": ["a"]}
    try:
        out = generate_json(model, stdlib_tokenizer, "", schema)
    finally:
        handle.remove()
    assert out.value == {"a": ""}


def test_content_that_cannot_fit_is_reported_never_returned_as_valid(model, stdlib_tokenizer):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 10 ** 30}}, "required": ["n"]}
    with pytest.raises(SchemaFitError, match=r"/properties/n: .*after 2 re-masks") as caught:
        generate_json(model, stdlib_tokenizer, "", schema, max_retries=2)
    assert caught.value.result.valid is False and caught.value.result.retries == {"/properties/n": 2}
    out = generate_json(model, stdlib_tokenizer, "", schema, max_retries=1, strict=False)
    assert (out.valid, out.value) == (False, None) and out.errors


def test_context_overflow_is_a_clear_error(stdlib_tokenizer):
    small = MDLMForMaskedLM(tiny_config(stdlib_tokenizer)).eval()  # 64 positions
    schema = {"type": "array", "items": {"type": "string"}, "maxItems": 8}
    with pytest.raises(ValueError, match="exceed the model's context"):
        generate_json(small, stdlib_tokenizer, "x", schema)


def test_slots_that_grow_past_the_context_do_not_fit(stdlib_tokenizer):
    """The first canvas fits, then a string slot that never ends grows beyond the context: that is
    content that cannot be fitted (SchemaFitError with the partial result), not a bad input."""
    torch.manual_seed(0)
    small = MDLMForMaskedLM(tiny_config(stdlib_tokenizer)).eval()  # 64 positions
    handle = _steer(small, _ids(stdlib_tokenizer, "a")[0])
    try:
        with pytest.raises(SchemaFitError, match=r"grew until prompt .* exceed the model's context of 64"):
            generate_json(small, stdlib_tokenizer, "x", {"type": "string", "maxLength": 200}, slot_tokens=24)
    finally:
        handle.remove()


# --- property-based: random schemas of the supported subset --------------------------------------------

WORDS = ["red", "green", "blue", "alpha", "beta"]
scalars = st.one_of(
    st.just({"type": "string"}),
    st.integers(1, 12).map(lambda n: {"type": "string", "maxLength": n}),
    st.just({"type": "integer"}),
    st.just({"type": "integer", "minimum": 0}),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.just({"type": ["string", "null"]}),
    st.just({"type": ["integer", "null"]}),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=4, unique=True).map(lambda v: {"enum": v}),
    st.sampled_from([{"const": "fixed"}, {"enum": [1, 2, 3]}]),
)


def _object(children):
    return st.dictionaries(st.sampled_from(["a", "b", "key", "x y", "n"]), children, max_size=3).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda required: {"type": "object", "properties": props, "required": required})
        if props else st.just({"type": "object", "properties": {}}))


def _array(children):
    return st.tuples(children, st.integers(0, 3), st.integers(0, 2)).map(
        lambda t: {"type": "array", "items": t[0], "maxItems": t[1], "minItems": min(t[1], t[2])})


schemas = st.recursive(scalars, lambda children: st.one_of(_object(children), _array(children)), max_leaves=5)


HYPOTHESIS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
RANDOM_CASES = dict(schema=schemas, sampler=st.sampled_from(["confidence", "first-hitting", "ancestral"]),
                    seed=st.integers(0, 3))


@settings(max_examples=25, **HYPOTHESIS)
@given(**RANDOM_CASES)
def test_random_schemas_always_give_valid_json_or_a_clear_failure(model, stdlib_tokenizer, schema, sampler, seed):
    _valid_or_clear_failure(model, stdlib_tokenizer, schema, sampler, seed)


@pytest.mark.slow
@settings(max_examples=400, **HYPOTHESIS)
@given(**RANDOM_CASES)
def test_many_random_schemas_always_give_valid_json_or_a_clear_failure(model, stdlib_tokenizer, schema, sampler,
                                                                       seed):
    _valid_or_clear_failure(model, stdlib_tokenizer, schema, sampler, seed)


def _valid_or_clear_failure(model, stdlib_tokenizer, schema, sampler, seed):
    config = DecodeConfig(sampler=sampler, seed=seed, steps=8 if sampler == "ancestral" else None)
    try:
        out = generate_json(model, stdlib_tokenizer, "data:", schema, config, slot_tokens=3, tokens_per_step=2
                            if sampler == "confidence" else None)
    except SchemaFitError as error:
        assert error.result.valid is False and error.result.value is None and error.result.errors
        return
    _check(out, schema)


# --- the command line -----------------------------------------------------------------------------------

def test_mdlm_generate_schema_end_to_end(tmp_path, tiny_run_dir, capsys):
    from mdlm.decode.cli import main

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok", "n"]}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    assert main(["--model", str(tiny_run_dir), "--prompt", "x =", "--schema", str(tmp_path / "s.json"),
                 "--format", "jsonl", "--temperature", "0"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["valid"] and record["nfe"] >= 1
    jsonschema.validate(json.loads(record["completion"]), schema)
    (tmp_path / "bad.json").write_text(json.dumps({"type": "string", "format": "date"}))
    assert main(["--model", str(tiny_run_dir), "--prompt", "x", "--schema", str(tmp_path / "bad.json")]) == 2
    assert "unsupported keyword 'format' at /format" in capsys.readouterr().err


def test_schema_benchmark_measures_both_methods_on_the_same_examples(model, stdlib_tokenizer):
    from mdlm.eval.bench.schema import evaluate, markdown_table
    from mdlm.train.tasks.signatures import examples_from_source

    examples = examples_from_source("def add(a, b):\n    return a + b\n\ndef nop():\n    pass\n")
    summary = evaluate(model, stdlib_tokenizer, examples, ["plain", "s3"], tokens_per_step=4, slot_tokens=4)
    assert summary["s3"]["examples"] == summary["plain"]["examples"] == 2
    assert summary["s3"]["structural_adherence"] == 1.0  # the random model's S3 output always validates
    assert summary["s3"]["nfe"] < summary["plain"]["nfe"]
    results = dict(run="tiny", sft_steps=0, num_examples=2, methods=["plain", "s3"], budgets={"4": summary})
    table = markdown_table(results)
    assert "| 4 | s3 | 100.0% |" in table and table.count("\n") == 6


def test_retries_decode_hotter_so_a_greedy_decoder_does_not_repeat_itself(model, stdlib_tokenizer):
    nine = _ids(stdlib_tokenizer, "9")[0]
    schema = {"type": "integer", "maximum": 999_998}  # greedy writes 999999
    handle = _steer(model, nine, bonus=1.0)  # greedy decoding always writes 9s; sampling sometimes does not
    try:
        out = generate_json(model, stdlib_tokenizer, "", schema, DecodeConfig(temperature=0.0, seed=0),
                            max_retries=8, tokens_per_step=2, strict=False)
    finally:
        handle.remove()
    assert out.retries and out.valid and out.value <= 999_998


def test_generate_json_and_its_errors_are_exported_from_mdlm_decode():
    import mdlm.decode
    from mdlm.decode import SchemaFitError, UnsupportedSchemaError, generate_json
    from mdlm.decode import schema as schema_module

    assert generate_json is schema_module.generate_json and SchemaFitError is schema_module.SchemaFitError
    assert UnsupportedSchemaError is schema_module.UnsupportedSchemaError
    assert {"generate_json", "SchemaFitError"} <= set(mdlm.decode.__all__)


# --- grammar automata for number slots (issue 13) ------------------------------------------------------

def test_number_automaton_accepts_exactly_json_numbers_brute_force():
    """The character DFA against the JSON grammar's regular expression on every string of up to 4
    characters over the number alphabet (plus a leading space)."""
    import itertools
    import re

    from mdlm.decode.schema.constraints import NUMBER_ACCEPTING, START, _number_step

    grammar = {"integer": re.compile(r" ?-?(0|[1-9]\d*)"), "number": re.compile(r" ?-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")}
    alphabet = "01.eE+- 9"
    for kind, pattern in grammar.items():
        for n in range(1, 5):
            for chars in itertools.product(alphabet, repeat=n):
                text, state = "".join(chars), START
                for ch in text:
                    state = _number_step(state, ch, kind) if state >= 0 else -1
                assert (state in NUMBER_ACCEPTING) == bool(pattern.fullmatch(text)), (kind, text)


def test_number_automaton_constrains_positions_given_both_neighbours(stdlib_tokenizer):
    """Out-of-order reveal: with a '0' fixed at the slot's second position the first may be a space, '-' or a
    non-zero digit (10 is fine, 00 is not), and with a '-' fixed at the end nothing can complete."""
    from mdlm.decode.schema.constraints import number_automaton

    tok = stdlib_tokenizer
    mask, eos = tok.mask_token_id, tok.eos_token_id
    zero = tok.convert_tokens_to_ids("0")
    automaton = number_automaton(tok, "integer", len(tok), [0, 1, 2], may_be_empty=False)
    allowed = automaton.allowed(torch.tensor([mask, zero, mask]), mask)
    first = {tok.decode([t]) for t in allowed[0].nonzero()[:, 0].tolist()}
    assert {" ", "-", "1", "9"} <= first and not {"0", " 0", "-0", "00"} & first
    after_zero = automaton.allowed(torch.tensor([zero, mask, mask]), mask)
    assert {int(t) for t in after_zero[1].nonzero()[:, 0]} == {eos}  # a leading '0' is the whole integer
    dash = tok.convert_tokens_to_ids("-")
    assert not any(v.any() for v in automaton.allowed(torch.tensor([mask, mask, dash]), mask).values())


TWELVE_SCHEMAS = [
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
    {"type": "null"},
    {"enum": ["red", "green", "blue"]},
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"}}, "required": ["a", "b"]},
    {"type": "object", "properties": {"n": {"type": ["integer", "null"]}, "x": {"type": "number"}},
     "required": ["x"]},
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    {"type": "object", "properties": {"flag": {"type": "boolean"}, "k": {"enum": [1, 20, 300]},
                                      "z": {"type": "null"}}, "required": ["flag", "k", "z"]},
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"},
                                                                "w": {"type": "number"}},
                                "required": ["id", "w"]}, "maxItems": 2},
    {"type": "object", "properties": {"outer": {"type": "object", "properties": {
        "v": {"type": "number"}, "s": {"type": "string", "maxLength": 6}, "e": {"enum": ["x", "yy", "zzz"]}},
        "required": ["v", "s", "e"]}}, "required": ["outer"]},
]


@pytest.mark.parametrize("seed", [0] + [pytest.param(s, marks=pytest.mark.slow) for s in (1, 2, 3)])
def test_a_random_model_yields_schema_valid_json_on_twelve_schemas(model, stdlib_tokenizer, seed):
    """A randomly initialised tiny model (no training) fills every slot; with the grammar automata every
    result is jsonschema-valid JSON (integers without leading zeros, numbers with valid fractions and
    exponents, strings escaped) at temperature 1, without a SchemaFitError."""
    from mdlm.decode import generate_json

    for index, schema in enumerate(TWELVE_SCHEMAS):
        out = generate_json(model, stdlib_tokenizer, "{", schema, DecodeConfig(temperature=1.0, seed=seed),
                            slot_tokens=6)
        assert out.valid, (index, out.errors)
        value = json.loads(out.text)
        jsonschema.validate(value, schema)
        assert value == out.value


def test_a_self_referencing_schema_and_a_zero_step_budget_get_clear_errors(tiny_model, stdlib_tokenizer):
    from mdlm.decode import UnsupportedSchemaError, generate_json

    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    schema["properties"]["child"] = schema  # a Python dict that contains itself (RecursionError before)
    with pytest.raises(UnsupportedSchemaError, match="refers to itself at /properties/child"):
        generate_json(tiny_model, stdlib_tokenizer, "x", schema)
    flat = {"type": "object", "properties": {"n": {"type": "integer"}}}
    for bad in (0, -1, 1.5):  # 0 was a ZeroDivisionError
        with pytest.raises(ValueError, match="tokens_per_step must be a positive integer"):
            generate_json(tiny_model, stdlib_tokenizer, "x", flat, tokens_per_step=bad)
