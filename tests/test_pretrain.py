"""`train/pretrain.py` end to end: a real `accelerate launch`, exact resume, two processes under torchrun,
options from YAML, and clear errors. Tiny preset, a handful of stdlib files, few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

from mdlm.train.pretrain import PretrainArgs, main, parse_args, train

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "train" / "pretrain.py")
TINY = dict(config="tiny", max_documents=20, seq_len=64, batch_size=8, eval_batches=4, log_every=2,
            progress=False)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def validation_curve(run: Path) -> list[float]:
    return [r["val_nats_per_token"] for r in metrics(run) if "val_nats_per_token" in r]


def cli(options: dict) -> list[str]:
    argv = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is False and key == "progress":
            argv.append("--no-progress")
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def run_command(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_accelerate_launch_trains_a_tiny_model_that_lowers_validation_loss(tmp_path, mdlm_cache):
    run = tmp_path / "run"
    options = {**TINY, "max_steps": 40, "eval_every": 20, "save_every": 20, "lr": 3e-3, "output_dir": run}
    run_command([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                 "--dynamo_backend", "no", SCRIPT, *cli(options)])
    curve = validation_curve(run)
    assert len(curve) == 3 and curve[-1] < curve[0] - 0.5, curve
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["finished"] and state["step"] == 40
    assert (run / "training_curve.png").stat().st_size > 1000
    assert yaml.safe_load((run / "run_options.yaml").read_text())["max_steps"] == 40
    model = AutoModelForMaskedLM.from_pretrained(run)
    tokenizer = AutoTokenizer.from_pretrained(run)
    assert model.config.vocab_size == len(tokenizer) and model.config.mask_token_id == tokenizer.mask_token_id
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-0000020", "step-0000040"]


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, mdlm_cache):
    options = {**TINY, "max_steps": 16, "eval_every": 8, "save_every": 6, "seed": 3, "ema": 0.9, "grad_accum": 2}
    straight = train({**options, "output_dir": str(tmp_path / "straight")})
    # stop at step 10 as if killed; the last checkpoint is at step 6, so steps 7-10 are replayed on resume
    stopped = train({**options, "output_dir": str(tmp_path / "resumed"), "stop_at_step": 10})
    assert not json.loads((stopped / "trainer_state.json").read_text())["finished"]
    resumed = train({**options, "output_dir": str(tmp_path / "resumed"), "resume": "latest"})
    for name in ("model.safetensors", "checkpoints/step-0000016/model.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    keep = ("step", "tokens", "loss", "lr", "val_nats_per_token")
    strip = lambda rows: [{k: r[k] for k in keep if k in r} for r in rows]  # noqa: E731 (timings differ)
    assert strip(metrics(straight))[-4:] == strip(metrics(resumed))[-4:]


def test_interrupted_and_resumed_run_ends_with_the_same_weights_in_few_steps(tmp_path, mdlm_cache):
    """The fast sibling of the test above: 4 steps of 2 micro-batches, killed at 3 (checkpoint at 2)."""
    options = {**TINY, "max_steps": 4, "eval_every": 4, "save_every": 2, "seed": 3, "ema": 0.9, "grad_accum": 2,
               "batch_size": 4, "eval_batches": 1}
    straight = train({**options, "output_dir": str(tmp_path / "straight")})
    train({**options, "output_dir": str(tmp_path / "resumed"), "stop_at_step": 3})
    resumed = train({**options, "output_dir": str(tmp_path / "resumed"), "resume": "latest"})
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    keep = ("step", "tokens", "loss", "val_nats_per_token")
    assert [{k: r[k] for k in keep if k in r} for r in metrics(straight)] == \
        [{k: r[k] for k in keep if k in r} for r in metrics(resumed)]


def test_processes_read_disjoint_batches_and_a_resumed_step_reads_the_same_ones():
    """The data half of the two-process test above, without processes: every (step, micro-batch, rank)
    reads its own slice of one shuffled stream, and the stream is a function of (seed, position)."""
    from mdlm.train.trainer import ShuffledStream, batch_indices

    stream = ShuffledStream(50, seed=3)
    seen = [batch_indices(stream, step, micro, rank, 2, 4, 2) for step in range(3) for micro in range(2)
            for rank in range(2)]
    flat = [i for batch in seen for i in batch]
    assert len(flat) == 48 and len(set(flat[:48])) == 48  # less than one epoch: no example twice
    assert batch_indices(ShuffledStream(50, seed=3), 2, 1, 1, 2, 4, 2) == seen[-1]
    assert batch_indices(ShuffledStream(50, seed=4), 2, 1, 1, 2, 4, 2) != seen[-1]


@pytest.mark.slow
def test_two_processes_keep_identical_replicas_and_split_the_data(tmp_path, mdlm_cache):
    run = tmp_path / "ddp"
    options = {**TINY, "max_steps": 6, "eval_every": 3, "save_every": 6, "grad_accum": 2, "output_dir": run}
    run_command([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", SCRIPT, *cli(options)])
    rows = metrics(run)
    first = next(r["first_batch_per_process"] for r in rows if "first_batch_per_process" in r)
    assert len(first) == 2 and len(first[0]) == 8 and not set(first[0]) & set(first[1])
    evaluations = [r for r in rows if "replica_spread" in r]
    assert len(evaluations) == 3 and all(r["replica_spread"] == 0.0 for r in evaluations)
    assert rows[-1]["tokens"] == 6 * 2 * 2 * 8 * 64  # steps x processes x micro-batches x batch x length
    assert validation_curve(run)[-1] < validation_curve(run)[0]


def test_ar_objective_with_bf16_autocast_on_cpu(tmp_path, mdlm_cache):
    run = train({**TINY, "objective": "ar", "mixed_precision": "bf16", "max_steps": 4, "eval_every": 4,
                 "save_every": 4, "output_dir": str(tmp_path / "ar")})
    model = AutoModelForMaskedLM.from_pretrained(run)
    assert model.config.attention == "causal" and model.config.objective == "ar"
    assert all(torch.isfinite(torch.tensor(v)) for v in validation_curve(run))


def test_options_come_from_yaml_and_the_command_line_overrides_them(tmp_path):
    config = tmp_path / "options.yaml"
    config.write_text(yaml.safe_dump({"config": "tiny", "max-steps": 7, "lr": 0.01, "hidden_size": 32}))
    args = parse_args(["--config-file", str(config), "--lr", "0.002", "--objective", "ar"]).resolved()
    assert (args.config, args.max_steps, args.lr, args.hidden_size) == ("tiny", 7, 0.002, 32)
    assert args.attention == "causal" and args.seq_len == 64 and args.output_dir == "runs/ar-tiny"
    assert PretrainArgs.from_dict({"max-steps": 3}).max_steps == 3


@pytest.mark.parametrize("options, message", [
    ({"seq_len": 128}, "larger than the model's context of 64"),
    ({"objective": "ar", "attention": "bidirectional"}, "needs causal attention"),
    ({"loss": "l2"}, "unknown --loss"),
    ({"config": "huge"}, "unknown --config"),
    ({"max_stepz": 3}, r"unknown option\(s\) \['max_stepz'\]"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        PretrainArgs.from_dict({"config": "tiny", **options}).resolved()


def test_run_folder_errors(tmp_path, mdlm_cache, capsys):
    run = tmp_path / "run"
    train({**TINY, "max_steps": 2, "eval_every": 2, "save_every": 2, "output_dir": str(run)})
    with pytest.raises(FileExistsError, match="already holds a training run.*--resume.*--overwrite"):
        train({**TINY, "max_steps": 2, "output_dir": str(run)})
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        train({**TINY, "max_steps": 2, "output_dir": str(run), "resume": str(tmp_path)})
    with pytest.raises(ValueError, match="differ from the run's"):
        train({**TINY, "max_steps": 4, "lr": 0.5, "output_dir": str(run), "resume": "latest"})
    with pytest.raises(SystemExit) as exit_info:  # the command line prints the message, not a traceback
        main(["--config", "tiny", "--output-dir", str(run), "--max-steps", "2"])
    assert exit_info.value.code == 2 and "already holds a training run" in capsys.readouterr().err
    train({**TINY, "max_steps": 2, "eval_every": 2, "save_every": 2, "output_dir": str(run), "overwrite": True})
    assert json.loads((run / "trainer_state.json").read_text())["finished"]
    # a moved run resumes in its new folder with its own saved options; only the steps are given
    moved = tmp_path / "moved"
    run.rename(moved)
    train({"output_dir": str(moved), "resume": "latest", "max_steps": 3})
    state = json.loads((moved / "trainer_state.json").read_text())
    assert state["finished"] and state["step"] == 3


def test_ensure_run_trains_once_and_then_reuses_the_run(tmp_path, mdlm_cache, monkeypatch):
    from mdlm.eval.bench.common import ensure_run

    monkeypatch.setenv("MDLM_BENCH_RUNS", str(tmp_path))
    small = {**TINY, "max_steps": 2, "eval_every": 2, "save_every": 2, "warmup_steps": 1}
    run = ensure_run("probe", **small)
    assert run == tmp_path / "probe" and json.loads((run / "trainer_state.json").read_text())["finished"]
    stamp = (run / "model.safetensors").stat().st_mtime_ns
    assert ensure_run("probe", **small) == run
    assert (run / "model.safetensors").stat().st_mtime_ns == stamp


def test_accelerate_launch_runs_the_script_to_a_loadable_run(tmp_path, mdlm_cache):
    """The fast sibling of the first test: the real `accelerate launch`, two steps."""
    run = tmp_path / "run"
    options = {**TINY, "max_steps": 2, "eval_every": 2, "save_every": 2, "output_dir": run}
    run_command([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT, *cli(options)])
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["finished"] and state["step"] == 2
    assert yaml.safe_load((run / "run_options.yaml").read_text())["max_steps"] == 2
    model = AutoModelForMaskedLM.from_pretrained(run)
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(run))


# slow: the accelerate launch test runs the same script (8 s)
@pytest.mark.slow
def test_python_train_script_runs_without_accelerate(tmp_path, mdlm_cache):
    run = tmp_path / "plain"
    done = run_command([sys.executable, SCRIPT, *cli({**TINY, "max_steps": 2, "eval_every": 2, "save_every": 2,
                                                      "output_dir": run})])
    assert "options:" in done.stdout and "max_steps: 2" in done.stdout
    assert json.loads((run / "trainer_state.json").read_text())["finished"]


def test_init_from_another_run_and_an_existing_tokenizer(tmp_path, mdlm_cache):
    base = train({**TINY, "max_steps": 2, "eval_every": 2, "save_every": 2, "output_dir": str(tmp_path / "a")})
    # continue as an AR model from the MDLM's weights; a vanishing learning rate keeps them
    tuned = train({**TINY, "objective": "ar", "init_from": str(base), "max_steps": 1, "lr": 1e-12, "ema": 0,
                   "eval_every": 1, "save_every": 1, "output_dir": str(tmp_path / "b")})
    a, b = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert AutoModelForMaskedLM.from_pretrained(tuned).config.attention == "causal"
    assert (base / "tokenizer.json").read_text() == (tuned / "tokenizer.json").read_text()
    fresh = train({**TINY, "tokenizer": str(base), "hidden_size": 32, "max_steps": 1, "eval_every": 1,
                   "save_every": 1, "output_dir": str(tmp_path / "c")})
    model = AutoModelForMaskedLM.from_pretrained(fresh)
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(AutoTokenizer.from_pretrained(base))


def test_ensure_run_waits_for_another_trainer_of_the_same_run(tmp_path, mdlm_cache, monkeypatch):
    import fcntl
    import threading
    import time

    from mdlm.eval.bench.common import ensure_run

    monkeypatch.setenv("MDLM_BENCH_RUNS", str(tmp_path))
    small = {**TINY, "max_steps": 2, "eval_every": 2, "save_every": 2, "warmup_steps": 1}
    with open(tmp_path / ".probe.lock", "w") as held:  # as if another benchmark were training it
        fcntl.flock(held, fcntl.LOCK_EX)
        result = {}
        worker = threading.Thread(target=lambda: result.update(run=ensure_run("probe", **small)))
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive() and not (tmp_path / "probe").exists()
    worker.join(timeout=120)
    assert json.loads((result["run"] / "trainer_state.json").read_text())["finished"]
