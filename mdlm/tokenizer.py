"""Tokenizers: a byte-level BPE trained locally (no download), or any Hugging Face tokenizer.

Every tokenizer the stack uses carries the special tokens the model needs: mask, pad, bos, eos.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>", "mask_token": "<|mask|>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (byte-level: every string round-trips, no unknown token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)


def load_tokenizer(name_or_path: str):
    """An existing Hugging Face tokenizer (hub name or local folder) with the special tokens added.

    A missing mask token is added as a new token (the model's vocabulary must cover it); a missing pad
    token reuses eos, as causal LMs usually do."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    ensure_special_tokens(tokenizer)
    return tokenizer


def ensure_special_tokens(tokenizer) -> None:
    if tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": SPECIAL_TOKENS["mask_token"]})
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": SPECIAL_TOKENS["eos_token"]})
    if tokenizer.bos_token is None:
        tokenizer.add_special_tokens({"bos_token": SPECIAL_TOKENS["bos_token"]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def corpus_tokenizer(dataset: str = "stdlib", vocab_size: int = 4096, text_column: str | None = None,
                     limit: int | None = None) -> PreTrainedTokenizerFast:
    """The default tokenizer of a run: a byte-level BPE trained on the corpus's train split.

    Cached under `mdlm.data.cache_root()/tokenizers/` by a fingerprint of the corpus and the vocabulary
    size, so every run on the same corpus gets the same tokenizer without training it again."""
    import hashlib
    import os

    from mdlm.data import cache_root, corpus_fingerprint, load_text_dataset

    key = hashlib.sha1(f"{corpus_fingerprint(dataset, 'train', text_column, limit)}-{vocab_size}".encode())
    folder = cache_root() / "tokenizers" / key.hexdigest()[:20]
    if (folder / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    texts = load_text_dataset(dataset, "train", text_column, limit)["text"]
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(str(tmp))
    if not folder.exists():
        os.replace(tmp, folder)
    return tokenizer
