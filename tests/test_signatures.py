"""The signatures task: answers on hand-written functions, determinism and length filtering on the corpus,
the TRL-style reward, and that every answer validates against the task's schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from mdlm.data import stdlib_files
from mdlm.decode.schema import Scaffold
from mdlm.train.tasks.signatures import (FIELDS, PROMPT_CUE, SIGNATURE_SCHEMA, build_examples, examples_from_source,
                                         signature_reward)

SOURCE = '''
import functools

def plain(a, b=1, *args, c, d=2, **kw):
    """Docstring."""
    def nested():
        return 1
    if a:
        return a
    return b

async def agen(x, /, y):
    yield x
    yield from y

class Box:
    @functools.cache
    def method(self):
        lambda: 3
        return [i for i in range(3)]

    @staticmethod
    def helper():
        pass

    class Inner:
        def deep(self, z):
            "one-line docstring"
            return z

if True:
    def conditional():
        return 0

def many(a, b, c, d, e, f, g):
    return 0
'''


def test_answers_on_hand_written_functions():
    examples = {e.answer["name"]: e for e in examples_from_source(SOURCE, "demo.py")}
    assert list(examples) == ["plain", "agen", "method", "helper", "deep"]  # nested/conditional/7-arg skipped
    assert examples["plain"].answer == {"name": "plain", "args": ["a", "b", "args", "c", "d", "kw"],
                                        "has_docstring": True, "num_returns": 2, "is_method": False,
                                        "is_generator": False}
    assert examples["agen"].answer == {"name": "agen", "args": ["x", "y"], "has_docstring": False,
                                       "num_returns": 0, "is_method": False, "is_generator": True}
    assert examples["method"].answer == {"name": "method", "args": ["self"], "has_docstring": False,
                                         "num_returns": 1, "is_method": True, "is_generator": False}
    assert examples["helper"].answer["args"] == [] and examples["helper"].answer["is_method"]
    assert examples["deep"].answer["has_docstring"] and examples["deep"].answer["is_method"]


def test_prompt_is_the_source_with_decorators_and_indentation():
    method = next(e for e in examples_from_source(SOURCE) if e.answer["name"] == "method")
    assert method.prompt == "    @functools.cache\n    def method(self):\n        lambda: 3\n" \
                            "        return [i for i in range(3)]\n" + PROMPT_CUE
    assert json.loads(method.response) == method.answer
    assert method.source == "<string>:18"


def test_answers_validate_against_the_schema_and_fit_a_scaffold(stdlib_tokenizer):
    for example in examples_from_source(SOURCE):
        jsonschema.validate(example.answer, SIGNATURE_SCHEMA)
        assert list(example.answer) == list(FIELDS)
    Scaffold(SIGNATURE_SCHEMA, stdlib_tokenizer)  # the task's schema is inside the supported subset


def test_corpus_examples_are_deterministic_and_length_filtered(stdlib_tokenizer):
    files = stdlib_files("test")[:6]
    first = build_examples("test", files=files)
    again = build_examples("test", files=files)
    assert first and [e.prompt for e in first] == [e.prompt for e in again]
    short = build_examples("test", stdlib_tokenizer, 128, files=files)
    assert 0 < len(short) < len(first)
    for example in short:
        assert len(stdlib_tokenizer(example.prompt + example.response)["input_ids"]) + 1 <= 128
    assert build_examples("test", stdlib_tokenizer, 128, files=files, limit=3) == short[:3]
    with pytest.raises(ValueError, match="both tokenizer and max_tokens"):
        build_examples("test", stdlib_tokenizer)


def test_reward_is_field_level_exact_match():
    answer = {"name": "f", "args": ["x"], "has_docstring": False, "num_returns": 1, "is_method": False,
              "is_generator": False}
    perfect = json.dumps(answer)
    three_wrong = json.dumps({**answer, "name": "g", "args": [], "num_returns": True})
    rewards = signature_reward(["p"] * 4, [perfect, three_wrong, "not json", [{"role": "assistant",
                                                                             "content": perfect}]],
                               answer=[answer, json.dumps(answer), answer, answer])
    assert rewards == [1.0, 0.5, 0.0, 1.0]  # `True` is not the integer 1 here
    with pytest.raises(ValueError, match="answer"):
        signature_reward(["p"], [perfect])
