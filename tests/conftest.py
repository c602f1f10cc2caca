"""Shared fixtures: a real byte-level BPE trained on standard-library files and tiny models built on it."""

from __future__ import annotations

import os

import pytest
import torch

# One intra-op thread for the tests and the processes they start. The models here are tiny, so threads only
# add scheduling cost (up to 50x on a shared 2-core machine); and a float32 matmul split over two threads
# can round differently for different batch shapes, which the exactness tests (atol 1e-9 on log-probs
# recorded at one shape and recomputed at another) would read as a mismatch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

import mdlm  # noqa: F401  (registers the Auto classes)
from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.data import stdlib_texts
from mdlm.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def stdlib_tokenizer():
    """A 512-token byte-level BPE trained on the first 60 train-split files (under a second)."""
    return train_tokenizer(stdlib_texts("train", limit=60), vocab_size=512)


def tiny_config(tokenizer, **overrides) -> MDLMConfig:
    return MDLMConfig.from_preset(
        "tiny",
        vocab_size=len(tokenizer),
        mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **overrides,
    )


@pytest.fixture(scope="session")
def tiny_model(stdlib_tokenizer):
    torch.manual_seed(0)
    return MDLMForMaskedLM(tiny_config(stdlib_tokenizer)).eval()


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, stdlib_tokenizer, tiny_model):
    """A run folder as `train/pretrain.py` leaves it for use: model (safetensors) + tokenizer."""
    run = tmp_path_factory.mktemp("tiny_run")
    tiny_model.save_pretrained(run)
    stdlib_tokenizer.save_pretrained(run)
    return run


@pytest.fixture(scope="session")
def mdlm_cache(tmp_path_factory):
    """Tokenizers and packed datasets cached in a session folder (not the user's ~/.cache/mdlm); child
    processes inherit it through the environment."""
    import os

    folder = tmp_path_factory.mktemp("mdlm_cache")
    old = os.environ.get("MDLM_CACHE")
    os.environ["MDLM_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("MDLM_CACHE", None)
    else:
        os.environ["MDLM_CACHE"] = old


def save_untrained_sudoku_run(folder):
    """A run folder as `train/sft.py --task sudoku --preset tiny` leaves it, untrained (what is tested is
    the code that reads it) -> folder."""
    from mdlm.train.tasks import get_task

    data = get_task("sudoku").dataset("train", 64)
    tok = train_tokenizer(list(data["prompt"]) + list(data["answer"]), vocab_size=260)
    torch.manual_seed(0)
    model = MDLMForMaskedLM(MDLMConfig.from_preset(
        "tiny", vocab_size=len(tok), mask_token_id=tok.mask_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
