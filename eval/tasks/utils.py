"""Prompt and scoring functions of the local tasks (referenced from the YAMLs with `!function`)."""

from __future__ import annotations

import re

# The hole of an infill prompt; the `mdlm` model puts its masks there (mdlm.eval.adapter.INFILL_HOLE).
INFILL_HOLE = "<|hole|>"


def ppl_results(doc, results):
    """lm-eval's perplexity convention: word and byte counts of the original document."""
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["text"]))
    size = len(doc["text"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, size),
            "bits_per_byte": (loglikelihood, size)}


def infill_prompt(doc) -> str:
    return doc["prefix"] + INFILL_HOLE + doc["suffix"]


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def edit_similarity(prediction: str, target: str) -> float:
    """1 - Levenshtein distance / length of the longer string (1 for identical strings)."""
    longest = max(len(prediction), len(target))
    return 1.0 if longest == 0 else 1.0 - levenshtein(prediction, target) / longest


def first_line(text: str) -> str:
    """The first non-blank line of a generation: the filled line, whichever side of a newline the model
    put it on (a 16-token hole may begin with the line break that ends the prefix's last line)."""
    return next((line for line in text.splitlines() if line.strip()), "")


def infill_results(doc, results):
    """Exact match and edit similarity of the filled line, both compared without surrounding space."""
    prediction, target = first_line(results[0]).strip(), doc["target"].strip()
    return {"exact_match": float(prediction == target), "edit_similarity": edit_similarity(prediction, target)}
