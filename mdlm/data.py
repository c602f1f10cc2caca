"""Corpora: the default embedded corpus (the running Python's standard library source) and its split.

The split is by a hash of each file's path relative to the standard library, so it is stable across
machines and runs and never puts one file in two splits.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

SPLITS = ("train", "validation", "test")
# Percent of files in each split, by hash bucket 0..99.
SPLIT_BUCKETS = {"train": range(0, 90), "validation": range(90, 95), "test": range(95, 100)}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relative_path: str) -> str:
    bucket = int(hashlib.sha1(relative_path.encode()).hexdigest(), 16) % 100
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def stdlib_files(split: str) -> list[Path]:
    """Every `.py` file of the standard library (site-packages excluded) in `split`, sorted by path."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    root = stdlib_root()
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    if not files:
        raise FileNotFoundError(f"no .py files under {root}: this Python has no standard library source")
    return [p for p in files if split_of(p.relative_to(root).as_posix()) == split]


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def stdlib_texts(split: str, limit: int | None = None) -> list[str]:
    """The source texts of the split (optionally only the first `limit` files), empty files dropped."""
    files = stdlib_files(split)[:limit] if limit else stdlib_files(split)
    return [t for t in (read_text(p) for p in files) if t.strip()]
