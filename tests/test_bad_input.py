"""The bad-input sweep of issue 17: every case gives one line on stderr that names the input and the fix,
with exit status 2, and no traceback (or, for the Python API, a ValueError saying the same).

Entry points are called in-process (`main(argv)`, SystemExit code and capsys); one `accelerate launch`
goes through a real subprocess (slow). The run folders are the session's tiny ones (conftest) and one tiny
trained run with checkpoints."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mdlm import MDLMForMaskedLM
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
ROOT_IGNORES_MODES = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_run_dir, stdlib_tokenizer, mdlm_cache):
    """Run folders: `mdlm` (tiny, untrained), `trained` (2 steps, checkpoints), `block7` (block-causal with
    blocks of 7), `ar` (causal)."""
    from mdlm.train.pretrain import train

    root = tmp_path_factory.mktemp("bad_input_runs")
    folders = {"mdlm": tiny_run_dir}
    for name, overrides in (("block7", dict(attention="block-causal", block_size=7)), ("ar", dict(attention="causal"))):
        folders[name] = root / name
        MDLMForMaskedLM(tiny_config(stdlib_tokenizer, **overrides)).save_pretrained(folders[name])
        stdlib_tokenizer.save_pretrained(folders[name])
    folders["trained"] = train(dict(config="tiny", max_documents=10, seq_len=64, batch_size=4, eval_batches=1,
                                    max_steps=2, eval_every=2, save_every=2, progress=False,
                                    output_dir=str(root / "trained")))
    return folders


def damaged_copy(run: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    damage(copy)
    return copy


def set_config(key, value):
    def damage(folder):
        config = json.loads((folder / "config.json").read_text())
        config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
    return damage


def truncate_weights(size):
    def damage(folder):
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:size])
    return damage


def pickled_weights(folder):
    torch.save(MDLMForMaskedLM.from_pretrained(folder).state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def write(tmp_path, name, content) -> str:
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return str(path)


def outcome(entry, argv, capsys) -> tuple[int, str, str]:
    try:
        code = entry(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    return code, (lines[-1] if lines else ""), err


def generate(argv):
    from mdlm.decode.cli import main

    return main(argv)


def pretrain(argv):
    from mdlm.train.pretrain import main

    return main(argv)


def sft(argv):
    from mdlm.train.sft import main

    return main(argv)


def rl(argv):
    from mdlm.train.rl.cli import main

    return main(argv)


def R(runs, tmp_path, *extra, run="mdlm", output="rl"):
    """mdlm-rl on a run: every case here must stop before the model is loaded or anything trained."""
    return ["--task", "sudoku", "--model", str(runs[run]) if run in runs else run, "--output-dir",
            str(tmp_path / output), "--no-progress", *extra]


def evaluate_cli(argv):
    from mdlm.eval.cli import main

    return main(argv)


def bench(name):
    def entry(argv):
        import importlib

        from mdlm.decode.cli_errors import run_main

        return run_main(f"mdlm.eval.bench.{name}", importlib.import_module(f"mdlm.eval.bench.{name}").main, argv)
    return entry


def G(runs, tmp_path, *extra, run="mdlm"):
    model = run if isinstance(run, str) and run.startswith("/") else str(runs[run])
    return ["--model", model, "--prompt", "def f(", "--max-new-tokens", "8", "--device", "cpu", *extra]


def T(runs, tmp_path, *extra):
    return ["--config", "tiny", "--max-documents", "10", "--output-dir", str(tmp_path / "t"), "--no-progress", *extra]


def S(runs, tmp_path, *extra, data=None):
    data = data or write(tmp_path, "pairs.jsonl", "".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n"
                                                             for i in range(8)))
    return ["--init-from", str(runs["mdlm"]), "--data", data, "--output-dir", str(tmp_path / "s"), "--no-progress",
            *extra]


def yaml_file(tmp_path, options):
    return write(tmp_path, "run.yaml", yaml.safe_dump(options))


SCHEMA = json.dumps({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})

# (id, entry, argv from (runs, tmp_path), what the line must say)
CASES = [
    # mdlm-generate
    ("G config value not a number", generate,
     lambda r, t: G(r, t, run=str(damaged_copy(r["mdlm"], t, set_config("hidden_size", "sixty-four")))),
     "could not load the run"),
    ("G truncated weights", generate,
     lambda r, t: G(r, t, run=str(damaged_copy(r["mdlm"], t, truncate_weights(100)))), "could not load the run"),
    ("G empty weights", generate,
     lambda r, t: G(r, t, run=str(damaged_copy(r["mdlm"], t, truncate_weights(0)))), "could not load the run"),
    ("G pickled weights", generate, lambda r, t: G(r, t, run=str(damaged_copy(r["mdlm"], t, pickled_weights))),
     "only pickled weights"),
    ("G temperature nan", generate, lambda r, t: G(r, t, "--temperature", "nan"), "--temperature must be a finite"),
    ("G temperature inf", generate, lambda r, t: G(r, t, "--temperature", "inf"), "--temperature must be a finite"),
    ("G prompt not UTF-8", generate, lambda r, t: G(r, t, "--prompt", b"\xff\xfe".decode("utf-8", "surrogateescape")),
     "is not valid UTF-8"),
    ("G prompts file of random bytes", generate,
     lambda r, t: G(r, t, "--prompts-file", write(t, "p.txt", os.urandom(64) + b"\xff")), "is not UTF-8 text"),
    ("G prompt file of random bytes", generate,
     lambda r, t: G(r, t, "--prompt-file", write(t, "p.py", b"\xc3\x28 bad")), "is not UTF-8 text"),
    ("G suffix not a string", generate,
     lambda r, t: G(r, t, "--prompts-file", write(t, "p.jsonl", '{"prompt": "a", "suffix": 123}\n')),
     "'suffix' must be a string"),
    pytest.param("G device cuda without CUDA", generate, lambda r, t: G(r, t, "--device", "cuda"), "no CUDA GPU",
                 marks=NO_CUDA),
    ("G device banana", generate, lambda r, t: G(r, t, "--device", "banana"), "is not a device"),
    ("G trace into a missing folder", generate, lambda r, t: G(r, t, "--trace", str(t / "no" / "t.html")),
     "does not exist"),
    pytest.param("G trace into a read-only folder", generate,
                 lambda r, t: (os.chmod(t, 0o500), G(r, t, "--trace", str(t / "t.html")))[1], "cannot write there",
                 marks=ROOT_IGNORES_MODES),
    ("G block length on a block-size-7 run", generate, lambda r, t: G(r, t, "--block-length", "8", run="block7"),
     "multiple of the model's attention block size"),
    ("G batch size 0", generate, lambda r, t: G(r, t, "--batch-size", "0"), "--batch-size must be >= 1"),
    ("G steps beyond the tokens", generate, lambda r, t: G(r, t, "--steps", "1000"), "--steps 1000 is more than"),
    ("G assd on an MDLM run", generate, lambda r, t: G(r, t, "--sampler", "assd"), "needs an any-subset AR run"),
    ("G an AR run", generate, lambda r, t: G(r, t, run="ar"), "is an autoregressive run"),
    ("G cache conflict", generate, lambda r, t: G(r, t, "--no-cache", "--approximate-prefix-cache"),
     "contradict each other"),
    ("G infill with a schema", generate,
     lambda r, t: ["--model", str(r["mdlm"]), "--infill", "A", "B", "--schema", write(t, "s.json", SCHEMA),
                   "--device", "cpu"], "takes no suffix"),
    # train/pretrain.py
    *[(f"T --{flag} {value}", pretrain, (lambda flag, value: lambda r, t: T(r, t, f"--{flag}", value))(flag, value),
       f"--{flag} must be >= 1") for flag, value in (("batch-size", "0"), ("save-every", "0"), ("eval-every", "0"),
                                                     ("log-every", "0"), ("max-steps", "0"), ("max-steps", "-5"),
                                                     ("grad-accum", "0"))],
    ("T yaml lr list", pretrain, lambda r, t: T(r, t, "--config-file", yaml_file(t, {"lr": [1, 2]})),
     "--lr must be a float, got [1, 2]"),
    ("T yaml max_steps text", pretrain, lambda r, t: T(r, t, "--config-file", yaml_file(t, {"max_steps": "abc"})),
     "--max-steps must be an int, got 'abc'"),
    ("T tokenizer missing folder", pretrain, lambda r, t: T(r, t, "--tokenizer", "./no_such_dir"),
     "no such local folder"),
    ("T init-from a typo", pretrain, lambda r, t: T(r, t, "--init-from", str(r["trained"]) + "-smal"),
     "not a run folder"),
    pytest.param("T fp16 on CPU", pretrain, lambda r, t: T(r, t, "--mixed-precision", "fp16"), "needs a CUDA GPU",
                 marks=NO_CUDA),
    ("T resume with another width", pretrain,
     lambda r, t: ["--output-dir", str(r["trained"]), "--resume", "--hidden-size", "128"], "differ from the run's"),
    ("T dataset missing", pretrain, lambda r, t: T(r, t, "--dataset", "./no/corpus"), "no such local file or folder"),
    # train/sft.py
    ("S batch size 0", sft, lambda r, t: S(r, t, "--batch-size", "0"), "--batch-size must be >= 1"),
    ("S max steps 0", sft, lambda r, t: S(r, t, "--max-steps", "0"), "--max-steps must be >= 1"),
    ("S broken JSON line", sft,
     lambda r, t: S(r, t, data=write(t, "bad.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "a", "resp\n')),
     "bad.jsonl:2 is not valid JSON"),
    ("S prompt a number, response null", sft,
     lambda r, t: S(r, t, data=write(t, "null.jsonl", '{"prompt": 5, "response": null}\n' * 4)),
     "must be a string"),
    ("S truncated weights", sft,
     lambda r, t: ["--init-from", str(damaged_copy(r["mdlm"], t, truncate_weights(100))), "--data",
                   write(t, "p.jsonl", '{"prompt": "a", "response": "b"}\n' * 4), "--output-dir", str(t / "s")],
     "damaged"),
    # mdlm-rl (issue 30): zeros that meant a default elsewhere, YAML the file of which is named, types from
    # YAML, a missing integration, an AR run, TRL's batch rule restated with the flags, an unusable folder
    ("R eval examples -1", rl, lambda r, t: R(r, t, "--eval-examples", "-1"), "--eval-examples must be >= 1, got -1"),
    ("R max steps 0", rl, lambda r, t: R(r, t, "--max-steps", "0"), "--max-steps must be >= 1, got 0 (TRL reads"),
    ("R diffusion steps 0", rl, lambda r, t: R(r, t, "--diffusion-steps", "0"), "--diffusion-steps must be >= 1"),
    ("R train examples 0", rl, lambda r, t: R(r, t, "--train-examples", "0"), "(0 would mean all of them)"),
    ("R an AR run", rl, lambda r, t: R(r, t, run="ar"), "is an autoregressive run"),
    ("R yaml syntax error", rl, lambda r, t: R(r, t, "--config-file", write(t, "rl.yaml", "beta: [0.1,\n")),
     "rl.yaml: not plain YAML"),
    ("R yaml python tag", rl,
     lambda r, t: R(r, t, "--config-file", write(t, "rl.yaml", "beta: !!python/object/apply:os.getcwd []\n")),
     "rl.yaml: not plain YAML"),
    ("R yaml learning rate fast", rl, lambda r, t: R(r, t, "--config-file", write(t, "rl.yaml", "learning_rate: fast\n")),
     "--learning-rate must be a float, got 'fast'"),
    pytest.param("R report to wandb without wandb", rl, lambda r, t: R(r, t, "--report-to", "wandb"),
                 "wandb is not installed", marks=pytest.mark.skipif(importlib.util.find_spec("wandb") is not None,
                                                                     reason="wandb is installed")),
    ("R mdpo group not dividing the batch", rl,
     lambda r, t: R(r, t, "--algorithm", "mdpo", "--num-generations", "8", "--per-device-train-batch-size", "6"),
     "not a multiple of --num-generations 8"),
    ("R output dir under a file, before loading", rl,
     lambda r, t: R(r, t, run="/nonexistent/run", output=f"{write(t, 'f', 'x')}/rl"), "Not a directory"),
    pytest.param("R read-only output dir, before loading", rl,
                 lambda r, t: (os.chmod(t, 0o500), R(r, t, run="/nonexistent/run"))[1], "Permission denied",
                 marks=ROOT_IGNORES_MODES),
    ("T yaml syntax error", pretrain, lambda r, t: T(r, t, "--config-file", write(t, "p.yaml", "lr: {\n")),
     "p.yaml: not plain YAML"),
    # mdlm-eval: lm-eval's own line was "Indices for islice() must be None or an integer"; 0 meant "no limit"
    *[(f"E limit {value}", evaluate_cli,
       (lambda value: lambda r, t: ["--model", "mdlm", "--model_args", f"pretrained={r['mdlm']}", "--tasks",
                                    "stdlib_ppl", "--limit", value])(value), "--limit must be > 0")
      for value in ("-3", "0")],
    # benchmarks
    ("bench lm_eval missing run, before training the other", bench("lm_eval"),
     lambda r, t: ["--quick", "--mdlm", "/nonexistent", "--output-dir", str(t)], "--mdlm-run /nonexistent: not a run"),
    ("bench speculative missing run", bench("speculative"), lambda r, t: ["--run", "/nonexistent/run"],
     "/nonexistent/run does not exist"),
    ("bench speculative bogus order", bench("speculative"), lambda r, t: ["--order", "bogus"], "invalid choice"),
    ("bench report missing page", bench("report"), lambda r, t: ["--pages", str(t / "x.md")], "x.md"),
    ("bench sampling missing run", bench("sampling"), lambda r, t: ["--run", "/nonexistent", "--output-dir", str(t)],
     "not a run folder"),
]


def as_params(cases):
    """(id, entry, argv, expected) tuples, or pytest.param of the same with marks, as pytest params."""
    for case in cases:
        values, marks = (case.values, case.marks) if hasattr(case, "marks") else (case, ())
        yield pytest.param(*values[1:], id=values[0], marks=marks)


@pytest.mark.parametrize("entry, argv, expected", list(as_params(CASES)))
def test_one_clear_line_and_status_2(runs, tmp_path, capsys, entry, argv, expected):
    code, line, err = outcome(entry, argv(runs, tmp_path), capsys)
    os.chmod(tmp_path, 0o700)
    assert code == 2, err[-2000:]
    assert expected in line, err[-2000:]
    assert "Traceback" not in err



def test_an_unexpected_error_is_one_line_with_status_1(capsys, monkeypatch):
    from mdlm.decode.cli_errors import run_main

    def bug():
        raise KeyError("oops")

    with pytest.raises(SystemExit) as stop:
        run_main("prog", bug)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1 and "KeyError" in err[0] and "MDLM_TRACEBACK=1" in err[0]
    monkeypatch.setenv("MDLM_TRACEBACK", "1")
    with pytest.raises(KeyError):
        run_main("prog", bug)


# ----------------------------------------------------------------------------------------------------
# mdlm-eval and the lm-eval adapter
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (dict(pretrained="/nonexistent/run"), "no such run folder"),
    (dict(mc_num=0), "mc_num must be an integer >= 1"),
    (dict(bogus=1), "unknown model arg(s) bogus"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(max_gen_toks=0), "max_gen_toks must be >= 1"),
    (dict(temperature=math.nan), "temperature must be a finite number"),
    (dict(sampler="assd"), "sampler=assd needs an any-subset AR run"),
    (dict(device="banana"), "is not a device"),
    pytest.param(dict(device="cuda"), "no CUDA GPU", marks=NO_CUDA),
])
def test_eval_model_args_are_refused_with_one_clear_message(runs, args, expected):
    from mdlm.eval import MDLMEvalModel

    with pytest.raises((ValueError, FileNotFoundError)) as error:  # both are one line, status 2, in mdlm-eval
        MDLMEvalModel(**{"pretrained": str(runs["mdlm"]), "device": "cpu", **args})
    assert expected in str(error.value)


def test_eval_tokenizer_that_is_not_local_fails_at_once_without_the_hub(runs):
    from mdlm.eval import MDLMEvalModel

    began = time.perf_counter()
    with pytest.raises(ValueError, match="tokenizer=gpt2-nonexistent-xyz: not a local tokenizer folder"):
        MDLMEvalModel(pretrained=str(runs["mdlm"]), tokenizer="gpt2-nonexistent-xyz", device="cpu")
    assert time.perf_counter() - began < 5


@pytest.fixture
def lm_eval_logging():
    """lm-eval's log handlers keep the stream of the test that first called its CLI; drop those closed since."""
    import logging

    yield
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("lm")]:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)


