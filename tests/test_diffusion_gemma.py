"""DiffusionGemma through mdlm: conformance with transformers' own `generate`, and the entry points.

The checkpoint is a tiny random `DiffusionGemmaForBlockDiffusion` built from its config (text sizes of a
few dozen, a one-layer vision tower the text path never runs), saved with save_pretrained beside a real
byte-level BPE with a Gemma-style chat template. Conformance: with the same seed (transformers draws from
torch's global generator, mdlm from the run's generator: on the CPU both are the same Mersenne twister),
mdlm's uniform-noise decoder returns transformers' sequences token for token and accepts the same
positions at every step.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.models.diffusion_gemma import generation_diffusion_gemma as reference  # noqa: E402

from mdlm.decode import DecodeConfig  # noqa: E402
from mdlm.decode.canvas import Canvas, pad_rows  # noqa: E402
from mdlm.decode.diffusion_gemma import DiffusionGemmaDenoiser, UniformNoiseSettings, tiny_diffusion_gemma  # noqa: E402
from mdlm.decode.uniform_noise import entropy_bound_accept, uniform_noise_decode  # noqa: E402

CANVAS = 8
CHAT_TEMPLATE = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                 "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def tiny_gemma_for(tokenizer, seed: int = 0, steps: int = 4):
    """The tiny checkpoint over `tokenizer` (a few ids to spare), as a checkpoint would ship it: eos ids
    (end of text, end of turn), pad id and the step count in its generation config."""
    model = tiny_diffusion_gemma(len(tokenizer) + 6, CANVAS, seed=seed, sharpness=40.0,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 bos_token_id=tokenizer.bos_token_id)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    generation = model.generation_config
    generation.eos_token_id, generation.pad_token_id = [tokenizer.eos_token_id, end_of_turn], tokenizer.pad_token_id
    generation.max_denoising_steps = steps
    return model


@pytest.fixture(scope="module")
def gemma_tokenizer(stdlib_tokenizer):
    tokenizer = copy.deepcopy(stdlib_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def gemma_model(gemma_tokenizer):
    return tiny_gemma_for(gemma_tokenizer)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory, gemma_model, gemma_tokenizer):
    folder = tmp_path_factory.mktemp("diffusion_gemma")
    gemma_model.save_pretrained(folder)
    gemma_tokenizer.save_pretrained(folder)
    return folder


def prompts_of(tokenizer):
    rows = [tokenizer("def add(a, b):")["input_ids"], tokenizer("import os")["input_ids"]]
    assert len(rows[0]) != len(rows[1])
    return rows


def reference_generate(model, ids, attention, seed, max_new_tokens, settings):
    """transformers' generate, its sampler wrapped to record each step's accepted mask."""
    masks = []

    class RecordingSampler(reference.EntropyBoundSampler):
        def accept_canvas(self, *args, **kwargs):
            out = super().accept_canvas(*args, **kwargs)
            masks.append(self.accepted_token_mask.clone())
            return out

    original = model._prepare_sampler
    model._prepare_sampler = lambda config: RecordingSampler(config.sampler_config, model.config.canvas_length,
                                                             model.config.text_config.vocab_size,
                                                             config.max_denoising_steps)
    try:
        torch.manual_seed(seed)
        out = model.generate(ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                             max_denoising_steps=settings.max_denoising_steps, t_min=settings.t_min,
                             t_max=settings.t_max,
                             sampler_config=reference.EntropyBoundSamplerConfig(entropy_bound=settings.entropy_bound),
                             stability_threshold=settings.stability_threshold,
                             confidence_threshold=settings.confidence_threshold)
    finally:
        model._prepare_sampler = original
    return out.sequences, masks


@pytest.mark.parametrize("entropy_bound,stability,confidence", [
    (0.05, None, None),  # no adaptive stopping: every canvas takes all its steps
    (1.0, 1, 10.0),  # adaptive stopping as the checkpoint's default (stable once), lenient confidence
    (3.0, 0, 0.9),  # stability 0: done as soon as the mean entropy is below 0.9
])
def test_tokens_and_accepted_masks_equal_transformers_generate(gemma_model, gemma_tokenizer, entropy_bound, stability,
                                                               confidence):
    denoiser = DiffusionGemmaDenoiser(gemma_model, gemma_tokenizer)
    settings = UniformNoiseSettings(max_denoising_steps=4, entropy_bound=entropy_bound, stability_threshold=stability,
                                    confidence_threshold=confidence, eos_token_ids=denoiser.settings.eos_token_ids,
                                    pad_token_id=denoiser.settings.pad_token_id)
    ids, valid = pad_rows(prompts_of(gemma_tokenizer), gemma_tokenizer.pad_token_id, "left")
    new = 2 * CANVAS
    expected, reference_masks = reference_generate(gemma_model, ids, valid, 11, new, settings)

    slots = torch.full((ids.shape[0], new), denoiser.mask_token_id)
    canvas = Canvas.of(denoiser, torch.cat([ids, slots], 1), torch.cat([valid, torch.ones_like(slots, dtype=torch.bool)], 1))
    result = uniform_noise_decode(denoiser, canvas, DecodeConfig(trace=True), generator=torch.Generator().manual_seed(11),
                                  settings=settings)

    assert torch.equal(result.tokens, expected)
    assert result.nfe == len(reference_masks) == len(result.trace) == sum(result.stats["steps_per_canvas"])
    for step, mask in zip(result.trace, reference_masks):
        active = step.revealed.any(-1) | step.remasked.any(-1)  # rows done with their canvas record nothing
        columns = (step.revealed | step.remasked)[active].any(0).nonzero()[:, 0]
        assert torch.equal(step.revealed[active][:, columns], mask[active][:, :len(columns)])
    if stability is None:
        assert result.stats["steps_per_canvas"] == [4, 4]
    if stability == 0:  # adaptive stopping ended some row's canvas early (else this case tests nothing new)
        assert any(not (s.revealed.any(-1) | s.remasked.any(-1)).all() for s in result.trace) or \
            min(result.stats["steps_per_canvas"]) < 4


def test_rows_that_end_are_padded_as_transformers_pads_them(gemma_model, gemma_tokenizer):
    """A row whose first canvas holds an eos ends: pad after its eos and all of its second canvas, and the
    encoder sees those pads (which the other row's second canvas must not notice)."""
    ids, valid = pad_rows(prompts_of(gemma_tokenizer), gemma_tokenizer.pad_token_id, "left")
    probe = UniformNoiseSettings(max_denoising_steps=3, stability_threshold=None, confidence_threshold=None)
    first_canvas, _ = reference_generate(gemma_model, ids, valid, 5, CANVAS, probe)
    row0, row1 = first_canvas[:, ids.shape[1]:].tolist()
    stop = next(t for t in row0[2:] if t not in row1)  # a token of row 0's first canvas only becomes an eos
    settings = UniformNoiseSettings(max_denoising_steps=3, stability_threshold=None, confidence_threshold=None,
                                    eos_token_ids=(stop,), pad_token_id=gemma_tokenizer.pad_token_id)
    original = gemma_model.generation_config.eos_token_id
    gemma_model.generation_config.eos_token_id = [stop]
    try:
        expected, _ = reference_generate(gemma_model, ids, valid, 5, 2 * CANVAS, settings)
    finally:
        gemma_model.generation_config.eos_token_id = original
    denoiser = DiffusionGemmaDenoiser(gemma_model, gemma_tokenizer)
    slots = torch.full((2, 2 * CANVAS), denoiser.mask_token_id)
    canvas = Canvas.of(denoiser, torch.cat([ids, slots], 1), torch.cat([valid, torch.ones_like(slots, dtype=torch.bool)], 1))
    result = uniform_noise_decode(denoiser, canvas, DecodeConfig(), generator=torch.Generator().manual_seed(5),
                                  settings=settings)
    assert torch.equal(result.tokens, expected)
    assert (result.tokens[0, -CANVAS:] == gemma_tokenizer.pad_token_id).all()  # the ended row's second canvas


def test_entropy_bound_accepts_the_largest_prefix_within_the_bound():
    entropy = torch.tensor([[0.5, 0.01, 0.2, 0.3, 2.0]])
    # sorted 0.01, 0.2, 0.3, 0.5, 2.0: cumsum minus the last = 0, 0.01, 0.21, 0.51, 1.01
    assert entropy_bound_accept(entropy, 0.25).tolist() == [[False, True, True, True, False]]
    assert entropy_bound_accept(entropy, 1e-9).tolist() == [[False, True, False, False, False]]  # at least one
    assert entropy_bound_accept(entropy, 5.0).all()


def test_generate_cli_runs_with_no_extra_flags(gemma_dir, capsys):
    """`mdlm-generate --model <folder> --prompt hi`: the family, the uniform-noise sampler, the chat
    template and the stop tokens all come from the folder."""
    from mdlm.decode.cli import main

    code = main(["--model", str(gemma_dir), "--prompt", "hi", "--max-new-tokens", "12", "--format", "jsonl",
                 "--seed", "0", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    record = json.loads(out.out.strip().splitlines()[-1])
    assert record["sampler"] == "uniform-noise" and record["prompt"].startswith("<start_of_turn>user\nhi")
    assert 1 <= record["nfe"] <= 2 * 4  # two canvases of at most 4 steps (the checkpoint's generation config)


def test_loaded_denoiser_reads_the_checkpoint(gemma_dir, gemma_tokenizer):
    from mdlm.decode.loading import load_denoiser

    denoiser, tokenizer, profile = load_denoiser(gemma_dir)
    assert profile.name == "diffusion-gemma" and denoiser.corruption == "uniform"
    assert denoiser.canvas_length == CANVAS and denoiser.settings.max_denoising_steps == 4
    assert gemma_tokenizer.convert_tokens_to_ids("<end_of_turn>") in denoiser.stop_token_ids
    from mdlm.decode.uniform_noise import settings_for  # --steps and --entropy-bound reach the decoder

    settings = settings_for(denoiser, DecodeConfig(steps=3, entropy_bound=2.0))
    assert (settings.max_denoising_steps, settings.entropy_bound) == (3, 2.0)
    assert settings.t_max == denoiser.settings.t_max and settings_for(denoiser, DecodeConfig()) == denoiser.settings
    with pytest.raises(ValueError, match="uniform-noise"):  # a masked sampler is refused in one line
        from mdlm.decode import decode

        slots = torch.full((1, 4), denoiser.mask_token_id)
        decode(denoiser, torch.cat([torch.tensor([[5, 6]]), slots], 1), DecodeConfig(sampler="confidence"))


def test_lm_eval_generates_and_refuses_likelihood(gemma_dir):
    from lm_eval.api.instance import Instance

    from mdlm.eval.adapter import MDLMEvalModel

    lm = MDLMEvalModel(pretrained=str(gemma_dir), device="cpu", max_gen_toks=10, batch_size=2)
    requests = [Instance("generate_until", {}, ("def f(x):", {"until": ["\n\n"], "max_gen_toks": 10}), 0),
                Instance("generate_until", {}, ("import", {"until": ["\n\n"], "max_gen_toks": 10}), 1)]
    texts = lm.generate_until(requests, disable_tqdm=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="uniform-noise") as refused:
        lm.loglikelihood([Instance("loglikelihood", {}, ("a", "b"), 0)], disable_tqdm=True)
    assert "\n" not in str(refused.value)


def test_trace_replay_shows_re_noised_tokens_as_noise(gemma_model, gemma_tokenizer):
    """The HTML replay of a uniform-noise trace: only the prompt is fixed (the first state already holds the
    first canvas's noise), and a re-noised position holds a noise token, never the slot marker."""
    import re

    from mdlm.decode.uniform_noise import render_uniform_trace_html

    denoiser = DiffusionGemmaDenoiser(gemma_model, gemma_tokenizer)
    ids, valid = pad_rows(prompts_of(gemma_tokenizer), gemma_tokenizer.pad_token_id, "left")
    slots = torch.full((2, 2 * CANVAS), denoiser.mask_token_id)
    canvas = Canvas.of(denoiser, torch.cat([ids, slots], 1), torch.cat([valid, torch.ones_like(slots, dtype=torch.bool)], 1))
    result = uniform_noise_decode(denoiser, canvas, DecodeConfig(trace=True), generator=torch.Generator().manual_seed(0))
    page = render_uniform_trace_html(result.trace, result.tokens, canvas.valid, lambda i: gemma_tokenizer.decode([i]),
                                     denoiser.mask_token_id)
    data = json.loads(re.search(r"const DATA = (.*?);\n", page).group(1))
    for b, row in enumerate(data["rows"]):
        assert row["fixed"] == [True] * int(valid[b].sum()) + [False] * 2 * CANVAS
        renoised = [(k, i) for k, step in enumerate(row["remasked"]) for i in step]
        assert renoised and all(row["states"][k + 1][i] != data["mask_id"] for k, i in renoised)
    # x0 (the row after a step, noise included) is the row the next decoder call of the canvas sees
    first_canvas = [step for step in result.trace if step.state[:, -CANVAS:].eq(denoiser.mask_token_id).all()]
    assert len(first_canvas) > 1
    assert all(torch.equal(a.x0, b.state) for a, b in zip(first_canvas, first_canvas[1:]))


def test_live_view_draws_re_noised_positions_as_their_noise_tokens(gemma_model, gemma_tokenizer):
    import io

    from rich.console import Console

    from mdlm.decode.cli import LiveCanvas

    denoiser = DiffusionGemmaDenoiser(gemma_model, gemma_tokenizer)
    ids, _ = pad_rows(prompts_of(gemma_tokenizer)[:1], gemma_tokenizer.pad_token_id, "left")
    steps = []
    uniform_noise_decode(denoiser, torch.cat([ids, torch.full((1, CANVAS), denoiser.mask_token_id)], 1),
                         DecodeConfig(step_callback=steps.append), generator=torch.Generator().manual_seed(0))
    screen = io.StringIO()
    live = LiveCanvas(gemma_tokenizer, Console(file=screen, width=1000), denoiser.mask_token_id)
    live.noise = True
    live.show(steps[0])
    Console(file=screen, width=1000).print(live.live.renderable)
    # the row after the step, token by token: its prompt, accepted tokens and fresh noise (never a mask glyph)
    expected = "".join(gemma_tokenizer.decode([t]) for t in steps[0].x0[0].tolist())
    assert expected.rstrip("\n") in screen.getvalue()
