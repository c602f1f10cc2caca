"""mdlm-serve and mdlm-generate on a DiffusionGemma folder (a uniform-noise model, saved with
save_pretrained): the real `openai` client against a real server; the request's default sampler is
'uniform-noise', the masked samplers' knobs are refused naming the field, and the server's tokens equal
`mdlm.decode.generate`'s for the same seed."""

from __future__ import annotations

import copy
import json

import openai
import pytest
import torch

pytest.importorskip("transformers.models.diffusion_gemma")

from mdlm.decode import DecodeConfig, generate  # noqa: E402
from mdlm.decode.loading import load_denoiser  # noqa: E402
from mdlm.decode.serve.app import create_app  # noqa: E402
from mdlm.decode.serve.protocol import chat_text  # noqa: E402
from tests.test_diffusion_gemma import CHAT_TEMPLATE, tiny_gemma_for  # noqa: E402
from tests.test_serve import LiveServer  # noqa: E402

STEPS = 4  # the checkpoint's max_denoising_steps (per canvas of 8)


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory, stdlib_tokenizer):
    tokenizer = copy.deepcopy(stdlib_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("serve_diffusion_gemma")
    tiny_gemma_for(tokenizer, steps=STEPS).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served(gemma_folder):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small is far faster on one thread than on two contended ones
    denoiser, tokenizer, _ = load_denoiser(gemma_folder)
    live = LiveServer(create_app(denoiser, tokenizer, model_name="gemma", max_batch=4))
    yield denoiser, tokenizer, live.client()
    live.close()
    torch.set_num_threads(threads)


def test_completion_and_streamed_chat_equal_generate(served):
    denoiser, tokenizer, client = served
    prompt = "def add(a, b):"
    out = client.completions.create(model="gemma", prompt=prompt, max_tokens=16, seed=3)
    expected = generate(denoiser, tokenizer, [prompt], 16, DecodeConfig(sampler="uniform-noise", seed=3))[0]
    assert out.choices[0].text and out.choices[0].text == expected
    assert 1 <= out.usage.model_extra["nfe"] <= 2 * STEPS  # two canvases of at most STEPS denoising steps

    messages = [{"role": "user", "content": "hi"}]
    chunks = list(client.chat.completions.create(model="gemma", messages=messages, max_tokens=8, seed=5, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = generate(denoiser, tokenizer, [chat_text(tokenizer, [dict(m) for m in messages])], 8,
                        DecodeConfig(sampler="uniform-noise", seed=5))[0]
    assert text and text == expected and chunks[-1].usage.model_extra["nfe"] >= 1
    with_steps = client.completions.create(model="gemma", prompt=prompt, max_tokens=8, seed=3, extra_body={"steps": 2})
    assert with_steps.usage.model_extra["nfe"] <= 2  # steps is the per-canvas count


@pytest.mark.parametrize("extra,param", [({"remasking": "margin"}, "remasking"), ({"block_length": 4}, "block_length"),
                                         ({"sampler": "confidence"}, "sampler"), ({"top_p": 0.5}, "top_p")])
def test_masked_only_knobs_are_refused_naming_the_field(served, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        served[2].completions.create(model="gemma", prompt="x", max_tokens=8, extra_body=extra)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body


def test_generate_cli_takes_steps_per_canvas(gemma_folder, capsys):
    """--steps 8 with 4 new tokens is fine on a uniform-noise model (steps per canvas, not per token); the
    check used to run before the model was loaded and refused it."""
    from mdlm.decode.cli import main

    code = main(["--model", str(gemma_folder), "--prompt", "hi", "--steps", "8", "--max-new-tokens", "4",
                 "--format", "jsonl", "--seed", "0", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    record = json.loads(out.out.strip().splitlines()[-1])
    assert record["sampler"] == "uniform-noise" and 1 <= record["nfe"] <= 8