def test_mdlm_eval_prints_lm_eval_errors_as_one_line(runs, capsys, lm_eval_logging):
    from mdlm.eval.cli import main

    code, line, err = outcome(main, ["--model", "mdlm", "--model_args", f"pretrained={runs['mdlm']}",
                                     "--tasks", "no_such_task"], capsys)
    assert code == 2 and "Tasks not found: no_such_task" in line and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("model_args, expected", [("mc_num=0", "mc_num must be"), ("bogus=1", "unknown model arg")])
def test_mdlm_eval_model_arg_errors_are_one_line(runs, capsys, lm_eval_logging, model_args, expected):
    from mdlm.eval.cli import main

    code, line, err = outcome(main, ["--model", "mdlm", "--model_args", f"pretrained={runs['mdlm']},{model_args}",
                                     "--tasks", "stdlib_ppl"], capsys)
    assert code == 2 and expected in line and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------
# Python API and accelerate launch
# ----------------------------------------------------------------------------------------------------

def test_python_api_refuses_empty_prompts_and_nan_temperature(tiny_model, stdlib_tokenizer):
    from mdlm.decode import DecodeConfig, generate

    with pytest.raises(ValueError, match="no prompts given"):
        generate(tiny_model, stdlib_tokenizer, [], 8)
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature must be a finite number"):
            DecodeConfig(temperature=value)


def test_launcher_refuses_zero_processes(capsys):
    from mdlm.train.launch import main

    assert main(["--num_processes", "0", str(REPO / "train" / "pretrain.py")]) == 2
    assert "--num_processes must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_accelerate_launch_keeps_the_scripts_line_last_and_its_status(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "mdlm.train.launch", "--num_processes", "1", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train" / "pretrain.py"),
                           "--config", "tiny", "--batch-size", "0", "--output-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "pretrain: error: --batch-size must be >= 1, got 0"
