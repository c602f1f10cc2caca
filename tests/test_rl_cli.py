"""train/rl.py end to end on the `tiny` preset: 2 optimizer steps of diffu-GRPO, the run folder, resume,
loading the result, and the bad-input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdlm import MDLMForMaskedLM
from mdlm.train.rl.cli import main
from tests.conftest import save_untrained_sudoku_run

FAST = ["--num-generations", "2", "--per-device-train-batch-size", "2", "--train-examples", "8",
        "--eval-examples", "4", "--diffusion-steps", "4", "--num-iterations", "1", "--logging-steps", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory) -> Path:
    """A run folder as train/sft.py --preset tiny leaves it (untrained: the trainer is what is tested)."""
    return save_untrained_sudoku_run(tmp_path_factory.mktemp("sft-sudoku"))


def test_two_steps_of_diffu_grpo_then_resume_and_load(sudoku_run, tmp_path):
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "rl"
    main(["--algorithm", "diffu-grpo", "--task", "sudoku", "--model", str(sudoku_run), "--output-dir", str(out),
          "--max-steps", "2", "--save-steps", "2", *FAST])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"reward", "reward_std", "kl", "accuracy", "loss"} <= set(records[0])
    assert (out / "reward_curve.png").stat().st_size > 0
    results = json.loads((out / "eval.json").read_text())
    assert results["steps"] == 2 and 0 <= results["after"]["accuracy"] <= 1
    loaded = AutoModelForMaskedLM.from_pretrained(out)
    assert isinstance(loaded, MDLMForMaskedLM) and (out / "model.safetensors").exists()
    # Resume: the run continues from checkpoint-2 to step 3 with its saved options.
    main(["--output-dir", str(out), "--resume", "--max-steps", "3", "--task", "sudoku", "--model", str(sudoku_run),
          "--no-progress"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert json.loads((out / "eval.json").read_text())["steps"] == 3


def test_bad_input_gets_clear_errors(sudoku_run, tmp_path, capsys):
    def error_of(argv):
        with pytest.raises(SystemExit):
            main(argv)
        return capsys.readouterr().err

    base = ["--model", str(sudoku_run), "--output-dir", str(tmp_path / "x"), *FAST]
    assert "sudoku, countdown, signatures" in error_of(["--task", "chess", *base])
    assert "choose one of diffu-grpo" in error_of(["--algorithm", "ppo", "--task", "sudoku", *base])
    err = error_of(["--task", "sudoku", "--max-completion-length", "50", *base])
    assert "max_completion_length=50" in err and "context of 64" in err and "at most" in err
    assert "at least 2" in error_of(["--task", "sudoku", *base, "--num-generations", "1"])
    bare = tmp_path / "bare"
    model = MDLMForMaskedLM.from_pretrained(sudoku_run)
    model.config.mask_token_id = None
    model.save_pretrained(bare)  # no tokenizer either: the loader would take the mask id from it
    assert "tokenizer.json missing" in error_of(["--task", "sudoku", "--model", str(bare), "--output-dir",
                                                 str(tmp_path / "y"), *FAST])


def test_the_script_and_its_help(tmp_path):
    script = Path(__file__).resolve().parents[1] / "train" / "rl.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "--algorithm" in out.stdout and "--config-file" in out.stdout


@pytest.mark.slow
def test_two_processes_train_one_model(sudoku_run, tmp_path):
    """torchrun with 2 processes (gloo on CPU): a group of G=4 split 2 + 2 across them, one model."""
    from safetensors.torch import load_file

    script = Path(__file__).resolve().parents[1] / "train" / "rl.py"
    out = tmp_path / "rl"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
               "--task", "sudoku", "--model", str(sudoku_run), "--output-dir", str(out), "--max-steps", "2",
               "--num-generations", "4", "--per-device-train-batch-size", "2", "--num-iterations", "1",
               "--diffusion-steps", "4", "--train-examples", "8", "--eval-examples", "4", "--no-progress",
               "--save-steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["rollouts"] == 4  # each process decoded 2, the advantages saw the group of 4
    assert load_file(out / "model.safetensors").keys() == load_file(sudoku_run / "model.safetensors").keys()


@pytest.fixture(scope="module")
def digit_run(tmp_path_factory) -> Path:
    """A few SFT steps from scratch: the model writes digits, so rollouts earn rewards that differ within a
    group and the updates move the weights (an untrained model's rollouts all score 0)."""
    from mdlm.train.sft import finetune

    folder = tmp_path_factory.mktemp("sft") / "run"
    return finetune({"task": "sudoku", "preset": "tiny", "max_examples": 512, "max_steps": 25, "batch_size": 16,
                     "lr": 3e-3, "warmup_steps": 0, "eval_every": 1000, "save_every": 1000, "progress": False,
                     "output_dir": str(folder)})


def _rl(sudoku_run, out, *extra):
    main(["--task", "sudoku", "--model", str(sudoku_run), "--output-dir", str(out), "--no-eval-before", *FAST, *extra])


@pytest.mark.slow
def test_resume_is_bit_identical_to_a_run_never_stopped(digit_run, tmp_path):
    """The rollout RNG travels in the checkpoint: 2 steps then --resume to 4 equals 4 straight (constant
    learning rate, so the schedule does not depend on --max-steps)."""
    from safetensors.torch import load_file

    config = tmp_path / "rl.yaml"
    config.write_text("lr_scheduler_type: constant\nlearning_rate: 0.001\n")
    _rl(digit_run, tmp_path / "straight", "--config-file", str(config), "--max-steps", "4", "--save-steps", "2")
    _rl(digit_run, tmp_path / "broken", "--config-file", str(config), "--max-steps", "2", "--save-steps", "2")
    main(["--output-dir", str(tmp_path / "broken"), "--resume", "--max-steps", "4", "--task", "sudoku", "--model",
          str(digit_run), "--no-progress"])
    logs = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("straight", "broken")]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    assert [r["reward"] for r in logs[0]] == [r["reward"] for r in logs[1]]
    straight, resumed = (load_file(tmp_path / run / "model.safetensors") for run in ("straight", "broken"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert len({r["reward"] for r in logs[0]}) > 1 and max(r["reward_std"] for r in logs[0]) > 0
    assert not torch.equal(straight["lm_head.weight"], load_file(digit_run / "model.safetensors")["lm_head.weight"])


def test_resume_never_picks_a_checkpoint_whose_save_was_killed(sudoku_run, tmp_path, capsys):
    out = tmp_path / "rl"
    _rl(sudoku_run, out, "--max-steps", "2", "--save-steps", "1")
    half = out / "checkpoint-2"
    # The rollout RNG is saved, advanced past its seed (the slow test above checks that resume restores it).
    saved = torch.load(half / "rollout_rng_0.pt", weights_only=True)
    assert not torch.equal(saved, torch.Generator().manual_seed(42).get_state())
    # What a kill during TRL's save leaves: the weights written, not the optimizer, RNG or trainer state.
    for path in half.iterdir():
        if path.name not in ("model.safetensors", "config.json"):
            path.unlink()
    main(["--output-dir", str(out), "--resume", "--max-steps", "3", "--task", "sudoku", "--model", str(sudoku_run),
          "--no-progress"])
    assert "removed checkpoint-2" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert json.loads((out / "eval.json").read_text())["steps"] == 3
    assert (half / "trainer_state.json").is_file() and (half / "optimizer.pt").is_file()


def test_the_table_pairs_one_sft_run_per_seed(sudoku_run, tmp_path):
    """Both rows of the README table over seeds: seed i starts from the i-th SFT run, and the SFT row is
    the mean over the distinct SFT runs (not one run's number repeated)."""
    import shutil

    from mdlm.train.rl import table

    other = tmp_path / "sft-other"
    shutil.copytree(sudoku_run, other)
    out = tmp_path / "rl-table.json"
    table.main(["--task", "sudoku", "--sft", str(sudoku_run), str(other), "--seeds", "0", "1", "--runs",
                str(tmp_path / "runs"), "--out", str(out), "--", "--max-steps", "1", "--save-steps", "1", *FAST])
    record = json.loads(out.read_text())
    assert [r["sft_run"] for r in record["seeds"]] == [str(sudoku_run), str(other)]
    assert record["sft_runs"] == sorted([str(sudoku_run), str(other)])
    sft = [r["sft_accuracy"] for r in record["seeds"]]
    assert record["sft_accuracy_mean"] == pytest.approx(sum(sft) / 2)
    with pytest.raises(SystemExit):
        table.main(["--task", "sudoku", "--sft", "a", "b", "--seeds", "0", "1", "2"])
