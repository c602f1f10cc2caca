"""A real structured-output task: read a Python function, answer its signature as JSON.

Examples come from the corpus's own split of the standard library (`mdlm.data.stdlib_files`): the
`train` split for finetuning, the held-out `test` split for evaluation, so no evaluated function was
seen in training. Each example's prompt is one function's source (decorators and original indentation
kept) followed by a fixed cue, and its answer is a JSON object under `SIGNATURE_SCHEMA`:

    name           the function's name
    args           argument names in signature order (positional-only, positional, *args, keyword-only,
                   **kwargs), without stars
    has_docstring  whether the body starts with a docstring
    num_returns    `return` statements in the function's own scope (nested functions/classes excluded)
    is_method      defined directly in a class body
    is_generator   contains `yield` / `yield from` in its own scope

Only module-level functions and methods are used (not functions nested in functions or in `if` blocks),
so every field can be read off the prompt: a method is exactly an indented `def`. Everything is
deterministic: files in sorted order, functions in source order.

`signature_reward` is a TRL-style reward (`fn(prompts, completions, completion_ids, **columns) -> list[float]`): the
fraction of the six fields that match exactly, 0 for a completion that is not a JSON object.
"""

from __future__ import annotations

import ast
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mdlm.data import read_text, stdlib_files, stdlib_root

MAX_ARGS = 6
NAME_MAX_LENGTH = 48
FIELDS = ("name", "args", "has_docstring", "num_returns", "is_method", "is_generator")
PROMPT_CUE = "\n# signature as JSON:\n"

SIGNATURE_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": NAME_MAX_LENGTH},
        "args": {"type": "array", "items": {"type": "string", "maxLength": NAME_MAX_LENGTH}, "maxItems": MAX_ARGS},
        "has_docstring": {"type": "boolean"},
        "num_returns": {"type": "integer", "minimum": 0},
        "is_method": {"type": "boolean"},
        "is_generator": {"type": "boolean"},
    },
    "required": list(FIELDS),
    "additionalProperties": False,
}


@dataclass
class SignatureExample:
    prompt: str  # the function's source followed by PROMPT_CUE
    response: str  # the answer as compact JSON text (json.dumps with default separators)
    answer: dict
    source: str  # "relative/path.py:lineno"


def _own_scope_nodes(function: ast.AST):
    """Every node of the function's body, not descending into nested functions, lambdas or classes."""
    nested_scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    stack = [node for node in function.body if not isinstance(node, nested_scopes)]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not isinstance(child, nested_scopes))


def signature_of(function: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> dict:
    """The answer for one function node, field by field as the module docstring defines them."""
    a = function.args
    names = [arg.arg for arg in a.posonlyargs + a.args]
    if a.vararg:
        names.append(a.vararg.arg)
    names += [arg.arg for arg in a.kwonlyargs]
    if a.kwarg:
        names.append(a.kwarg.arg)
    own = list(_own_scope_nodes(function))
    return {
        "name": function.name,
        "args": names,
        "has_docstring": ast.get_docstring(function, clean=False) is not None,
        "num_returns": sum(isinstance(node, ast.Return) for node in own),
        "is_method": is_method,
        "is_generator": any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in own),
    }


def _functions_with_context(body: list[ast.stmt], in_class: bool):
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, in_class
        elif isinstance(node, ast.ClassDef):
            yield from _functions_with_context(node.body, in_class=True)


def function_source(lines: list[str], function: ast.AST) -> str:
    """The function's lines from its first decorator to its end, indentation kept."""
    first = min([function.lineno] + [d.lineno for d in function.decorator_list])
    return "".join(lines[first - 1 : function.end_lineno]).rstrip() + "\n"


