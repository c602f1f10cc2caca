"""Nothing lost, nothing executed (issue 17, items 1-10): a run killed after its final checkpoint is finished
by --resume; a failed save leaves the previous model intact; a second run on a folder in use stops at once;
a checkpoint carrying a pickled payload is refused unread (the payload never runs); non-UTF-8 corpora are
named; a single .txt corpus gets a validation split; quick benchmarks never overwrite results/; the
README's own commands (bare `pytest`, `--prompt-file`) work. Tiny preset, a few steps."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mdlm.train.pretrain import PretrainArgs, main, train
from mdlm.train.run_folder import RunLock, atomic_write_text
from mdlm.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = dict(config="tiny", max_documents=10, seq_len=64, batch_size=4, eval_batches=1, log_every=2, progress=False)


@pytest.fixture(scope="session")
def stopped_run(tmp_path_factory, mdlm_cache):
    """A tiny run stopped at step 2 of 4 as if killed: checkpoints at steps 1 (the early one) and 2."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    train({**TINY, "max_steps": 4, "eval_every": 4, "save_every": 2, "first_save": 1, "stop_at_step": 2,
           "output_dir": str(run)})
    return run


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(stopped_run, copy)
    return copy


def state(run: Path) -> dict:
    return json.loads((run / "trainer_state.json").read_text())


