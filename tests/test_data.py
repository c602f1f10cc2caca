"""Corpora, split, tokenizer and packing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mdlm import data
from mdlm.data import (SPLITS, load_text_dataset, pack_dataset, pack_token_lists, packed_split, split_of,
                       stdlib_files, stdlib_root, stdlib_texts)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_stdlib_split_is_disjoint_complete_and_roughly_90_5_5():
    files = {split: set(stdlib_files(split)) for split in SPLITS}
    everything = set().union(*files.values())
    assert sum(len(f) for f in files.values()) == len(everything)  # disjoint
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in everything)
    share = {split: len(f) / len(everything) for split, f in files.items()}
    assert 0.85 < share["train"] < 0.95 and 0.02 < share["validation"] < 0.08 and 0.02 < share["test"] < 0.08


def test_split_is_a_stable_function_of_the_relative_path():
    names = [p.relative_to(stdlib_root()).as_posix() for p in stdlib_files("validation")[:20]]
    code = (f"import importlib.util as u; s = u.spec_from_file_location('d', {data.__file__!r}); "
            f"d = u.module_from_spec(s); s.loader.exec_module(d); print([d.split_of(n) for n in {names!r}])")
    # A fresh interpreter with another hash seed: the split must not depend on Python's hash().
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert out.strip() == str(["validation"] * len(names))
    assert split_of("json/decoder.py") == split_of("json/decoder.py")


def test_tokenizer_round_trips_stdlib_text(stdlib_tokenizer):
    for text in stdlib_texts("validation", limit=10) + ["ünïcödé → λx: x ✓\n\tdef f():\r\n  pass  "]:
        ids = stdlib_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert stdlib_tokenizer.decode(ids) == text
    for name in ("mask_token", "pad_token", "bos_token", "eos_token"):
        assert getattr(stdlib_tokenizer, name) is not None


def test_pack_token_lists_keeps_every_token_and_pads_only_the_tail():
    packed = pack_token_lists([[1, 2, 3], [4], [5, 6, 7, 8, 9]], seq_len=4, eos_id=0, pad_id=99)
    assert packed["input_ids"] == [[1, 2, 3, 0], [4, 0, 5, 6], [7, 8, 9, 0]]
    assert packed["attention_mask"] == [[1] * 4] * 3
    packed = pack_token_lists([[1, 2]], seq_len=4, eos_id=0, pad_id=99)
    assert packed == {"input_ids": [[1, 2, 0, 99]], "attention_mask": [[1, 1, 1, 0]]}


def test_pack_dataset_keeps_every_token_across_map_batches(stdlib_tokenizer, monkeypatch):
    monkeypatch.setattr(data, "PACK_BATCH_DOCUMENTS", 3)  # several map batches, each with a padded tail
    texts = load_text_dataset("stdlib", "validation", limit=8)
    packed = pack_dataset(texts, stdlib_tokenizer, seq_len=32)
    expected = [t for doc in texts["text"] for t in
                stdlib_tokenizer(doc, add_special_tokens=False)["input_ids"] + [stdlib_tokenizer.eos_token_id]]
    rows = packed[:]
    ids, mask = rows["input_ids"], rows["attention_mask"].bool()
    assert ids.shape[1] == 32
    assert ids[mask].tolist() == expected
    assert (ids[~mask] == stdlib_tokenizer.pad_token_id).all()
    assert (~mask).sum() < 32 * 3  # at most one padded tail per map batch


def test_packed_split_is_cached_on_disk(stdlib_tokenizer, cache):
    first = packed_split("stdlib", "validation", stdlib_tokenizer, 64, limit=None)
    assert len(list((cache / "packed").iterdir())) == 1
    second = packed_split("stdlib", "validation", stdlib_tokenizer, 64)
    assert first[:]["input_ids"].equal(second[:]["input_ids"])


def test_local_txt_jsonl_and_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i}.txt").write_text(f"text file {i}\n")
    rows = [{"body": f"row {i}", "id": i} for i in range(200)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")

    txt = {split: list(load_text_dataset(str(folder), split)["text"]) for split in SPLITS}
    assert sorted(sum(txt.values(), [])) == sorted(f"text file {i}\n" for i in range(40))
    for source in ("rows.jsonl", "rows.parquet"):
        splits = {split: list(load_text_dataset(str(tmp_path / source), split, text_column="body")["text"])
                  for split in ("train", "validation")}
        assert not set(splits["train"]) & set(splits["validation"])
        assert 150 < len(splits["train"]) < 200


def test_clear_errors_for_bad_sources(tmp_path, monkeypatch):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="no column 'text'.*--text-column"):
        load_text_dataset(str(tmp_path / "rows.jsonl"), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="corpus is empty"):
        load_text_dataset(str(tmp_path / "empty"), "train")
    (tmp_path / "blank.txt").write_text("   \n")
    with pytest.raises(ValueError, match="is empty"):
        load_text_dataset(str(tmp_path / "blank.txt"), "train")
    with pytest.raises(ValueError, match="does not exist"):
        load_text_dataset(str(tmp_path / "missing.jsonl"), "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_text_dataset("stdlib", "dev")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown hub name must fail clearly, without network
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not load the dataset 'no-such-user/no-such-dataset'"):
        load_text_dataset("no-such-user/no-such-dataset", "train")
