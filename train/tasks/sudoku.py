"""4x4 Sudoku, generated offline: every one of the 288 solution grids, puzzles with 4 to 10 blanks.

A 4x4 Sudoku holds the digits 1-4 once in each row, column and 2x2 box; there are exactly 288 such
grids. The train and held-out splits are split by solution grid (a seeded permutation), so no held-out
grid is ever seen in training, not even with other blanks. Every puzzle has a unique solution (blanks
are redrawn until exactly one of the 288 grids agrees with the givens), so the reference answer is the
only right one.

    prompt   "sudoku 1.34/3.12/..../4321\nsolution "     (rows, "." = blank)
    answer   "1234/3412/2143/4321"                         (the solved grid, same layout)

Reward (TRL signature): the fraction of the blanks filled right, read from the first 16 digits of the
completion (missing digits count wrong). Accuracy: exact solve (every blank right and every given kept).
"""

from __future__ import annotations

import itertools
import random
from functools import lru_cache

SIZE = 4
CELLS = SIZE * SIZE
MIN_BLANKS, MAX_BLANKS = 4, 10
HELD_OUT_GRIDS = 48  # of 288: one sixth of the solution grids are never trained on


def _valid(grid: tuple[int, ...]) -> bool:
    rows = [grid[r * SIZE:(r + 1) * SIZE] for r in range(SIZE)]
    cols = [grid[c::SIZE] for c in range(SIZE)]
    boxes = [[grid[(br + i) * SIZE + bc + j] for i in range(2) for j in range(2)]
             for br in (0, 2) for bc in (0, 2)]
    return all(len(set(group)) == SIZE for group in rows + cols + boxes)


@lru_cache(maxsize=1)
def all_grids() -> tuple[tuple[int, ...], ...]:
    """The 288 solution grids in lexicographic order (rows are permutations of 1-4; checked by brute force)."""
    perms = list(itertools.permutations(range(1, SIZE + 1)))
    return tuple(g for rows in itertools.product(perms, repeat=SIZE)
                 if _valid(g := tuple(itertools.chain.from_iterable(rows))))


def split_grids(split: str, seed: int = 0) -> list[tuple[int, ...]]:
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test' (held-out grids)")
    grids = list(all_grids())
    random.Random(f"sudoku-grids-{seed}").shuffle(grids)
    return grids[HELD_OUT_GRIDS:] if split == "train" else grids[:HELD_OUT_GRIDS]


@lru_cache(maxsize=1)
def _agreeing() -> dict[tuple[int, int], int]:
    """(cell, digit) -> bit set (a Python int) of the grids with that digit in that cell."""
    bits: dict[tuple[int, int], int] = {}
    for k, grid in enumerate(all_grids()):
        for cell, digit in enumerate(grid):
            bits[cell, digit] = bits.get((cell, digit), 0) | (1 << k)
    return bits


def _solutions(puzzle: tuple[int, ...]) -> int:
    agreeing, grids = _agreeing(), (1 << len(all_grids())) - 1
    for cell, digit in enumerate(puzzle):
        if digit:
            grids &= agreeing[cell, digit]
    return grids.bit_count()


def make_puzzle(grid: tuple[int, ...], rng: random.Random) -> tuple[int, ...]:
    """Blank 4-10 cells of `grid` (0 = blank) so that the puzzle still has exactly one solution."""
    while True:
        blanks = set(rng.sample(range(CELLS), rng.randint(MIN_BLANKS, MAX_BLANKS)))
        puzzle = tuple(0 if i in blanks else v for i, v in enumerate(grid))
        if _solutions(puzzle) == 1:
            return puzzle


def format_grid(cells) -> str:
    text = "".join("." if v == 0 else str(v) for v in cells)
    return "/".join(text[r * SIZE:(r + 1) * SIZE] for r in range(SIZE))


def prompt_of(puzzle) -> str:
    return f"sudoku {format_grid(puzzle)}\nsolution "


def build_dataset(split: str, num_examples: int | None = None, seed: int = 0):
    """A `datasets.Dataset` of puzzles with columns prompt, answer (solution text), puzzle (givens text).

    Train: `num_examples` puzzles (default 20000) over the 240 train grids, drawn with `seed`; test: by
    default 4 puzzles of each of the 48 held-out grids (192), the same for every seed of a model run."""
    import datasets

    grids = split_grids(split)
    count = num_examples or (20000 if split == "train" else 4 * len(grids))
    rng = random.Random(f"sudoku-{split}-{seed if split == 'train' else 0}")
    rows = {"prompt": [], "answer": [], "puzzle": []}
    for i in range(count):
        grid = grids[i % len(grids)] if split == "test" else rng.choice(grids)
        puzzle = make_puzzle(grid, rng)
        rows["prompt"].append(prompt_of(puzzle))
        rows["answer"].append(format_grid(grid))
        rows["puzzle"].append(format_grid(puzzle))
    return datasets.Dataset.from_dict(rows)


def _digits(text: str) -> list[int]:
    return [int(c) for c in text if c in "1234"][:CELLS]


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational format: the last message's content
        return completion[-1]["content"] if completion else ""
    return completion


def blanks_right(completion: str, puzzle: str, answer: str) -> tuple[int, int, bool]:
    """(blanks filled right, blanks, givens all kept) of one completion."""
    given = [0 if c == "." else int(c) for c in puzzle if c != "/"]
    solution = _digits(answer)
    digits = _digits(completion)
    digits += [0] * (CELLS - len(digits))
    blanks = [i for i, v in enumerate(given) if v == 0]
    right = sum(digits[i] == solution[i] for i in blanks)
    kept = all(digits[i] == given[i] for i in range(CELLS) if given[i])
    return right, len(blanks), kept


def _check_columns(name: str, n: int, **columns) -> None:
    for key, value in columns.items():
        if value is None or len(value) != n:
            raise ValueError(f"{name} needs the dataset column {key!r} with one entry per completion "
                             f"({n}); build the dataset with mdlm.train.tasks.sudoku.build_dataset")


def sudoku_reward(prompts, completions, completion_ids=None, puzzle=None, answer=None, **kwargs) -> list[float]:
    """Fraction of the blanks filled right (TRL reward signature)."""
    _check_columns("sudoku_reward", len(completions), puzzle=puzzle, answer=answer)
    out = []
    for c, p, a in zip(completions, puzzle, answer):
        right, blanks, _ = blanks_right(_text(c), p, a)
        out.append(right / blanks)
    return out


def sudoku_accuracy(completions, puzzle, answer) -> list[float]:
    """Exact solve: every blank right and every given kept."""
    _check_columns("sudoku_accuracy", len(completions), puzzle=puzzle, answer=answer)
    out = []
    for c, p, a in zip(completions, puzzle, answer):
        right, blanks, kept = blanks_right(_text(c), p, a)
        out.append(float(right == blanks and kept))
    return out