def test_checkpoints_hold_no_pickled_trainer_state_and_an_early_first_one(stopped_run):
    assert [p.name for p in sorted((stopped_run / "checkpoints").iterdir())] == ["step-0000001", "step-0000002"]
    checkpoint = stopped_run / "checkpoints" / "step-0000002"
    assert not list(checkpoint.glob("custom_checkpoint_*"))
    assert {"extra_state.json", "ema.safetensors", "generator_0.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert PretrainArgs(config="small").resolved().first_save == 20


def test_resume_after_the_final_checkpoint_finishes_the_run(tmp_path, mdlm_cache, monkeypatch):
    options = {**TINY, "max_steps": 2, "eval_every": 2, "save_every": 2, "output_dir": str(tmp_path / "run")}
    save_for_use = Trainer.save_for_use

    def killed_before_the_final_model(self, finished=False):
        if finished:
            raise KeyboardInterrupt  # the final checkpoint is complete, the model for use is not
        save_for_use(self, finished)

    monkeypatch.setattr(Trainer, "save_for_use", killed_before_the_final_model)
    with pytest.raises(KeyboardInterrupt):
        train(options)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert (run / "checkpoints" / "step-0000002").is_dir() and not (run / "trainer_state.json").exists()
    train({**options, "resume": "latest"})
    assert state(run)["finished"] and state(run)["step"] == 2
    model, ema = load_file(run / "model.safetensors"), load_file(run / "checkpoints/step-0000002/ema.safetensors")
    assert model.keys() == ema.keys() and all(torch.equal(model[k], ema[k]) for k in model)


def test_a_failed_save_leaves_the_previous_model_intact(run_copy, monkeypatch, capsys):
    from transformers import PreTrainedTokenizerBase

    before = (run_copy / "model.safetensors").read_bytes()

    def disk_full(self, folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", disk_full)
    with pytest.raises(SystemExit) as stop:
        main(["--resume", "--output-dir", str(run_copy)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device" in err and "free space" in err
    assert (run_copy / "model.safetensors").read_bytes() == before
    assert state(run_copy)["step"] == 2 and not list(run_copy.glob(".*.tmp*"))


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "trainer_state.json"
    path.write_text("old")

    def fail(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["trainer_state.json"]


def test_a_second_run_on_a_folder_in_use_stops_at_once(run_copy, capsys):
    metrics = (run_copy / "metrics.jsonl").read_text()
    with RunLock(run_copy):  # the live run
        with pytest.raises(SystemExit) as stop:
            main(["--resume", "--output-dir", str(run_copy)])
    assert stop.value.code == 2
    assert f"in use by pid {os.getpid()}" in capsys.readouterr().err
    assert (run_copy / "metrics.jsonl").read_text() == metrics
    assert not list((run_copy / "checkpoints").glob("*.partial"))


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("target", ["optimizer.bin", "random_states_0.pkl", "legacy custom_checkpoint_0.pkl"])
def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(run_copy, tmp_path, capsys, target):
    checkpoint = run_copy / "checkpoints" / "step-0000002"
    marker = tmp_path / "payload-ran"
    if target.startswith("legacy"):  # an older checkpoint layout, whose trainer states were pickles
        (checkpoint / "extra_state.json").unlink()
        for i in range(3):
            torch.save({"state": Payload(marker)}, checkpoint / f"custom_checkpoint_{i}.pkl")
    else:
        torch.save({"state": Payload(marker)}, checkpoint / target)
    with pytest.raises(SystemExit) as stop:
        main(["--resume", "--output-dir", str(run_copy)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert ("never unpickles" if target.startswith("legacy") else "refused unread") in err and str(checkpoint) in err
    assert "weights_only" not in err  # torch's own text advises weights_only=False, the one thing not to do
    assert not marker.exists()


def test_non_utf8_corpus_files_are_named_with_their_count(tmp_path):
    from mdlm.data import load_text_dataset

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("def f():\n    return 1\n")
    (corpus / "noise.txt").write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ValueError, match=r"noise.txt is not UTF-8 text: \d+ undecodable"):
        load_text_dataset(str(corpus), "train")


def test_a_single_txt_corpus_is_split_by_paragraph(tmp_path):
    from mdlm.data import load_text_dataset

    corpus = tmp_path / "book.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: " + "words " * 10 for i in range(80)))
    train_texts = load_text_dataset(str(corpus), "train")["text"]
    held = load_text_dataset(str(corpus), "validation")["text"]
    assert held and len(train_texts) > len(held) and not set(train_texts) & set(held)
    assert len(train_texts) + len(held) + len(load_text_dataset(str(corpus), "test")["text"]) == 80


def test_run_options_are_written_only_once_setup_succeeded(tmp_path, mdlm_cache, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "noise.txt").write_bytes(b"\xff\xfe" * 100)
    out = tmp_path / "run"
    for _ in range(2):  # the same command again: no "already holds a training run"
        with pytest.raises(SystemExit) as stop:
            main(["--config", "tiny", "--dataset", str(corpus), "--output-dir", str(out)])
        assert stop.value.code == 2
        assert "noise.txt is not UTF-8" in capsys.readouterr().err
        assert not (out / "run_options.yaml").exists()


def test_the_final_progress_bar_is_printed_once(tmp_path, mdlm_cache, capsys):
    train({**TINY, "max_steps": 2, "eval_every": 2, "save_every": 2, "progress": True,
           "output_dir": str(tmp_path / "run")})
    err = capsys.readouterr().err
    assert "Writing model shards" not in err  # save_pretrained's bar broke into the training bar's line
    visible = [line.split("\r")[-1] for line in err.split("\n") if line.split("\r")[-1].strip()]
    assert "2/2" in visible[-1]


def test_quick_benchmarks_write_beside_the_committed_results(tmp_path, monkeypatch):
    import mdlm.eval.bench.common as common
    import mdlm.eval.bench.sampling as sampling

    monkeypatch.setattr(common, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(sampling, "ROOT", tmp_path)
    committed = tmp_path / "results" / "sampling.json"
    committed.parent.mkdir()
    committed.write_text('{"committed": true}')
    monkeypatch.setattr(sampling, "run_grid", lambda grid, repeats: [])
    monkeypatch.setattr(sampling, "entropy_experiment", lambda *args: {"skipped": "test"})
    monkeypatch.setattr(sampling, "plot", lambda results, path: Path(path).write_bytes(b"png"))
    monkeypatch.setattr(sampling, "markdown_table", lambda results: "")
    sampling.main(["--quick"])
    assert committed.read_text() == '{"committed": true}' and not (tmp_path / "results" / "sampling.png").exists()
    assert json.loads((tmp_path / "results" / "quick" / "sampling.json").read_text())["grid"] == []
    explicit = tmp_path / "mine"
    sampling.main(["--quick", "--output-dir", str(explicit)])
    assert (explicit / "sampling.json").exists()


# slow: CI itself runs bare pytest from a clean clone, which is this check (10 s)
@pytest.mark.slow
def test_bare_pytest_collects_the_tests_that_import_tests_conftest():
    # -P: like the `pytest` command, the working directory is not put on sys.path (`python -m` would)
    done = subprocess.run([sys.executable, "-P", "-m", "pytest", "--collect-only", "-q", "tests/test_losses.py",
                           "tests/test_model.py"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_prompt_file_is_one_prompt_and_prompts_file_one_per_line(tiny_run_dir, tmp_path, capsys):
    from mdlm.decode.cli import main as generate

    source = tmp_path / "f.py"
    source.write_text("def add(a, b):\n    total = a + b\n    return")
    for flag, count in (("--prompt-file", 1), ("--prompts-file", 3)):
        assert generate(["--model", str(tiny_run_dir), flag, str(source), "--max-new-tokens", "2", "--format",
                         "jsonl", "--device", "cpu", "--seed", "0"]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(records) == count
    assert records[0]["prompt"] == "def add(a, b):"


def test_a_clone_named_mdlm_in_the_working_folder_is_the_package_not_an_empty_namespace(tiny_run_dir, tmp_path):
    """Issue 30: running from the folder that holds a clone named `mdlm` made `import mdlm` take the clone's
    root for an empty namespace package, and a good run then failed to load with "retrain it"."""
    (tmp_path / "mdlm").symlink_to(REPO, target_is_directory=True)
    done = subprocess.run([sys.executable, "-m", "mdlm.decode.cli", "--model", str(tiny_run_dir), "--prompt", "def f(",
                           "--max-new-tokens", "2", "--device", "cpu", "--seed", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    check = subprocess.run([sys.executable, "-c", "import mdlm; print(mdlm.__file__, mdlm.MDLMForMaskedLM.__name__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert check.stdout.split() == [str(tmp_path / "mdlm" / "mdlm" / "__init__.py"), "MDLMForMaskedLM"], check.stderr


def test_a_failed_safetensors_save_is_one_line_with_status_2(tmp_path, capsys):
    """Issue 30: a full disk during an RL save ended in safetensors' own SafetensorError (status 1, a
    traceback under TRL); the save is now named with the folder and the fix."""
    from safetensors.torch import save_file

    from mdlm.decode.cli_errors import run_main
    from mdlm.train.run_folder import save_errors_named

    def save():
        with save_errors_named(tmp_path / "checkpoint-3"):
            save_file({"x": torch.zeros(2)}, str(tmp_path / "missing" / "model.safetensors"))  # the write fails

    with pytest.raises(SystemExit) as stop:
        run_main("mdlm-rl", save)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert "checkpoint-3: could not write the checkpoint" in err[0] and "--resume" in err[0]
