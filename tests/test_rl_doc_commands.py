"""Every RL command the user docs show (README.md's RL section, docs/rl.md) runs as written, on tiny
untrained runs laid out where the commands expect them (every `--model` they name, and rl.yaml),
with only `--max-steps 1 --eval-examples 4 --no-progress` appended: the algorithms' own defaults (batch,
G, steps) must agree with each other and with the task.

A `...` in a command stands for the arguments of the command above it in the same block (later flags
win), as a reader would fill it in. `torchrun`/`accelerate launch` lines run in this process (the two-process
path has its own slow test in tests/test_rl_cli.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import save_untrained_sudoku_run

ROOT = Path(__file__).resolve().parents[1]
APPENDED = ["--max-steps", "1", "--eval-examples", "4", "--no-progress"]


def rl_section_blocks() -> list[list[str]]:
    """The ```bash blocks of the RL section of README.md and of docs/rl.md, as lists of command lines."""
    texts = []
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## RL finetuning\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    if match:
        texts.append(match.group(1))
    if (ROOT / "docs" / "rl.md").is_file():
        texts.append((ROOT / "docs" / "rl.md").read_text(encoding="utf-8"))
    blocks = []
    for text in texts:
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            lines = [line.split(" #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
            lines = [line for line in lines if "train/rl.py" in line or line.startswith("mdlm-rl")]
            if lines:
                blocks.append(lines)
    return blocks


def rl_arguments(line: str, previous: list[str]) -> list[str]:
    """The arguments after the program of one doc command, with `...` filled from the previous command."""
    words = shlex.split(line)
    if words[0] == "mdlm-rl":
        words = words[1:]
    else:
        words = words[[i for i, w in enumerate(words) if w.endswith("train/rl.py")][0] + 1:]
    if "..." in words:
        words = previous + [w for w in words if w != "..."]  # the flags written out win
    return words


def doc_commands() -> list[tuple[str, list[str], list[str] | None]]:
    """(line, its arguments, the run it needs first: for `--resume`, the previous command's arguments)."""
    commands, seen = [], set()
    for block in rl_section_blocks():
        previous: list[str] = []
        for line in block:
            arguments = rl_arguments(line, previous)
            if line not in seen:
                seen.add(line)
                commands.append((line, arguments, previous if "--resume" in arguments else None))
            previous = [w for w in arguments if w != "--resume"]
    return commands


def last_value(arguments: list[str], flag: str) -> str | None:
    values = [b for a, b in zip(arguments, arguments[1:]) if a == flag]
    return values[-1] if values else None


def test_the_docs_show_a_command_for_every_algorithm():
    from mdlm.train.rl import ALGORITHMS

    shown = {args[len(args) - 1 - args[::-1].index("--algorithm") + 1] for _, args, _ in doc_commands()
             if "--algorithm" in args}
    assert set(ALGORITHMS) <= shown, f"no command in the docs for {set(ALGORITHMS) - shown}"


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sft")
    save_untrained_sudoku_run(folder / "sft-sudoku")
    return folder


def as_params(commands):
    """diffu-GRPO's commands (its defaults are exercised by tests/test_rl_cli.py too) and the `...` ones run
    in the slow suite; one command per other algorithm runs in the default suite (about 15 s each)."""
    params, fast = [], set()
    for line, arguments, needs in commands:
        algorithm = last_value(arguments, "--algorithm") or "diffu-grpo"
        quick = algorithm != "diffu-grpo" and "..." not in line and algorithm not in fast
        fast |= {algorithm} if quick else set()
        params.append(pytest.param(line, arguments, needs, id=line, marks=() if quick else pytest.mark.slow))
    return params


@pytest.mark.parametrize("line,arguments,needs", as_params(doc_commands()))
def test_doc_command_runs_as_written(line, arguments, needs, sft_runs, tmp_path, monkeypatch):
    """In a fresh folder holding what the command names: its --model (a tiny untrained run) and rl.yaml."""
    import json

    from mdlm.train.rl.cli import main

    (tmp_path / "runs").mkdir()
    for name in {last_value(arguments, "--model"), *(needs and [last_value(needs, "--model")] or [])}:
        (tmp_path / name).symlink_to(sft_runs / "sft-sudoku")  # byte-level: it spells every task's text
    (tmp_path / "rl.yaml").write_text("temperature: 0.9\nlogging_steps: 1\nsave_steps: 1\n")
    monkeypatch.chdir(tmp_path)
    if needs is not None:  # --resume continues a run that was stopped: make one
        main([*needs, *APPENDED])
    main([*arguments, *APPENDED] if needs is None else [*arguments, *APPENDED, "--max-steps", "2"])
    folder = tmp_path / (last_value(arguments, "--output-dir") or f"runs/rl-{last_value(arguments, '--task')}")
    assert json.loads((folder / "eval.json").read_text())["steps"] == (1 if needs is None else 2)