def examples_from_source(text: str, origin: str = "<string>") -> list[SignatureExample]:
    """Every module-level function and method of one source text, in source order."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []  # a few stdlib files are test data in other syntaxes
    lines = text.splitlines(keepends=True)
    out = []
    for function, in_class in _functions_with_context(tree.body, in_class=False):
        answer = signature_of(function, in_class)
        if len(answer["args"]) > MAX_ARGS or len(answer["name"]) > NAME_MAX_LENGTH:
            continue
        if any(len(name) > NAME_MAX_LENGTH for name in answer["args"]):
            continue
        out.append(SignatureExample(prompt=function_source(lines, function) + PROMPT_CUE,
                                    response=json.dumps(answer), answer=answer,
                                    source=f"{origin}:{function.lineno}"))
    return out


def build_examples(split: str, tokenizer=None, max_tokens: int | None = None, limit: int | None = None,
                   files: list[Path] | None = None) -> list[SignatureExample]:
    """The examples of a corpus split, deterministic.

    With `tokenizer` and `max_tokens`, only examples whose prompt + response + one EOS fit `max_tokens`
    tokens are kept (the model's context). `limit` keeps the first `limit` examples after filtering.
    """
    if (tokenizer is None) != (max_tokens is None):
        raise ValueError("pass both tokenizer and max_tokens to filter by length, or neither")
    root = stdlib_root()
    out: list[SignatureExample] = []
    for path in files if files is not None else stdlib_files(split):
        candidates = examples_from_source(read_text(path), path.relative_to(root).as_posix())
        if tokenizer is not None and candidates:
            lengths = [len(ids) for ids in tokenizer([c.prompt + c.response for c in candidates],
                                                     add_special_tokens=False)["input_ids"]]
            candidates = [c for c, n in zip(candidates, lengths) if n + 1 <= max_tokens]
        out.extend(candidates)
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def write_jsonl(examples: list[SignatureExample], path: str | Path) -> Path:
    """One JSON object per line with `prompt`, `response`, `answer`, `source` columns (for `train/sft.py`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for example in examples:
            f.write(json.dumps(asdict(example)) + "\n")
    return path


def _completion_text(completion) -> str:
    if isinstance(completion, list):  # conversational format: the last message's content
        return completion[-1]["content"] if completion else ""
    return completion


def field_matches(predicted, answer: dict) -> dict[str, bool]:
    """Exact match of each field; everything False for a prediction that is not a JSON object."""
    if not isinstance(predicted, dict):
        return {field: False for field in FIELDS}
    return {field: field in predicted and predicted[field] == answer[field]
            and type(predicted[field]) is type(answer[field]) for field in FIELDS}


def parse_completion(text: str):
    """The JSON value of a completion, or None when it does not parse."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None


def signature_reward(prompts, completions, completion_ids=None, answer=None, **kwargs) -> list[float]:
    """Field-level exact match in [0, 1] per completion (TRL reward signature).

    `answer` is the dataset column of reference answers (dicts, or JSON text)."""
    if answer is None:
        raise ValueError("signature_reward needs the `answer` column (the reference JSON of each prompt)")
    rewards = []
    for completion, reference in zip(completions, answer):
        reference = json.loads(reference) if isinstance(reference, str) else reference
        matches = field_matches(parse_completion(_completion_text(completion)), reference)
        rewards.append(sum(matches.values()) / len(FIELDS))
    return rewards


def signature_accuracy(completions, answer) -> list[float]:
    """Exact match of the whole JSON answer."""
    return [float(r == 1.0) for r in signature_reward(None, completions, answer=answer)]


def build_dataset(split: str, num_examples: int | None = None, seed: int = 0):
    """A `datasets.Dataset` (columns prompt, answer as JSON text, source) of the corpus's train split or
    its held-out test split (`split="test"`). Deterministic: `seed` is accepted for the task registry's
    signature; the examples come in corpus order."""
    import datasets

    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    examples = build_examples(split, limit=num_examples)
    return datasets.Dataset.from_dict({"prompt": [e.prompt for e in examples],
                                       "answer": [e.response for e in examples],
                                       "source": [e.source for e in examples]})
