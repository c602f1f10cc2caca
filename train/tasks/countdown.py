"""Countdown, generated offline: reach a target with + - * / using each given number exactly once.

An instance is 3 numbers from 1-9 (`max_number`; 4 numbers with `num_numbers=4`) and a target in
1-100: the value of a random expression over the numbers in the order they are listed (random bracketing, operators drawn from
`operations`, exact rational arithmetic, so 7/2*2 is 7; redrawn until the value is an integer in range).
The reference answer is that expression with only the parentheses it needs: a canonical form (numbers
in prompt order, left to right), so SFT learns to copy the numbers and choose the operators, instead of
matching an arbitrary one of many solutions. Any other expression that hits the target scores the same.
The train and held-out splits are split by the number multiset (a seeded permutation of all
multisets), so no held-out set of numbers is ever seen in training.

    prompt   "countdown 15 from 8 3 3\nexpression "
    answer   "(8-3)*3"

The target comes first and the numbers last, right before the answer, so that (with one-digit numbers)
each number sits the same distance before its place in a parenthesis-free answer: a model can copy it
by relative position, as the sudoku model copies its givens.

Reward (TRL signature): 1 for a valid expression that uses each number exactly once and equals the
target, 0.1 for a well-formed expression that does not, 0 for anything that does not parse (or is not a
string). The parser is a small operator-precedence one over integers, + - * / and parentheses (never
`eval`, no recursion).
`reachable_targets` enumerates every target of a multiset (any order) by brute force.
"""

from __future__ import annotations

import itertools
import random
import re
from fractions import Fraction
from functools import lru_cache

MAX_NUMBER = 9
OPERATIONS = "+-*/"
MAX_TARGET = 100
HELD_OUT_FRACTION = 0.15
WELL_FORMED_REWARD = 0.1


# ----------------------------------------------------------------------------------------------------
# The safe parser: expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
# factor := integer | '(' expr ')'. Total over any input: no recursion (5,000 nested parentheses are one
# loop, not 5,000 stack frames), ASCII digits only (str.isdigit and \d accept Arabic-Indic and other digits,
# which int() would then read), at most MAX_TOKENS tokens and 6-digit numbers, so every answer is parsed
# in well under a millisecond per token and a bad one scores 0.
# ----------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:([0-9]+)|(.))", re.DOTALL)
MAX_TOKENS = 256  # a countdown answer over 4 numbers has about 15
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


