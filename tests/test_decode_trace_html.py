"""The trace page in a real browser (headless Chromium): it opens at step 0, with a legend."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch

from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.decode import DecodeConfig, decode
from mdlm.decode.trace_html import MASK_GLYPH, render_trace_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def traced_page(tmp_path):
    torch.manual_seed(0)
    config = MDLMConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, mask_token_id=29)
    model = MDLMForMaskedLM(config).eval()
    canvas = torch.tensor([[3, 4, 5, 29, 29, 29, 29, 29, 29]])
    result = decode(model, canvas, DecodeConfig(steps=3, seed=0, trace=True))
    page = tmp_path / "trace.html"
    page.write_text(render_trace_html(result.trace, result.tokens, torch.ones_like(canvas, dtype=torch.bool),
                                      lambda i: f"t{i} ", 29), encoding="utf-8")
    return page


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt install chromium)")
def test_the_trace_page_opens_at_step_zero_with_a_legend(tmp_path):
    page = traced_page(tmp_path)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout  # the DOM after the script ran
    assert re.search(r'id="label">0 / 3<', dom)  # the first step, not the last
    rows = re.findall(r'<div class="canvas">.*?</div>(.*?)</div>', dom, re.S)
    assert len(rows) == 1 and rows[0].count(MASK_GLYPH) == 6  # every generated position still masked
    legend = re.search(r'<div id="legend">(.*?)</div>', dom, re.S).group(1)
    for entry in ("still masked", "given (prompt, suffix)", "revealed early", "revealed at this step", "sent back"):
        assert entry in legend
