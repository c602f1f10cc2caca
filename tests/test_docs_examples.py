"""The worked examples of docs/extending.md run as written: a sampler, a model family, a task and an RL
algorithm, each added through its registry and used through the public entry points, in a folder laid out
as the quick start leaves it (an untrained `runs/tiny`). A block headed `# file: NAME.py` is saved as that
module; the other blocks of a section run in order, in one namespace per section."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "extending.md"
FILE_HEADER = re.compile(r"# file: (?P<name>[\w.]+\.py)\n")


def sections() -> dict[str, list[str]]:
    """{section title: its ```python blocks}, in page order."""
    out: dict[str, list[str]] = {}
    for part in re.split(r"^## ", PAGE.read_text(encoding="utf-8"), flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        out[title] = re.findall(r"```python\n(.*?)```", part, flags=re.S)
    return out


SECTIONS = sections()


def test_the_page_has_the_four_examples():
    assert set(SECTIONS) >= {"Add a sampler", "Add a model family", "Add a task", "Add an RL algorithm"}
    assert all(SECTIONS[title] for title in SECTIONS), "a section of extending.md has no code block"


@pytest.fixture
def quick_start_folder(tmp_path, monkeypatch, tiny_model, stdlib_tokenizer):
    """tmp_path as the working directory, holding runs/tiny and every `# file:` module of the page on
    sys.path; the registries the examples add to are restored afterwards."""
    from mdlm.decode.families import FAMILY_REGISTRY
    from mdlm.decode.registry import SAMPLER_REGISTRY
    from mdlm.train.rl import ALGORITHMS
    from mdlm.train.tasks import TASKS

    tiny_model.save_pretrained(tmp_path / "runs" / "tiny")
    stdlib_tokenizer.save_pretrained(tmp_path / "runs" / "tiny")
    modules = []
    for blocks in SECTIONS.values():
        for block in blocks:
            header = FILE_HEADER.match(block)
            if header:
                (tmp_path / header["name"]).write_text(block, encoding="utf-8")
                modules.append(header["name"][:-3])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = [(registry, dict(registry)) for registry in (FAMILY_REGISTRY, SAMPLER_REGISTRY, ALGORITHMS, TASKS)]
    yield tmp_path
    for registry, before in saved:
        registry.clear()
        registry.update(before)
    for name in modules:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("title", list(SECTIONS))
def test_extending_example_runs(title, quick_start_folder):
    namespace = {"__name__": f"extending_{title.replace(' ', '_')}"}
    for block in SECTIONS[title]:
        if FILE_HEADER.match(block):
            continue
        exec(compile(block, f"{PAGE.name}: {title}", "exec"), namespace)
