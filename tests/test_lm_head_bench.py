"""The LM-head benchmark measures what it says: the active-positions variant returns (B, K, V) logits and
needs less memory than the (B, L, V) head; its committed results render into the docs table."""

import json
from pathlib import Path

from mdlm.eval.bench import lm_head

REPO = Path(__file__).resolve().parents[1]


def test_measurement_compares_the_full_head_with_the_block_head():
    # a fresh process: in a long-lived one the allocator reuses pages already resident, hiding the peak
    out = lm_head.measure(vocab=16384, length=256, batch=2, repeats=1)
    assert out["full head"]["logits_shape"] == [2, 256, 16384]
    assert out["active positions"]["logits_shape"] == [2, lm_head.BLOCK, 16384]
    # the full head's (2, 256, 16384) float32 output alone is 32 MiB
    assert out["full head"]["peak_extra_bytes"] > 32 * 2**20 > out["active positions"]["peak_extra_bytes"]


def test_committed_results_render(tmp_path):
    results = json.loads((REPO / "results" / "lm_head.json").read_text())
    table = lm_head.markdown_table(results)
    assert "126,464" in table and table in (REPO / "docs" / "benchmarks.md").read_text()
    lm_head.plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
