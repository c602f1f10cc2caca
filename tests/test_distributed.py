"""Past one machine: the shipped accelerate configs (configs/accelerate/) are valid, the CPU DDP config
trains two processes to the loss of one, a killed two-process run resumes to the same weights, and the
FSDP config is refused with a clear line where accelerate cannot form FSDP (no accelerator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"
SCRIPT = str(REPO / "train" / "pretrain.py")
TINY = ["--config", "tiny", "--max-documents", "20", "--seq-len", "64", "--eval-batches", "4", "--log-every", "2",
        "--no-progress", "--lr", "3e-3", "--seed", "1"]

EXPECTED = {"ddp_cpu.yaml": ("MULTI_GPU", 1, 2), "ddp_gpus.yaml": ("MULTI_GPU", 1, 8),
            "ddp_multinode.yaml": ("MULTI_GPU", 2, 16), "fsdp_gpus.yaml": ("FSDP", 1, 8)}


def test_every_shipped_accelerate_config_loads_as_documented():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    docs = (REPO / "docs" / "pretraining.md").read_text()
    for name, (kind, machines, processes) in EXPECTED.items():
        config = load_config_from_file(str(CONFIGS / name))
        assert (config.distributed_type.value, config.num_machines, config.num_processes) == (kind, machines,
                                                                                               processes)
        assert f"configs/accelerate/{name}" in docs, f"{name} has no launch command in docs/pretraining.md"
    fsdp = load_config_from_file(str(CONFIGS / "fsdp_gpus.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_transformer_layer_cls_to_wrap"] == "Block"
    from mdlm.model import Block  # the class the FSDP config names as its shard unit exists
    assert Block.__name__ == "Block"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA machines FSDP is formed")
def test_fsdp_config_without_an_accelerator_is_refused_with_the_cpu_alternative(monkeypatch):
    from mdlm.train.trainer import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP needs CUDA GPUs.*ddp_cpu.yaml"):
        make_accelerator()


def launch(args: list[str], processes: int, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    prefix = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp_cpu.yaml"),
              "--num_processes", str(processes)] if processes > 1 else [sys.executable]
    done = subprocess.run([*prefix, SCRIPT, *TINY, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def validation_nats(run: Path, blocks: int = 64, repeats: int = 4) -> float:
    """The run's model scored on the same validation blocks with the same masks, whatever produced it
    (the trainer's own validation draws its masks per process, so it differs between launch shapes)."""
    from transformers import AutoModelForMaskedLM

    from mdlm.data import packed_split
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.trainer import objective_loss_fn

    model = AutoModelForMaskedLM.from_pretrained(run).eval()
    data = packed_split("stdlib", "validation", load_tokenizer(run), 64)
    rows = data[[i * len(data) // blocks for i in range(blocks)]]
    batch = {key: rows[key] for key in ("input_ids", "attention_mask") if key in rows}
    loss_fn, generator = objective_loss_fn("mdlm", "t-dce"), torch.Generator().manual_seed(0)
    with torch.no_grad():
        outs = [loss_fn(model, batch, generator, 0) for _ in range(repeats)]
    return float(sum(o.sum_nll for o in outs) / sum(o.num_tokens for o in outs))


@pytest.mark.slow
def test_ddp_config_two_processes_reach_the_loss_of_one_with_the_same_global_batch(tmp_path, mdlm_cache):
    steps = ["--max-steps", "60", "--eval-every", "30", "--save-every", "60"]
    one, two, untrained = tmp_path / "one", tmp_path / "two", tmp_path / "untrained"
    launch([*steps, "--batch-size", "16", "--output-dir", str(one)], processes=1)
    launch([*steps, "--batch-size", "8", "--output-dir", str(two)], processes=2)
    launch(["--max-steps", "1", "--lr", "1e-9", "--output-dir", str(untrained)], processes=1)
    tokens = [json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["tokens"] for run in (one, two)]
    assert tokens[0] == tokens[1] > 0.99 * 60 * 16 * 64  # one global stream: the same blocks, split in two
    # The training masks differ (one generator per process), so the models agree in loss, not bit for bit.
    start, nats_one, nats_two = validation_nats(untrained), validation_nats(one), validation_nats(two)
    assert nats_one < start - 0.5 and nats_two < start - 0.5, (start, nats_one, nats_two)
    assert abs(nats_one - nats_two) < 0.1, (nats_one, nats_two)


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, mdlm_cache):
    common = ["--max-steps", "12", "--eval-every", "6", "--save-every", "4", "--batch-size", "4", "--grad-accum", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch([*common, "--output-dir", str(straight)], processes=2)
    launch([*common, "--output-dir", str(resumed), "--stop-at-step", "10"], processes=2)  # last checkpoint: 8
    launch([*common, "--output-dir", str(resumed), "--resume"], processes=2)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "trainer_state.json").read_text())["finished"]
