"""A self-contained HTML page that replays a decoding trace: the canvas of each sample, step by step,
each token coloured by the step that revealed it (remasked tokens flash red), with a legend; it opens at
step 0 and plays forward. No network, no assets: the trace is embedded as JSON and a few lines of
JavaScript replay it."""

from __future__ import annotations

import html
import json

from mdlm.decode.trace import TraceStep

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>%(title)s</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; background: #fafafa; }
.canvas { font-family: ui-monospace, monospace; white-space: pre-wrap; background: #fff; border: 1px solid #ddd;
          padding: 1em; margin-bottom: 1.5em; line-height: 1.6; }
.tok { border-radius: 3px; }
.mask { color: #bbb; }
.fixed { color: #333; font-weight: 600; }
.new { outline: 2px solid #2a7; }
.remasked { background: #f88 !important; }
#controls { position: sticky; top: 0; background: #fafafa; padding: .5em 0; }
#legend { font-size: .9em; color: #444; margin: .3em 0 1em; }
#legend .item { display: inline-block; white-space: nowrap; margin-right: 1.5em; }
#legend .key { font-family: ui-monospace, monospace; padding: 0 .3em; margin: 0 .3em; border-radius: 3px; }
</style></head><body>
<h2>%(title)s</h2>
<div id="controls"><button id="play">play</button> step <input id="step" type="range" min="0" max="0" value="0">
<span id="label"></span></div>
<div id="legend"><span class="item"><span class="key mask">&#9634;</span>still masked</span>
<span class="item"><span class="key fixed">abc</span>given (prompt, suffix)</span>
<span class="item"><span class="key" style="background: hsl(240,70%%,85%%)">abc</span>&#8594;<span class="key"
style="background: hsl(40,70%%,85%%)">abc</span>revealed early &#8594; late (hover: step, log p)</span>
<span class="item"><span class="key new">abc</span>revealed at this step</span>
<span class="item"><span class="key remasked">abc</span>sent back at this step (remasked or re-noised)</span></div>
<div id="rows"></div>
<script>
const DATA = %(data)s;
const rowsDiv = document.getElementById('rows'), slider = document.getElementById('step');
const label = document.getElementById('label');
slider.max = DATA.steps;
function colour(step) { const h = 240 - 200 * step / Math.max(1, DATA.steps); return 'hsl(' + h + ',70%%,85%%)'; }
function render(k) {
  rowsDiv.innerHTML = '';
  DATA.rows.forEach(row => {
    const div = document.createElement('div'); div.className = 'canvas';
    const title = document.createElement('div'); title.textContent = row.title; title.style.color = '#777';
    div.appendChild(title);
    const revealedAt = {}, logprob = {};
    for (let j = 0; j < k; j++) row.revealed[j].forEach((i, n) => { revealedAt[i] = j; logprob[i] = row.logprob[j][n]; });
    const remaskedNow = new Set(k > 0 ? row.remasked[k - 1] : []);
    row.states[k].forEach((id, i) => {
      const span = document.createElement('span'); span.className = 'tok';
      if (id === DATA.mask_id) { span.className += ' mask'; span.textContent = DATA.mask; }
      else { span.textContent = DATA.vocab[id]; }
      if (row.fixed[i]) span.className += ' fixed';
      else if (id !== DATA.mask_id && i in revealedAt) {
        span.style.background = colour(revealedAt[i]);
        span.title = 'step ' + (revealedAt[i] + 1) + ', log p = ' + logprob[i].toFixed(3);
        if (revealedAt[i] === k - 1) span.className += ' new';
      }
      if (remaskedNow.has(i)) span.className += ' remasked';
      div.appendChild(span);
    });
    rowsDiv.appendChild(div);
  });
  label.textContent = k + ' / ' + DATA.steps + (k ? '  (revealed ' + DATA.counts[k - 1] + ')' : '');
}
slider.oninput = () => render(+slider.value);
let timer = null;
document.getElementById('play').onclick = () => {
  if (timer) { clearInterval(timer); timer = null; return; }
  if (+slider.value >= DATA.steps) slider.value = 0;
  timer = setInterval(() => { if (+slider.value >= DATA.steps) { clearInterval(timer); timer = null; return; }
                              slider.value = +slider.value + 1; render(+slider.value); }, %(interval)d);
};
render(0); slider.value = 0;  // open at the start: every position still to generate is masked
</script></body></html>
"""


MASK_GLYPH = "\u25a2"  # a mask, drawn so that no character of code is confused with it (the live view's too)


def trace_payload(trace: list[TraceStep], final_tokens, valid, token_text, mask_token_id: int, titles=None,
                  mask_text=MASK_GLYPH) -> dict:
    """The JSON the page replays: per row the states before each step (and the final one), the positions
    revealed / remasked at each step with their log-probabilities, and the text of every token id used."""
    B, L = final_tokens.shape
    used_ids = set()
    rows = []
    for b in range(B):
        columns = valid[b].nonzero()[:, 0]
        states = [step.state[b, columns].tolist() for step in trace] + [final_tokens[b, columns].tolist()]
        first_state = states[0]
        position = {int(c): n for n, c in enumerate(columns.tolist())}
        revealed, remasked, logprob = [], [], []
        for step in trace:
            where = step.revealed[b].nonzero()[:, 0].tolist()
            revealed.append([position[i] for i in where])
            logprob.append([round(float(step.logprob[b, i]), 4) for i in where])
            remasked.append([position[i] for i in step.remasked[b].nonzero()[:, 0].tolist()])
        for state in states:
            used_ids.update(state)
        rows.append({"title": titles[b] if titles else f"sample {b}", "states": states,
                     "fixed": [t != mask_token_id for t in first_state] if trace else [True] * len(first_state),
                     "revealed": revealed, "remasked": remasked, "logprob": logprob})
    vocab = {int(i): token_text(int(i)) for i in used_ids if i != mask_token_id}
    return {"steps": len(trace), "rows": rows, "counts": [int(s.revealed.sum()) for s in trace],
            "mask": mask_text, "mask_id": mask_token_id, "vocab": vocab}


def render_trace_html(trace: list[TraceStep], final_tokens, valid, token_text, mask_token_id: int, titles=None,
                      title="mdlm decoding trace", interval_ms: int = 120) -> str:
    """The page as a string (write it to a .html file)."""
    data = json.dumps(trace_payload(trace, final_tokens, valid, token_text, mask_token_id, titles))
    return PAGE % {"title": html.escape(title), "data": data.replace("</", "<\\/"), "interval": interval_ms}