class ParseError(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    out = []
    for number, other in _TOKEN.findall(text.strip()):
        if number:
            out.append(number)
        elif other in "+-*/()":
            out.append(other)
        elif other.strip():
            raise ParseError(f"unexpected character {other!r}")
        if len(out) > MAX_TOKENS:
            raise ParseError(f"longer than {MAX_TOKENS} tokens")
    return out


def _apply(values: list[Fraction], op: str) -> None:
    right, left = values.pop(), values.pop()
    if op == "/" and right == 0:
        raise ParseError("division by zero")
    values.append(left + right if op == "+" else left - right if op == "-" else left * right if op == "*"
                  else left / right)


def evaluate(text: str) -> tuple[Fraction, list[int]]:
    """(exact value, the integers used in order) of an arithmetic expression; ParseError if it is not
    one (including division by zero, numbers longer than 6 digits and more than MAX_TOKENS tokens).

    Operator precedence parsing with two stacks (Dijkstra's shunting yard), left-associative, evaluated
    as it goes: the grammar above without recursion. `expect_value` alternates: a number or '(' where a
    value must come, an operator or ')' after one."""
    tokens = _tokens(text)
    if not tokens:
        raise ParseError("empty expression")
    values: list[Fraction] = []
    operators: list[str] = []
    numbers: list[int] = []
    expect_value = True
    for token in tokens:
        if expect_value:
            if token == "(":
                operators.append(token)
            elif token.isdigit():
                if len(token) > 6:
                    raise ParseError("number too long")
                numbers.append(int(token))
                values.append(Fraction(int(token)))
                expect_value = False
            else:
                raise ParseError(f"unexpected {token!r}")
        elif token == ")":
            while operators and operators[-1] != "(":
                _apply(values, operators.pop())
            if not operators:
                raise ParseError("unexpected ')' after the expression")
            operators.pop()
        elif token in PRECEDENCE:
            while operators and operators[-1] != "(" and PRECEDENCE[operators[-1]] >= PRECEDENCE[token]:
                _apply(values, operators.pop())
            operators.append(token)
            expect_value = True
        else:
            raise ParseError(f"unexpected {token!r} after the expression")
    if expect_value:
        raise ParseError("the expression ends early")
    while operators:
        if operators[-1] == "(":
            raise ParseError("missing ')'")
        _apply(values, operators.pop())
    return values[0], numbers


# ----------------------------------------------------------------------------------------------------
# Instances
# ----------------------------------------------------------------------------------------------------

def _join(op: str, a: tuple[Fraction, str, bool], b: tuple[Fraction, str, bool]):
    """(value, text, is_sum) of `a op b`, or None for a division by zero. `is_sum` marks a top-level + or -:
    such a side needs parentheses under * and /, and on the right of - (so the text has no more
    parentheses than it needs and reads back to the same value)."""
    (va, ta, sa), (vb, tb, sb) = a, b
    wrap = lambda t, s: f"({t})" if s else t  # noqa: E731
    if op == "+":
        return va + vb, f"{ta}+{tb}", True
    if op == "-":
        return va - vb, f"{ta}-{wrap(tb, sb)}", True
    if op == "*":
        return va * vb, f"{wrap(ta, sa)}*{wrap(tb, sb)}", False
    if vb == 0:
        return None
    # a product on the right of / needs parentheses too: a/(b*c)
    return va / vb, f"{wrap(ta, sa)}/{'(' + tb + ')' if sb or '*' in tb or '/' in tb else tb}", False


def _combine(a: tuple[Fraction, str, bool], b: tuple[Fraction, str, bool]):
    """Every (value, text, is_sum) of a op b."""
    for op in "+-*/":
        joined = _join(op, a, b)
        if joined is not None:
            yield joined


@lru_cache(maxsize=None)
def _expressions(numbers: tuple[int, ...]) -> dict[Fraction, str]:
    """value -> the first expression text found that uses every number of `numbers` exactly once."""
    if len(numbers) == 1:
        return {Fraction(numbers[0]): str(numbers[0])}
    out: dict[Fraction, str] = {}
    n = len(numbers)
    for r in range(1, n):
        for left_idx in itertools.combinations(range(n), r):
            left = tuple(sorted(numbers[i] for i in left_idx))
            right = tuple(sorted(numbers[i] for i in range(n) if i not in left_idx))
            for va, ta in _expressions(left).items():
                for vb, tb in _expressions(right).items():
                    sa, sb = len(left) > 1 and _is_sum(ta), len(right) > 1 and _is_sum(tb)
                    for value, text, _ in _combine((va, ta, sa), (vb, tb, sb)):
                        out.setdefault(value, text)
    return out


def _is_sum(text: str) -> bool:
    depth = 0
    for c in text:
        depth += c == "("
        depth -= c == ")"
        if depth == 0 and c in "+-":
            return True
    return False


def reachable_targets(numbers: tuple[int, ...]) -> dict[int, str]:
    """Integer targets in 1..MAX_TARGET -> a reference expression."""
    return {int(v): t for v, t in _expressions(tuple(sorted(numbers))).items()
            if v.denominator == 1 and 1 <= v <= MAX_TARGET}


def split_multisets(split: str, num_numbers: int = 3, seed: int = 0,
                    max_number: int = MAX_NUMBER) -> list[tuple[int, ...]]:
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test' (held-out number sets)")
    if num_numbers not in (3, 4):
        raise ValueError(f"num_numbers={num_numbers}: countdown here uses 3 or 4 numbers")
    if max_number < 4:
        raise ValueError(f"max_number={max_number}: too few number sets to hold some out; use 4 or more")
    sets = list(itertools.combinations_with_replacement(range(1, max_number + 1), num_numbers))
    random.Random(f"countdown-sets-{num_numbers}-{seed}").shuffle(sets)
    held = int(len(sets) * HELD_OUT_FRACTION)
    return sets[held:] if split == "train" else sets[:held]


def random_expression(numbers, operations: str, rng: random.Random) -> tuple[Fraction, str] | None:
    """A random expression over `numbers` in their order (random bracketing and operators), as
    (value, text with only the parentheses it needs); None for a division by zero."""
    def build(part):
        if len(part) == 1:
            return Fraction(part[0]), str(part[0]), False
        k = rng.randint(1, len(part) - 1)
        left, right = build(part[:k]), build(part[k:])
        if left is None or right is None:
            return None
        return _join(rng.choice(operations), left, right)

    built = build(list(numbers))
    return None if built is None else built[:2]


def prompt_of(numbers, target: int) -> str:
    return f"countdown {target} from {' '.join(map(str, numbers))}\nexpression "


def build_dataset(split: str, num_examples: int | None = None, seed: int = 0, num_numbers: int = 3,
                  max_number: int = MAX_NUMBER, operations: str = OPERATIONS):
    """A `datasets.Dataset` with columns prompt, answer (a reference expression), numbers (text), target.

    An instance is a number multiset of the split, shuffled, and the value of a random expression over
    the numbers in that order (redrawn until it is an integer in 1..MAX_TARGET); the reference answer
    is that expression. Train: `num_examples` (default 20000) instances drawn with `seed`; test: by
    default 256 instances from the held-out multisets, the same for every seed of a model run."""
    import datasets

    if not operations or set(operations) - set("+-*/") or len(set(operations)) != len(operations):
        raise ValueError(f"operations={operations!r}: give distinct operators out of '+-*/', e.g. '+-*'")
    sets = split_multisets(split, num_numbers, max_number=max_number)
    count = num_examples or (20000 if split == "train" else 256)
    rng = random.Random(f"countdown-{split}-{num_numbers}-{seed if split == 'train' else 0}")
    rows = {"prompt": [], "answer": [], "numbers": [], "target": []}
    while len(rows["prompt"]) < count:
        numbers = list(rng.choice(sets))
        rng.shuffle(numbers)
        # Some draws miss the target range (or divide by zero); with '+' available one in a few hits.
        for _ in range(100):
            drawn = random_expression(numbers, operations, rng)
            if drawn is not None and drawn[0].denominator == 1 and 1 <= drawn[0] <= MAX_TARGET:
                break
        else:
            continue
        value, text = drawn
        rows["prompt"].append(prompt_of(numbers, int(value)))
        rows["answer"].append(text)
        rows["numbers"].append(" ".join(map(str, numbers)))
        rows["target"].append(int(value))
    return datasets.Dataset.from_dict(rows)


def _text(completion) -> str | None:
    """The completion's text (TRL passes a string, or a conversation whose last message holds it); None for
    anything else, which scores 0."""
    if isinstance(completion, list):
        last = completion[-1] if completion else {"content": ""}
        return last.get("content") if isinstance(last, dict) else None
    return completion


def score(completion: str, numbers: str | list[int], target: int) -> float:
    """The reward of one answer: total over any input (not a string, bytes, None: 0)."""
    given = sorted(int(n) for n in (numbers.split() if isinstance(numbers, str) else numbers))
    if not isinstance(completion, str):
        return 0.0
    try:
        value, used = evaluate(completion)
    except ParseError:
        return 0.0
    return 1.0 if sorted(used) == given and value == target else WELL_FORMED_REWARD


def countdown_reward(prompts, completions, completion_ids=None, numbers=None, target=None, **kwargs) -> list[float]:
    """1 right, 0.1 well-formed but wrong, 0 not an expression (TRL reward signature)."""
    for key, value in (("numbers", numbers), ("target", target)):
        if value is None or len(value) != len(completions):
            raise ValueError(f"countdown_reward needs the dataset column {key!r} with one entry per completion "
                             f"({len(completions)}); build the dataset with mdlm.train.tasks.countdown.build_dataset")
    return [score(_text(c), n, int(t)) for c, n, t in zip(completions, numbers, target)]


def countdown_accuracy(completions, numbers, target) -> list[float]:
    return [float(r == 1.0) for r in countdown_reward(None, completions, None, numbers=numbers, target=target)]


def operator_pattern(expression: str) -> str:
    """The expression with its numbers replaced by `n`: "(12-7)*3" -> "(n-n)*n"."""
    return re.sub(r"\d+", "n", expression)


def fixed_pattern_baseline(train, test) -> tuple[str, float]:
    """The best single operator pattern of the train answers, filled with each test instance's numbers
    in the listed order: (pattern, its test accuracy). An SFT model that only copies the numbers and
    always picks the same operators scores this; competence means beating it."""
    from collections import Counter

    def fill(pattern: str, numbers: str) -> str:
        given = iter(numbers.split())
        return re.sub("n", lambda _: next(given), pattern)

    best = ("", -1.0)
    for pattern, _ in Counter(map(operator_pattern, train["answer"])).most_common(20):
        completions = [fill(pattern, n) for n in test["numbers"]]
        accuracy = sum(countdown_accuracy(completions, list(test["numbers"]), list(test["target"]))) / len(test)
        best = max(best, (pattern, accuracy), key=lambda b: b[1])
    return best
