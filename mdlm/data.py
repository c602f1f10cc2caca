"""Corpora and packing: the default embedded corpus (the running Python's standard library source), local
text files, or a Hugging Face dataset, tokenized and packed into fixed-length training blocks.

Splits. The standard library and local files are split into train/validation/test by a hash of each
document's name (a file's relative path, or `path#row` for a row of a jsonl/parquet file), so the split is
stable across machines and runs and never puts one document in two splits. A corpus that is one `.txt`
file is cut into paragraphs (blank-line separated) named `path#N`, split the same way, so it gets a
validation split of its own. Local files must be UTF-8: a file that is not is named with its count of
undecodable bytes, rather than trained on as replacement characters. A Hugging Face dataset keeps its
own splits; when it has no validation split, a fixed 1% of its train split is held out.

Packing. Documents are joined with EOS and cut into blocks of `seq_len` tokens with
`datasets.map(batched=True)`. No token is dropped: the last block of each map batch is padded with the pad
id, and the `attention_mask` column marks real tokens (padding is never masked, scored or attended to).
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from functools import lru_cache
from pathlib import Path

SPLITS = ("train", "validation", "test")
# Percent of documents in each split, by hash bucket 0..99.
SPLIT_BUCKETS = {"train": range(0, 90), "validation": range(90, 95), "test": range(95, 100)}
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
PACK_BATCH_DOCUMENTS = 1000  # documents per map batch; only the last block of each batch is padded


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relative_path: str) -> str:
    bucket = int(hashlib.sha1(relative_path.encode()).hexdigest(), 16) % 100
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")


def stdlib_files(split: str) -> list[Path]:
    """Every `.py` file of the standard library (site-packages excluded) in `split`, sorted by path."""
    _check_split(split)
    return [p for p, name in _stdlib_listing() if split_of(name) == split]


@lru_cache(maxsize=1)
def _stdlib_listing() -> tuple[tuple[Path, str], ...]:
    root = stdlib_root()
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    if not files:
        raise FileNotFoundError(f"no .py files under {root}: this Python has no standard library source")
    return tuple((p, p.relative_to(root).as_posix()) for p in files)


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def read_utf8(path: Path) -> str:
    """The text of a corpus file; a ValueError naming the file and its undecodable bytes if it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = data.decode("utf-8", errors="replace").count("\ufffd") - data.decode("utf-8", "ignore").count("\ufffd")
        raise ValueError(f"{path} is not UTF-8 text: {bad} undecodable byte sequence(s), the first at byte "
                         f"{error.start}; convert it (e.g. iconv -f latin1 -t utf-8) or remove it from the "
                         "corpus") from None


def looks_like_path(value: str) -> bool:
    """Whether a name-or-path argument is meant as a local path: it starts with `.`, `/` or `~`, or its first
    component is an existing local folder (`runs/x`). Such a value never goes to the hub."""
    first = value.split("/", 1)[0]
    return value.startswith((".", "/", "~")) or ("/" in value and Path(first).is_dir())


def check_local_path(flag: str, value: str | None, what: str = "folder") -> None:
    """Fail at once, without any hub lookup, on a path-like argument that does not exist."""
    if value is not None and looks_like_path(value) and not Path(value).expanduser().exists():
        raise ValueError(f"{flag} {value}: no such local {what}; check the path (a hub name has no ./ prefix)")


def stdlib_texts(split: str, limit: int | None = None) -> list[str]:
    """The source texts of the split (optionally only the first `limit` files), empty files dropped."""
    files = stdlib_files(split)[:limit] if limit else stdlib_files(split)
    return [t for t in (read_text(p) for p in files) if t.strip()]


# ----------------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------------

