"""RL run folders with pretraining's guarantees (issue 30): one run at a time (a second run, or a --resume
of a live run, stops at once), a --resume of a finished run trains nothing, a run killed after its final
checkpoint is finished from it without training, a tampered checkpoint is refused in one line (never
advising weights_only=False) and its payload never runs, TRL's raw log dicts never reach the console.
One 2-step diffu-GRPO run of an untrained tiny sudoku model, copied per test."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mdlm.train.rl.cli import main
from mdlm.train.run_folder import RunLock
from tests.conftest import save_untrained_sudoku_run

FAST = ["--num-generations", "2", "--per-device-train-batch-size", "2", "--train-examples", "4",
        "--eval-examples", "2", "--diffusion-steps", "2", "--num-iterations", "1", "--logging-steps", "1",
        "--no-progress", "--no-eval-before"]


@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory) -> Path:
    return save_untrained_sudoku_run(tmp_path_factory.mktemp("sft-sudoku"))


@pytest.fixture(scope="module")
def finished(sudoku_run, tmp_path_factory) -> Path:
    """A finished 2-step run with checkpoints at steps 1 and 2."""
    out = tmp_path_factory.mktemp("rl") / "run"
    main(["--task", "sudoku", "--model", str(sudoku_run), "--output-dir", str(out), "--max-steps", "2",
          "--save-steps", "1", *FAST])
    return out


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target


def resume(run: Path, sudoku_run: Path, *extra):
    main(["--output-dir", str(run), "--resume", "--task", "sudoku", "--model", str(sudoku_run), "--no-progress",
          *extra])


def steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_finished_run_says_so(finished):
    assert json.loads((finished / "trainer_state.json").read_text()) == {"step": 2, "max_steps": 2, "finished": True}
    assert steps(finished) == [1, 2]


def test_a_second_run_or_a_resume_of_a_live_run_stops_at_once(copy, sudoku_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir() if p.name != ".run.lock"}
    with RunLock(copy):  # the live run
        for argv in (["--overwrite", "--max-steps", "2", *FAST], ["--resume", "--max-steps", "3"]):
            with pytest.raises(SystemExit) as stop:
                main(["--task", "sudoku", "--model", str(sudoku_run), "--output-dir", str(copy), *argv])
            assert stop.value.code == 2
            assert f"in use by pid {os.getpid()}" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir() if p.name != ".run.lock"} == before


def test_resume_of_a_finished_run_trains_nothing(copy, sudoku_run, capsys):
    model = (copy / "model.safetensors").read_bytes()
    resume(copy, sudoku_run)
    assert "finished at step 2; nothing to train" in capsys.readouterr().err
    assert (copy / "model.safetensors").read_bytes() == model and steps(copy) == [1, 2]


def test_a_run_killed_after_its_final_checkpoint_is_finished_from_it(copy, sudoku_run, capsys):
    from safetensors.torch import load_file

    for name in ("trainer_state.json", "model.safetensors"):  # killed before the model for use was written
        (copy / name).unlink()
    resume(copy, sudoku_run)
    assert "finishing the run from it" in capsys.readouterr().err
    assert steps(copy) == [1, 2]
    final, checkpoint = load_file(copy / "model.safetensors"), load_file(copy / "checkpoint-2" / "model.safetensors")
    assert final.keys() == checkpoint.keys() and all(torch.equal(final[k], checkpoint[k]) for k in final)
    assert json.loads((copy / "trainer_state.json").read_text())["finished"]


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("target", ["rng_state.pth", "optimizer.pt", "scheduler.pt", "rollout_rng_0.pt"])
def test_a_tampered_checkpoint_is_one_line_and_its_code_never_runs(copy, sudoku_run, tmp_path, capsys, target):
    marker = tmp_path / "payload-ran"
    torch.save({"state": Payload(marker)}, copy / "checkpoint-2" / target)
    with pytest.raises(SystemExit) as stop:
        resume(copy, sudoku_run, "--max-steps", "3")
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert "refused unread" in err[0] and "checkpoint-2" in err[0] and "weights_only" not in err[0]
    assert not marker.exists() and steps(copy) == [1, 2]


def test_without_max_steps_the_step_count_is_said_first_and_no_raw_log_dicts_reach_the_console(sudoku_run, tmp_path,
                                                                                                  capsys):
    """Issue 30: the README's cj-grpo command ran TRL's default epochs (about 24,000 steps) with no word.
    Issue 29 item 6: TRL's raw log dicts (its PrinterCallback) and the shard-writing bars broke into the bar."""
    import re

    config = tmp_path / "rl.yaml"
    config.write_text("num_train_epochs: 0.5\n")
    main(["--task", "sudoku", "--model", str(sudoku_run), "--output-dir", str(tmp_path / "rl"), "--config-file",
          str(config), *FAST])
    out = capsys.readouterr()
    assert re.search(r"no --max-steps: TRL trains num_train_epochs=0.5 epochs of the train prompts, \d+ optimizer "
                     r"steps; pass --max-steps", out.err)
    assert "{'loss'" not in out.out + out.err and "'reward'" not in out.out + out.err
    assert "Writing model shards" not in out.err
