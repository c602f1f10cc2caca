"""SFT on any family (`train/sft.py --model`): a public model's folder is loaded as its family (never
replaced by a fresh model of ours), LoRA lowers the training loss and the saved result loads and generates,
instruct prompts go through the chat template and stay fixed, and `--resume` needs only the run folder."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from mdlm.train.sft import finetune, main
from tests.finetune_checkpoints import family_folder, modules_cache


@pytest.fixture
def folders(tmp_path, monkeypatch):
    modules_cache(tmp_path, monkeypatch)
    return lambda family, **kw: family_folder(tmp_path / f"tiny-{family}", family, **kw)


def sft_options(model, out, family, **kw):
    return {**dict(model=str(model), family=family, trust_remote_code=True, task="sudoku", max_examples=64,
                   output_dir=str(out), batch_size=4, lr=3e-3, warmup_steps=2, max_steps=20, eval_every=20,
                   eval_batches=1, save_every=20, log_every=5, progress=False), **kw}


def test_a_public_model_folder_is_refused_without_trust_remote_code_never_trained_as_ours(folders, tmp_path, capsys):
    """The old `--init-from <LLaDA folder>` exited 0 after training a fresh model of our architecture."""
    folder = folders("llada")
    with pytest.raises(SystemExit) as exit_info:
        main(["--init-from", str(folder), "--task", "sudoku", "--max-examples", "8", "--max-steps", "1",
              "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert exit_info.value.code == 2
    assert "--trust-remote-code" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def word_pairs(path, count=64):
    """Prompt/response pairs in the published checkpoints' word vocabulary (w0..w59): the response is
    the prompt's words shifted by one."""
    rows = []
    for i in range(count):
        words = [(i * 7 + j * 3) % 50 for j in range(4)]
        rows.append({"prompt": " ".join(f"w{w}" for w in words), "response": " ".join(f"w{w + 1}" for w in words)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def native_options(model, out, tmp_path, **kw):
    return {**dict(model=str(model), data=str(word_pairs(tmp_path / "pairs.jsonl")), output_dir=str(out),
                   batch_size=4, lr=1e-2, warmup_steps=2, max_steps=20, eval_every=20, eval_batches=1, save_every=20,
                   log_every=5, progress=False), **kw}


@pytest.mark.parametrize("family", ["llada", pytest.param("dream", marks=pytest.mark.slow),
                                    pytest.param("sdar", marks=pytest.mark.slow)])  # 150k-token vocabularies: ~2 min
def test_sft_with_lora_lowers_the_training_loss_and_the_result_loads_and_generates(tmp_path, family):
    """A tiny checkpoint in the family's published layout (native implementation, no remote code): 20
    LoRA steps lower the loss; the run folder holds the merged weights under the published names and
    loads and generates through the one loader; the adapter sits in adapter/."""
    from safetensors.torch import load_file

    from mdlm.decode import DecodeConfig, decode
    from mdlm.decode.loading import load_denoiser
    from tests.family_models import write_published_checkpoint

    folder = write_published_checkpoint(tmp_path / family, family)
    run = finetune(native_options(folder, tmp_path / "run", tmp_path, lora_r=8))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    base, tuned = load_file(folder / "model.safetensors"), load_file(run / "model.safetensors")
    assert tuned.keys() == base.keys()  # merged weights, in the family's published layout
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    assert (run / "adapter" / "adapter_config.json").is_file()
    options = yaml.safe_load((run / "run_options.yaml").read_text())
    assert options["ema"] == 0.0 and options["lora_r"] == 8  # no float32 copy of a public model's weights
    denoiser, tokenizer, profile = load_denoiser(run)
    assert profile.name == family
    prompt = torch.tensor([tokenizer("w1 w2 w3 w4", add_special_tokens=False)["input_ids"]])
    canvas = torch.cat([prompt, torch.full((1, 4), denoiser.mask_token_id)], 1)
    tokens = decode(denoiser, canvas, DecodeConfig(sampler="confidence", steps=4, temperature=0.0)).tokens
    assert not (tokens == denoiser.mask_token_id).any()


def test_full_finetuning_of_a_remote_code_family_saves_its_layout(folders, tmp_path):
    from safetensors.torch import load_file

    folder = folders("dream")
    run = finetune(sft_options(folder, tmp_path / "run", "dream", max_steps=2, log_every=1, eval_every=2,
                               save_every=2))
    assert load_file(run / "model.safetensors").keys() == load_file(folder / "model.safetensors").keys()
    assert not (run / "adapter").exists()


def test_instruct_prompts_go_through_the_chat_template_and_stay_fixed(folders):
    from mdlm.decode.families import get_family
    from mdlm.train.sft import SFTArgs, build_data
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders("llada", chat=True))
    args = SFTArgs(model="x", task="sudoku", max_examples=4, output_dir="unused")
    train, _ = build_data(args, tokenizer, 512, profile=get_family("llada"))
    batch = train[[0]]
    prompt = tokenizer.decode(batch["input_ids"][0][batch["fixed"][0]])
    assert prompt.startswith("<user>") and prompt.endswith("<a>")
    plain, _ = build_data(SFTArgs(model="x", task="sudoku", max_examples=4, output_dir="unused", chat_template=False),
                          tokenizer, 512, profile=get_family("llada"))
    assert not tokenizer.decode(plain[[0]]["input_ids"][0]).startswith("<user>")


def test_resume_needs_only_the_run_folder(tmp_path, tiny_run_dir):
    rows = [{"prompt": f"x = {i} ;", "response": f" {i} + {i} = {2 * i}"} for i in range(40)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    main(["--model", str(tiny_run_dir), "--data", str(data), "--output-dir", str(out), "--batch-size", "4",
          "--max-steps", "4", "--stop-at-step", "2", "--save-every", "2", "--eval-every", "4", "--eval-batches", "1",
          "--warmup-steps", "1", "--no-progress"])
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 2
    main(["--resume", "--output-dir", str(out), "--no-progress"])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["finished"]


def test_the_progress_bar_counts_to_where_the_recipe_stops(tmp_path, tiny_run_dir, capsys):
    """A recipe of --max-steps 6 --stop-at-step 2 (the schedule's length, the model it hands on) shows 2/2,
    not 2/6 (issue 29)."""
    rows = [{"prompt": f"x = {i} ;", "response": f" {i}"} for i in range(16)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["--model", str(tiny_run_dir), "--data", str(data), "--output-dir", str(tmp_path / "run"), "--batch-size", "2",
          "--max-steps", "6", "--stop-at-step", "2", "--save-every", "2", "--eval-every", "6", "--eval-batches", "1",
          "--warmup-steps", "1"])
    bar = capsys.readouterr().err
    assert "2/2" in bar and "/6" not in bar