def local_files(path: Path) -> list[Path]:
    """The `.txt`/`.jsonl`/`.parquet` files at `path` (a file, or a folder searched recursively)."""
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {LOCAL_SUFFIXES}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    if not files:
        raise ValueError(f"{path} holds no {'/'.join(LOCAL_SUFFIXES)} files: the corpus is empty")
    return files


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs of a text (a single-file corpus is split by them)."""
    import re

    return [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _rows_of(file: Path, text_column: str) -> list[str]:
    if file.suffix == ".txt":
        return [read_utf8(file)]
    if file.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(read_utf8(file).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{file}:{number} is not valid JSON ({error.msg}, column {error.colno}); "
                                     "fix that line (one JSON object per line)") from None
    else:
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(file).to_pylist()
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise ValueError(f"{file} is not a readable parquet file ({type(error).__name__}: {error}); "
                             "replace it or remove it from the corpus") from None
    if rows and text_column not in rows[0]:
        raise ValueError(f"{file} has no column {text_column!r}; its columns are {sorted(rows[0])}. "
                         "Pick one with --text-column.")
    return [str(row[text_column]) for row in rows]


def local_texts(path: Path, split: str, text_column: str = "text", limit: int | None = None) -> list[str]:
    """Documents of `split` from local files: a `.txt` file is one document, a jsonl/parquet row is one."""
    _check_split(split)
    root = path if path.is_dir() else path.parent
    texts = []
    files = local_files(path)
    for file in files:
        rows = _rows_of(file, text_column)
        single_text = file.suffix == ".txt" and len(files) == 1
        if single_text:  # one file: its paragraphs are the documents, or nothing could be held out
            rows = paragraphs(rows[0])
        name = file.relative_to(root).as_posix()
        for row, text in enumerate(rows):
            key = name if file.suffix == ".txt" and not single_text else f"{name}#{row}"
            if split_of(key) == split and text.strip():
                texts.append(text)
                if limit and len(texts) >= limit:
                    return texts
    return texts


# ----------------------------------------------------------------------------------------------------
# Hugging Face datasets (only when the user names one; nothing is downloaded by default)
# ----------------------------------------------------------------------------------------------------

def hub_texts(name: str, split: str, text_column: str = "text", limit: int | None = None):
    """A `datasets.Dataset` with one column `text`, from `name` or `name:config` on the Hugging Face hub."""
    import datasets

    _check_split(split)
    repo, _, config = name.partition(":")
    try:
        splits = datasets.load_dataset(repo, config or None)
    except Exception as error:  # the hub raises many types; name the input and the cause
        raise ValueError(f"could not load the dataset {name!r} ({type(error).__name__}: {error}). Use "
                         "'stdlib', a local .txt/.jsonl/.parquet path, or a hub name like "
                         "'wikitext:wikitext-103-raw-v1'.") from error
    splits = dict(splits)
    if "train" in splits and "validation" not in splits:  # hold out a fixed 1% of train
        parts = splits["train"].train_test_split(test_size=0.01, seed=0)
        splits.update(train=parts["train"], validation=parts["test"])
    if "test" not in splits and "validation" in splits:
        splits["test"] = splits["validation"]
    if split not in splits:
        raise ValueError(f"dataset {name!r} has splits {list(splits)}, none usable as {split!r}")
    data = splits[split]
    if text_column not in data.column_names:
        raise ValueError(f"dataset {name!r} has no column {text_column!r}; its columns are "
                         f"{data.column_names}. Pick one with --text-column.")
    data = data.select_columns([text_column]).rename_column(text_column, "text") if text_column != "text" \
        else data.select_columns(["text"])
    data = data.filter(lambda batch: [bool(t.strip()) for t in batch["text"]], batched=True)
    return data.select(range(min(limit, len(data)))) if limit else data


# ----------------------------------------------------------------------------------------------------
# One entry point for every source
# ----------------------------------------------------------------------------------------------------

def is_local(dataset: str) -> bool:
    return Path(dataset).exists() or dataset.endswith(LOCAL_SUFFIXES)


def load_text_dataset(dataset: str, split: str, text_column: str | None = None, limit: int | None = None):
    """The documents of `split` as a `datasets.Dataset` with one column `text`.

    `dataset` is `stdlib` (default corpus), a local file or folder, or a hub name (`name` or `name:config`).
    `limit` keeps only the first `limit` documents (fast runs). Raises ValueError for an empty corpus."""
    import datasets

    text_column = text_column or "text"
    if dataset == "stdlib":
        data = datasets.Dataset.from_dict({"text": stdlib_texts(split, limit)})
    elif is_local(dataset):
        path = Path(dataset)
        if not path.exists():
            raise ValueError(f"local dataset {dataset!r} does not exist")
        data = datasets.Dataset.from_dict({"text": local_texts(path, split, text_column, limit)})
    else:
        data = hub_texts(dataset, split, text_column, limit)
    if len(data) == 0:
        raise ValueError(f"the {split} split of dataset {dataset!r} is empty: no non-blank documents. Add more "
                         "documents (the split is by a hash of each document's name or, for a single .txt file, "
                         "of each paragraph's number: ~90/5/5; about 20 paragraphs or files give a validation "
                         "split) or check the path.")
    return data


def corpus_fingerprint(dataset: str, split: str, text_column: str | None, limit: int | None) -> str:
    """A cheap fingerprint of a corpus's content: file names, sizes and modification times for local
    sources, the name for hub datasets (their own cache handles versions)."""
    if dataset == "stdlib":
        files = stdlib_files(split)[:limit] if limit else stdlib_files(split)
    elif is_local(dataset):
        files = local_files(Path(dataset))
    else:
        files = []
    listing = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    payload = json.dumps([dataset, split, text_column, limit, listing])
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def cache_root() -> Path:
    """Where tokenizers and packed datasets are cached: $MDLM_CACHE, else ~/.cache/mdlm."""
    return Path(os.environ.get("MDLM_CACHE", Path.home() / ".cache" / "mdlm"))


# ----------------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------------

def pack_token_lists(token_lists: list[list[int]], seq_len: int, eos_id: int, pad_id: int) -> dict:
    """Join documents, each followed by EOS, and cut into blocks of `seq_len`; pad the last block.

    Returns {"input_ids": [[...]], "attention_mask": [[1 for a real token, 0 for padding]]}."""
    stream = [token for tokens in token_lists for token in (*tokens, eos_id)]
    blocks, masks = [], []
    for start in range(0, len(stream), seq_len):
        block = stream[start:start + seq_len]
        padding = seq_len - len(block)
        blocks.append(block + [pad_id] * padding)
        masks.append([1] * len(block) + [0] * padding)
    return {"input_ids": blocks, "attention_mask": masks}


def pack_dataset(texts, tokenizer, seq_len: int, desc: str = "packing"):
    """Tokenize a `text` dataset and pack it into `seq_len` blocks (see the module docstring)."""
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs eos and pad tokens; load it with mdlm.tokenizer.load_tokenizer")

    def tokenize_and_pack(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return pack_token_lists(ids, seq_len, tokenizer.eos_token_id, tokenizer.pad_token_id)

    packed = texts.map(tokenize_and_pack, batched=True, batch_size=PACK_BATCH_DOCUMENTS,
                       remove_columns=texts.column_names, desc=desc)
    return packed.with_format("torch")


def tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.sha1(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16] \
        if hasattr(tokenizer, "backend_tokenizer") else hashlib.sha1(repr(tokenizer).encode()).hexdigest()[:16]


def packed_split(dataset: str, split: str, tokenizer, seq_len: int, text_column: str | None = None,
                 limit: int | None = None, cache: bool = True):
    """The packed blocks of `split`, cached on disk under `cache_root()/packed/` by fingerprint of the
    corpus, the tokenizer and `seq_len`, so a restart does not tokenize again."""
    import datasets

    key = hashlib.sha1(json.dumps([corpus_fingerprint(dataset, split, text_column, limit),
                                   tokenizer_fingerprint(tokenizer), seq_len]).encode()).hexdigest()[:20]
    folder = cache_root() / "packed" / key
    if cache and (folder / "dataset_info.json").exists():
        return datasets.load_from_disk(str(folder)).with_format("torch")
    packed = pack_dataset(load_text_dataset(dataset, split, text_column, limit), tokenizer, seq_len,
                          desc=f"tokenizing and packing {split}")
    if cache:
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        packed.with_format(None).save_to_disk(str(tmp))
        if not folder.exists():
            os.replace(tmp, folder)
    return packed
