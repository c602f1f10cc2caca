"""Verifiable tasks (sudoku, countdown, signatures): reference answers score 1, garbage 0, splits are
disjoint as specified, and the countdown parser is exact and never evaluates Python."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest

from mdlm.train.tasks import get_task
from mdlm.train.tasks import countdown, sudoku


def test_sudoku_has_the_288_grids_by_brute_force():
    grids = sudoku.all_grids()
    assert len(grids) == 288 == len(set(grids))
    assert all(sorted(g[r * 4:(r + 1) * 4]) == [1, 2, 3, 4] for g in grids for r in range(4))


def test_sudoku_splits_by_grid_and_puzzles_are_unique():
    train, test = set(sudoku.split_grids("train")), set(sudoku.split_grids("test"))
    assert len(test) == sudoku.HELD_OUT_GRIDS and len(train) == 288 - sudoku.HELD_OUT_GRIDS
    assert not train & test
    held = sudoku.build_dataset("test")
    seen = sudoku.build_dataset("train", 300, seed=1)
    held_answers = set(held["answer"])
    assert not held_answers & set(seen["answer"])  # no held-out solution grid is ever trained on
    assert len(held_answers) == sudoku.HELD_OUT_GRIDS
    for p in held["puzzle"][:50]:
        puzzle = tuple(0 if c == "." else int(c) for c in p if c != "/")
        assert sudoku.MIN_BLANKS <= puzzle.count(0) <= sudoku.MAX_BLANKS
        assert sudoku._solutions(puzzle) == 1


def test_sudoku_reward_and_accuracy():
    task = get_task("sudoku")
    data = task.dataset("test")
    cols = {k: list(data[k][:8]) for k in task.columns}
    answers = list(data["answer"][:8])
    assert task.reward(None, answers, None, **cols) == [1.0] * 8
    assert task.accuracy(answers, **cols) == [1.0] * 8
    assert task.reward(None, ["no digits"] * 8, None, **cols) == [0.0] * 8
    # One blank wrong: the reward drops by 1/blanks, the exact-solve accuracy to 0.
    puzzle, answer = cols["puzzle"][0], answers[0]
    blank = next(i for i, c in enumerate(puzzle) if c == ".")
    wrong = answer[:blank] + str(int(answer[blank]) % 4 + 1) + answer[blank + 1:]
    blanks = puzzle.count(".")
    assert task.reward(None, [wrong], None, puzzle=[puzzle], answer=[answer]) == [(blanks - 1) / blanks]
    assert task.accuracy([wrong], puzzle=[puzzle], answer=[answer]) == [0.0]
    with pytest.raises(ValueError, match="puzzle"):
        task.reward(None, answers, None, answer=answers)


def test_countdown_parser_is_exact_and_safe():
    assert countdown.evaluate("7/2*2") == (Fraction(7), [7, 2, 2])
    assert countdown.evaluate("(12-7)*3") == (Fraction(15), [12, 7, 3])
    assert countdown.evaluate("2-3-4")[0] == -5 and countdown.evaluate("2-(3-4)")[0] == 3
    for bad in ("", "1+", "(1+2", "1/0", "__import__('os')", "1 2", "2**3", "3*(2+)"):
        with pytest.raises(countdown.ParseError):
            countdown.evaluate(bad)


def test_countdown_reward_is_total_over_any_input():
    """Issue 30: 5,000 nested parentheses raised RecursionError (aborting an RL step), None and bytes raised
    TypeError, and Arabic-Indic digits were read as numbers. Every one scores 0, and fast."""
    import time

    deep = "(" * 5000 + "3" + ")" * 5000
    assert countdown.evaluate("(" * 100 + "1+2" + ")" * 100) == (Fraction(3), [1, 2])  # deep but short: parsed
    hostile = [deep, "(" * 5000, None, b"1+2", 12, [{"role": "assistant"}], "١+٢", "1+\u0662", "²+1",
               "9**9**9", "999999*" * 2000 + "1"]
    started = time.perf_counter()
    rewards = countdown.countdown_reward(None, hostile, None, numbers=["1 2"] * len(hostile), target=[3] * len(hostile))
    assert rewards == [0.0] * len(hostile)
    assert time.perf_counter() - started < 1.0
    assert countdown.countdown_reward(None, ["1+2", [{"content": "2+1"}]], None, numbers=["1 2"] * 2,
                                      target=[3] * 2) == [1.0, 1.0]


def test_countdown_targets_against_brute_force():
    # Brute force over every ordering, every pair of operators and both bracketings.
    numbers = (3, 5, 8)
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a / b if b else None}
    values = set()
    for a, b, c in itertools.permutations(map(Fraction, numbers)):
        for f, g in itertools.product(ops.values(), repeat=2):
            for v in (g(f(a, b), c) if f(a, b) is not None else None,
                      f(a, g(b, c)) if g(b, c) is not None else None):
                if v is not None and v.denominator == 1 and 1 <= v <= countdown.MAX_TARGET:
                    values.add(int(v))
    targets = countdown.reachable_targets(numbers)
    assert set(targets) == values
    for target, expression in targets.items():
        value, used = countdown.evaluate(expression)
        assert value == target and sorted(used) == sorted(numbers)


def test_countdown_rewards_and_disjoint_number_sets():
    task = get_task("countdown")
    data = task.dataset("test", 64)
    cols = {k: list(data[k]) for k in task.columns}
    assert task.reward(None, list(data["answer"]), None, **cols) == [1.0] * 64
    assert task.reward(None, ["garbage"] * 64, None, **cols) == [0.0] * 64
    assert task.reward(None, ["1+1"] * 64, None, **cols) == [countdown.WELL_FORMED_REWARD] * 64
    n = cols["numbers"][0].split()
    reused = f"{n[0]}+{n[0]}+{n[1]}+{n[2]}"  # a number used twice: well formed, not right
    value = 2 * int(n[0]) + int(n[1]) + int(n[2])
    assert task.reward(None, [reused], None, numbers=cols["numbers"][:1], target=[value]) == [0.1]
    train_sets = {tuple(sorted(map(int, s.split()))) for s in task.dataset("train", 500)["numbers"]}
    test_sets = {tuple(sorted(map(int, s.split()))) for s in cols["numbers"]}
    assert not train_sets & test_sets
    assert not set(countdown.split_multisets("train")) & set(countdown.split_multisets("test"))


def test_signature_task_through_the_registry():
    task = get_task("signatures")
    data = task.dataset("test", 5)
    assert task.reward(None, list(data["answer"]), None, answer=list(data["answer"])) == [1.0] * 5
    assert task.reward(None, ["{"] * 5, None, answer=list(data["answer"])) == [0.0] * 5


def test_unknown_task_lists_the_choices():
    with pytest.raises(ValueError, match="sudoku, countdown, signatures"):
        get_task("chess")


def test_sft_from_scratch_on_a_task(tmp_path):
    """train/sft.py --task sudoku --preset tiny: a fresh model with a one-character-per-token tokenizer
    trained on the task text, finetuned on the task and saved as a run folder RL can load."""
    from mdlm import MDLMForMaskedLM
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.sft import SFTArgs, finetune

    out = finetune(SFTArgs(task="sudoku", preset="tiny", max_steps=2, batch_size=4, max_examples=64,
                           eval_every=2, eval_batches=1, save_every=2, warmup_steps=1, output_dir=str(tmp_path / "s"),
                           progress=False))
    tok = load_tokenizer(str(out))
    assert len(tok) == 260 and len(tok.tokenize("sudoku 12.4/3.12")) == len("sudoku 12.4/3.12")
    model = MDLMForMaskedLM.from_pretrained(out)
    assert model.config.mask_token_id == tok.mask_token_id and model.config.hidden_size == 64
    with pytest.raises(ValueError, match="--preset .*needs --task sudoku or --task countdown"):
        SFTArgs(task="signatures", preset="tiny").resolved()
    with pytest.raises(ValueError, match="not both"):
        SFTArgs(task="sudoku", preset="tiny", init_from=str(out)).resolved()


def test_countdown_instances_are_random_expressions_in_the_listed_order():
    # Brute force: every bracketing and operator pair over (a, b, c) in that order.
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
           "/": lambda x, y: x / y if y else None}
    a, b, c = map(Fraction, (6, 3, 2))
    in_order = set()
    for f, g in itertools.product(ops.values(), repeat=2):
        for v in (g(f(a, b), c) if f(a, b) is not None else None, f(a, g(b, c)) if g(b, c) is not None else None):
            if v is not None:
                in_order.add(v)
    rng, drawn = random.Random(0), set()
    for _ in range(2000):
        value, text = countdown.random_expression((6, 3, 2), "+-*/", rng)
        assert countdown.evaluate(text) == (value, [6, 3, 2])  # minimal parentheses read back the same
        drawn.add(value)
    assert drawn == in_order
    data = countdown.build_dataset("test", 200, max_number=9, operations="+-")
    for prompt, answer, numbers, target in zip(data["prompt"], data["answer"], data["numbers"], data["target"]):
        assert prompt == countdown.prompt_of(numbers.split(), target) and set(answer) <= set("0123456789+-()")
        assert countdown.score(answer, numbers, target) == 1.0 and 1 <= target <= countdown.MAX_TARGET
        assert max(map(int, numbers.split())) <= 9
    with pytest.raises(ValueError, match="operators out of"):
        countdown.build_dataset("test", 4, operations="+^")


def test_countdown_fixed_pattern_baseline_is_what_the_pattern_scores():
    """The bar an SFT model must clear: the best one operator pattern filled with the listed numbers.
    Checked against scoring that pattern by hand, and it must beat a pattern that is never right."""
    train, test = countdown.build_dataset("train", 2000), countdown.build_dataset("test", 128)
    pattern, accuracy = countdown.fixed_pattern_baseline(train, test)
    assert countdown.operator_pattern("(12-7)*3") == "(n-n)*n" and pattern.count("n") == 3
    by_hand = [countdown.score(pattern.replace("n", "{}").format(*n.split()), n, t)
               for n, t in zip(test["numbers"], test["target"])]
    assert accuracy == sum(s == 1.0 for s in by_hand) / len(test)
    assert 0.05 < accuracy < 0.5  # the generator leaves room above a fixed answer
    assert get_task("countdown").baseline is countdown.fixed_pattern_baseline
