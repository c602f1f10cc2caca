"""Build the data of the local lm-eval tasks from the held-out (`test`) split of the stdlib corpus.

    python -m mdlm.eval.tasks.build_data            # writes the JSONL files (idempotent)
    python -m mdlm.eval.tasks.build_data --force    # rebuild

Deterministic: the same Python standard library gives byte-identical files (fixed seeds, sorted files).
Nothing is committed: the files go to `$MDLM_EVAL_DATA`, else `eval/tasks/data/` beside this script when
it is writable (git-ignored), else the user cache (`~/.cache/mdlm/eval_tasks`). The task YAMLs load
them through `custom_dataset` hooks (`load_stdlib_*` below), which build them on first use, so the
tasks work from any working directory and offline.

Tasks:
- stdlib_ppl: held-out files cut at line boundaries into documents of at most PPL_DOC_CHARS characters
  (loglikelihood_rolling; word and byte perplexity, bits per byte).
- stdlib_next_line: the previous NEXT_LINE_CONTEXT lines of a held-out file and four candidate next
  lines: the true one and three lines drawn from other held-out files (multiple choice; accuracy).
- stdlib_infill: one line removed between its INFILL_PREFIX previous and INFILL_SUFFIX following lines
  (generation; exact match and edit similarity of the filled line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path

DATA_VERSION = 1
TASKS = ("stdlib_ppl", "stdlib_next_line", "stdlib_infill")
PPL_DOC_CHARS = 4096
NEXT_LINE_CONTEXT, NEXT_LINE_CHOICES, NEXT_LINE_PER_FILE = 16, 4, 8
INFILL_PREFIX, INFILL_SUFFIX, INFILL_PER_FILE = 12, 6, 8
LINE_CHARS = (8, 60)  # stripped length of a line worth predicting
INFILL_LINE_CHARS = (8, 48)  # shorter: the hole of the diffusion model has a fixed number of masks


def data_dir() -> Path:
    """Where the task data lives (see the module docstring)."""
    if os.environ.get("MDLM_EVAL_DATA"):
        return Path(os.environ["MDLM_EVAL_DATA"]).expanduser()
    beside = Path(__file__).resolve().parent / "data"
    if os.access(beside if beside.exists() else beside.parent, os.W_OK):
        return beside
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mdlm" / "eval_tasks"


def _source_fingerprint() -> dict:
    from mdlm.data import stdlib_root

    return {"data_version": DATA_VERSION, "python": sys.version.split()[0], "stdlib": str(stdlib_root())}


def _held_out_files() -> list[tuple[str, list[str]]]:
    """(relative path, lines) of every non-empty held-out file, sorted by path."""
    from mdlm.data import read_text, stdlib_files, stdlib_root

    root = stdlib_root()
    out = []
    for path in stdlib_files("test"):
        text = read_text(path)
        if text.strip():
            out.append((path.relative_to(root).as_posix(), text.splitlines()))
    return out


def _seeded(name: str) -> random.Random:
    return random.Random(int(hashlib.sha256(name.encode()).hexdigest(), 16))


def _worth_predicting(line: str, bounds=LINE_CHARS) -> bool:
    stripped = line.strip()
    return bounds[0] <= len(stripped) <= bounds[1] and not stripped.startswith("#")


def build_ppl(files) -> list[dict]:
    docs = []
    for name, lines in files:
        piece: list[str] = []
        size = 0
        for line in lines:
            if piece and size + len(line) + 1 > PPL_DOC_CHARS:
                docs.append({"file": name, "text": "\n".join(piece) + "\n"})
                piece, size = [], 0
            piece.append(line[:PPL_DOC_CHARS - 1])
            size += len(piece[-1]) + 1
        if any(line.strip() for line in piece):
            docs.append({"file": name, "text": "\n".join(piece) + "\n"})
    docs = [d for d in docs if d["text"].strip()]
    _seeded("stdlib_ppl").shuffle(docs)  # a --limit then samples across files
    return docs


def build_next_line(files) -> list[dict]:
    rng = _seeded("stdlib_next_line")
    pool = [(name, line) for name, lines in files for line in lines if _worth_predicting(line)]
    docs = []
    for name, lines in files:
        candidates = [i for i in range(NEXT_LINE_CONTEXT // 2, len(lines)) if _worth_predicting(lines[i])]
        for i in sorted(rng.sample(candidates, min(NEXT_LINE_PER_FILE, len(candidates)))):
            true_line = lines[i]
            distractors: list[str] = []
            while len(distractors) < NEXT_LINE_CHOICES - 1:
                other_file, line = rng.choice(pool)
                if other_file != name and line.strip() != true_line.strip() and line not in distractors:
                    distractors.append(line)
            choices = [true_line, *distractors]
            rng.shuffle(choices)
            context = "\n".join(lines[max(0, i - NEXT_LINE_CONTEXT) : i]) + "\n"
            docs.append({"file": name, "line": i + 1, "context": context,
                         "choices": [c + "\n" for c in choices], "gold": choices.index(true_line)})
    rng.shuffle(docs)
    return docs


def build_infill(files) -> list[dict]:
    rng = _seeded("stdlib_infill")
    docs = []
    for name, lines in files:
        candidates = [i for i in range(3, len(lines) - 2) if _worth_predicting(lines[i], INFILL_LINE_CHARS)]
        for i in sorted(rng.sample(candidates, min(INFILL_PER_FILE, len(candidates)))):
            prefix = "\n".join(lines[max(0, i - INFILL_PREFIX) : i]) + "\n"
            suffix = "\n" + "\n".join(lines[i + 1 : i + 1 + INFILL_SUFFIX]) + "\n"
            docs.append({"file": name, "line": i + 1, "prefix": prefix, "suffix": suffix, "target": lines[i]})
    rng.shuffle(docs)
    return docs


BUILDERS = {"stdlib_ppl": build_ppl, "stdlib_next_line": build_next_line, "stdlib_infill": build_infill}


def _write_atomically(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so concurrent ranks never read a partial file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def build(out_dir: str | Path | None = None, force: bool = False) -> Path:
    """Write `<task>.jsonl` for every task and `manifest.json`; skip when an identical build exists."""
    out = Path(out_dir) if out_dir else data_dir()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    fingerprint = _source_fingerprint()
    if not force and manifest_path.exists() and all((out / f"{t}.jsonl").exists() for t in TASKS):
        if json.loads(manifest_path.read_text()).get("source") == fingerprint:
            return out
    files = _held_out_files()
    counts = {}
    for task, builder in BUILDERS.items():
        docs = builder(files)
        _write_atomically(out / f"{task}.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
        counts[task] = len(docs)
    _write_atomically(manifest_path, json.dumps({"source": fingerprint, "documents": counts}, indent=2) + "\n")
    return out


def load_docs(task: str) -> list[dict]:
    path = build() / f"{task}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _dataset(task: str):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(load_docs(task))})


# `custom_dataset` hooks of the YAMLs (lm-eval passes the task metadata as keyword arguments).
def load_stdlib_ppl(**_):
    return _dataset("stdlib_ppl")


def load_stdlib_next_line(**_):
    return _dataset("stdlib_next_line")


def load_stdlib_infill(**_):
    return _dataset("stdlib_infill")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {data_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even when the data is up to date")
    args = parser.parse_args(argv)
    out = build(args.out, args.force)
    print(f"task data in {out}: {json.loads((out / 'manifest.json').read_text())['documents']}")


if __name__ == "__main__":
    main()
