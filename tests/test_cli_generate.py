"""`mdlm-generate` end to end: real subprocesses on a tiny run folder, plus in-process calls of `main`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from mdlm.decode.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mdlm.decode", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300)


# slow: the live-view subprocess test runs the installed entry point; the in-process tests cover jsonl (8 s)
@pytest.mark.slow
def test_subprocess_generates_jsonl_with_nfe_and_time(tiny_run_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "def parse(", "suffix": "):"}\n"import os"\n', encoding="utf-8")
    out = run_cli("--model", tiny_run_dir, "--prompts-file", prompts, "--prompt", "class ", "--format", "jsonl",
                  "--sampler", "first-hitting", "--max-new-tokens", 6, "--num-samples", 2, "--seed", 0)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == 6
    assert [r["prompt"] for r in records] == ["class ", "class ", "def parse(", "def parse(", "import os", "import os"]
    assert records[2]["suffix"] == "):" and all(r["nfe"] == 6 for r in records)
    assert all(r["time_s"] > 0 and isinstance(r["completion"], str) for r in records)


def test_subprocess_live_view_and_html_trace(tiny_run_dir, tmp_path):
    page = tmp_path / "trace.html"
    out = run_cli("--model", tiny_run_dir, "--prompt", "def f(", "--max-new-tokens", 8, "--steps", 4, "--live",
                  "--trace", page, "--seed", 1, "--remasking", "rcr", "--block-length", 4)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("def f(")
    assert "step 4" in out.stderr  # the live view drew every step
    assert "Loading weights" not in out.stderr and "\u25a2" not in out.stdout  # no loading bar; text printed once
    html = page.read_text(encoding="utf-8")
    assert "<script src" not in html and "http" not in html.split("<script>")[1]  # self-contained
    data = json.loads(re.search(r"const DATA = (.*);\n", html).group(1))
    assert data["steps"] == 4 and len(data["rows"]) == 1
    row = data["rows"][0]
    assert len(row["states"]) == 5 and sum(len(r) for r in row["revealed"]) >= 8


def test_unknown_options_are_rejected(tiny_run_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tiny_run_dir), "--prompt", "x", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_clear_errors_for_a_folder_that_is_not_a_run_and_a_prompt_beyond_the_context(tiny_run_dir, tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--prompt", "x"]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["--model", str(tiny_run_dir), "--prompt", "x " * 40, "--max-new-tokens", "40"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"prompt 0 is \d+ tokens; with 40 new tokens that is \d+ tokens, beyond the model's context of 64",
                     err)
    assert "--max-new-tokens" in err or "shorten the prompt" in err


@pytest.mark.parametrize("options", [
    ["--sampler", "ancestral", "--steps", "20", "--masking-schedule", "cosine"],
    ["--sampler", "confidence", "--schedule", "ascending", "--eoser", "--block-length", "4"],
    ["--sampler", "confidence", "--remasking", "threshold", "--approximate-prefix-cache", "--block-length", "4"],
    ["--sampler", "confidence", "--remasking", "margin", "--top-k", "5", "--top-p", "0.9", "--temperature", "0.7"],
    ["--sampler", "first-hitting", "--no-cache"],
])
def test_every_method_is_reachable(tiny_run_dir, capsys, options):
    code = main(["--model", str(tiny_run_dir), "--prompt", "def ", "--infill", "x = (", ")", "--max-new-tokens", "8",
                 "--format", "jsonl", "--seed", "3", *options])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2 and records[1]["suffix"] == ")"


def test_bad_values_are_reported(tiny_run_dir, capsys, tmp_path):
    assert main(["--model", str(tiny_run_dir), "--prompt", "x", "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert main(["--model", str(tiny_run_dir)]) == 2
    assert "no prompt given" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 1}\n')
    assert main(["--model", str(tiny_run_dir), "--prompts-file", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_plain_text_prompts_file(tiny_run_dir, capsys, tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text("def a(\n\nimport b\n", encoding="utf-8")
    assert main(["--model", str(tiny_run_dir), "--prompts-file", str(lines), "--max-new-tokens", "4", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "=== prompt 1, sample 0" in out and "import b" in out


@pytest.fixture(scope="module")
def bert_run_dir(tmp_path_factory, stdlib_tokenizer):
    """A BERT-style folder: a tiny random BertForMaskedLM whose config has no mask_token_id, beside the
    locally trained tokenizer (which has one)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(stdlib_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=stdlib_tokenizer.pad_token_id)
    assert getattr(config, "mask_token_id", None) is None
    run = tmp_path_factory.mktemp("bert_run")
    BertForMaskedLM(config).save_pretrained(run)
    stdlib_tokenizer.save_pretrained(run)
    return run


