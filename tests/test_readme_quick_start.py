"""The README's quick start runs as written (issue 29): its commands, on a `runs/tiny` laid out as the
tiny preset leaves it, in a fresh working directory. The generation commands run here (in-process, on an
untrained tiny model: what is checked is that every flag and size fits the tiny run, e.g. that no command
asks for more tokens than its 64-token context); training and lm-eval run in the slow suite. docs/install.md
shows the same block, kept identical."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quick_start_block(page: Path) -> str:
    text = page.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start.*?\n(.*?)(?=^## )", text, flags=re.S | re.M).group(1)
    return re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists (continuation lines joined, comments dropped)."""
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


QUICK_START = commands(quick_start_block(ROOT / "README.md"))


def test_the_docs_show_the_readmes_quick_start():
    assert quick_start_block(ROOT / "docs" / "install.md") == quick_start_block(ROOT / "README.md")
    programs = [c[0] if c[0] != "accelerate" else c[2] for c in QUICK_START]
    assert programs[0] == "train/pretrain.py" and "runs/tiny" in QUICK_START[0]
    assert {"mdlm-generate", "mdlm-eval", "echo"} <= set(programs)
    for words in QUICK_START[1:]:
        if words[0].startswith("mdlm-"):
            assert any("runs/tiny" in w for w in words), f"{words[0]} does not use the tiny run: {words}"


@pytest.fixture
def quick_start_dir(tmp_path, monkeypatch, tiny_run_dir):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(tiny_run_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_shell_file_write(words: list[str]) -> None:
    """`echo TEXT > FILE`: the one shell form the quick start uses besides its commands."""
    assert words[0] == "echo" and words[-2] == ">", words
    Path(words[-1]).write_text(" ".join(words[1:-2]) + "\n", encoding="utf-8")


def test_every_generation_command_runs_as_written(quick_start_dir, capsys):
    from mdlm.decode.cli import main

    ran = 0
    for words in QUICK_START:
        if words[0] == "echo":
            run_shell_file_write(words)
            json.loads(Path(words[-1]).read_text())  # the schema is valid JSON
        elif words[0] == "mdlm-generate":
            assert main(words[1:]) == 0, words
            out = capsys.readouterr().out
            assert out.strip(), words
            ran += 1
    assert ran >= 3


@pytest.mark.slow
def test_training_and_evaluation_commands_run_as_written(tmp_path, monkeypatch, mdlm_cache):
    import subprocess

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train").symlink_to(ROOT / "train", target_is_directory=True)
    for words in QUICK_START:
        if words[0] in ("accelerate", "mdlm-eval"):
            done = subprocess.run(words, capture_output=True, text=True, timeout=1800)
            assert done.returncode == 0, (words, done.stderr[-2000:])
    assert (tmp_path / "runs" / "tiny" / "model.safetensors").is_file()