@pytest.mark.parametrize("sampler", ["confidence", "first-hitting"])
def test_bert_style_folder_takes_the_mask_id_from_its_tokenizer(bert_run_dir, sampler, capsys):
    code = main(["--model", str(bert_run_dir), "--prompt", "def f(", "--max-new-tokens", "5", "--sampler", sampler,
                 "--seed", "0", "--format", "jsonl", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads(captured.out.splitlines()[0])
    assert record["nfe"] == 5 and isinstance(record["completion"], str)


def test_every_decode_config_field_offered_on_the_command_line_is_a_flag_and_reaches_the_config():
    """Flags are built from DecodeConfig's field metadata: each offered field parses into the config."""
    import dataclasses

    from mdlm.decode import DecodeConfig
    from mdlm.decode.cli import build_parser, config_from_args

    offered = [f for f in dataclasses.fields(DecodeConfig) if f.metadata.get("cli")]
    assert {f.name for f in offered} >= {"sampler", "steps", "unmasking_schedule", "remasking", "threshold",
                                         "block_length", "temperature", "eoser", "use_cache", "full_logits"}
    flags = ["--eoser", "--eoser-gamma-min", "0.2", "--full-logits", "--unmasking-schedule", "cosine", "--no-cache",
             "--remasking", "margin", "--top-k", "3"]
    args = build_parser().parse_args(["--model", "m", *flags])

    class Tokenizer:
        eos_token_id = 7

    config = config_from_args(args, Tokenizer())
    assert (config.eoser, config.eoser_gamma_min, config.full_logits, config.unmasking_schedule, config.use_cache,
            config.remasking, config.top_k, config.eos_token_id) == (True, 0.2, True, "cosine", False, "margin", 3, 7)
    defaults = config_from_args(build_parser().parse_args(["--model", "m"]), Tokenizer())
    assert defaults == DecodeConfig(eos_token_id=7)  # a flag not given leaves the field's default
    assert config_from_args(build_parser().parse_args(["--model", "m", "--schedule", "ascending"]),
                            Tokenizer()).unmasking_schedule == "ascending"  # the old flag name still works


def test_the_command_line_generates_what_generate_gives(tiny_run_dir, capsys):
    """One path: mdlm-generate's completion is `mdlm.decode.generate`'s for the same config and seed."""
    from mdlm.decode import DecodeConfig, generate_with_result
    from mdlm.decode.loading import load_denoiser

    code = main(["--model", str(tiny_run_dir), "--prompt", "def f(", "--max-new-tokens", "6", "--steps", "3",
                 "--seed", "5", "--format", "jsonl", "--device", "cpu"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    denoiser, tokenizer, _ = load_denoiser(str(tiny_run_dir), device="cpu")
    texts, result, _ = generate_with_result(denoiser, tokenizer, ["def f("], 6, DecodeConfig(steps=3, seed=5))
    assert record["completion"] == texts[0] and record["nfe"] == result.nfe == 3


def test_one_stop_rule_end_of_text_first_then_the_familys_stop_tokens():
    from mdlm.decode.generate import completion_stop_ids

    class Tokenizer:
        eos_token_id = 2

    class Ours:
        eos_token_id = 9

    class Family:
        eos_token_id = 2
        stop_token_ids = [2, 5]

    assert completion_stop_ids(Ours(), Tokenizer()) == [2]
    assert completion_stop_ids(Ours(), Tokenizer(), eos_token_id=4) == [4]
    assert completion_stop_ids(Family(), Tokenizer()) == [2, 5]
    assert completion_stop_ids(Ours(), None) == [9]  # no tokenizer EOS: the model's


def test_the_decoding_page_lists_every_flag():
    """docs/decoding.md holds the flags table generated from DecodeConfig's metadata, up to date."""
    from pathlib import Path

    from mdlm.decode.cli import FLAGS_TABLE_MARKERS, flags_table

    page = (Path(__file__).resolve().parents[1] / "docs" / "decoding.md").read_text(encoding="utf-8")
    start, end = FLAGS_TABLE_MARKERS
    assert page.split(start, 1)[1].split(end, 1)[0].strip() == flags_table(), \
        'stale: python -c "from mdlm.decode.cli import update_flags_table; update_flags_table()"'
    assert "`--entropy-bound`" in flags_table() and "`--no-cache`" in flags_table()
