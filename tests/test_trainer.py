"""The training loop's seams (issue 16, item 5): options classes that inherit the loop's and declare only
their own fields, one RunFolder that checks a resume on every process, and the `compute_loss` hook a new
objective overrides instead of copying `Trainer.train`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mdlm import MDLMForMaskedLM
from mdlm.losses import compute_loss
from mdlm.train.pretrain import PretrainArgs
from mdlm.train.sft import SFTArgs
from mdlm.train.run_folder import RunFolder
from mdlm.train.trainer import Trainer, TrainerConfig, make_accelerator
from tests.conftest import tiny_config


@pytest.mark.parametrize("cls", [PretrainArgs, SFTArgs])
def test_script_options_inherit_the_loop_and_declare_only_their_own_fields(cls):
    assert issubclass(cls, TrainerConfig)
    base = {f.name: f for f in dataclasses.fields(TrainerConfig)}
    for name in cls.__annotations__:  # the fields the class itself declares
        f = cls.__dataclass_fields__[name]
        assert name not in base or f.default != base[name].default, f"{cls.__name__}.{name} repeats TrainerConfig"
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_an_option_is_one_field_with_its_range_and_choices():
    """Issue 29 item 3: a new option is one dataclass field; its flag, help, choices and range checks
    all come from it."""
    import argparse

    from mdlm.train.options import add_option_arguments, option, validate_options

    @dataclasses.dataclass
    class Args(TrainerConfig):
        width: int | None = option(None, "model width", at_least=8)
        mode: str = option("fast", "fast | exact", choices=("fast", "exact"))
        share: float = option(0.5, "a fraction", at_least=0, below=1)

    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    add_option_arguments(parser, Args)
    given = vars(parser.parse_args(["--output-dir", "x", "--width", "16", "--mode", "exact"]))
    assert given == {"output_dir": "x", "width": 16, "mode": "exact"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--output-dir", "x", "--mode", "slow"])  # argparse knows the choices
    validate_options(Args(**given), "s.py")
    for bad, message in (({"width": 4}, "--width must be >= 8, got 4"), ({"share": 1.0}, r"--share must be in \[0, 1\)"),
                         ({"mode": "slow"}, "unknown --mode 'slow'; choose one of fast, exact"),
                         ({"max_steps": 0}, "--max-steps must be >= 1"), ({"lr": 0.0}, "--lr must be > 0"),
                         ({"width": "wide"}, "--width must be an int, got 'wide'")):
        with pytest.raises(ValueError, match=message):
            validate_options(Args(**{**given, **bad}), "s.py")


def fresh_options(tmp_path) -> dict:
    return {"output_dir": str(tmp_path), "lr": 1e-3, "max_steps": 10, "resume": None, "overwrite": False}


def test_run_folder_refuses_a_changed_resume_on_every_process(tmp_path):
    options = fresh_options(tmp_path)
    with RunFolder(tmp_path, options) as run:
        assert not run.resuming
        run.save_options()
    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 1}))  # the folder now holds a run
    for is_main in (True, False):
        with pytest.raises(ValueError, match=r'--resume with options that differ.*"lr": \[0.001, 0.5\]'):
            with RunFolder(tmp_path, {**options, "resume": "latest", "lr": 0.5}, is_main=is_main):
                pass
    # allowed changes, and an option newer than the saved run, resume; the saved options stay as they were
    with RunFolder(tmp_path, {**options, "resume": "latest", "max_steps": 20, "new_option": 1}) as run:
        assert run.resuming
        run.save_options()
    saved = {k: v for k, v in options.items() if k != "overwrite"}  # a one-off of the saving invocation
    assert RunFolder.read_options(tmp_path) == saved


class Rows:
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, indices):
        return {"input_ids": self.ids[indices]}


class KDCETrainer(Trainer):
    """A new objective by subclassing: k-DCE, with a record of the calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def compute_loss(self, model, batch, generator, step):
        self.calls.append(model.training)
        return compute_loss(model, batch["input_ids"], "mdlm", "k-dce", generator=generator)


def test_a_new_objective_overrides_compute_loss_and_reuses_train(tmp_path, stdlib_tokenizer):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config(stdlib_tokenizer, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64))
    ids = torch.randint(0, 200, (8, 16))
    config = TrainerConfig(output_dir=str(tmp_path), max_steps=2, batch_size=2, warmup_steps=1, eval_every=2,
                           eval_batches=1, save_every=2, log_every=1, progress=False)
    with pytest.raises(NotImplementedError, match="override Trainer.compute_loss"):
        Trainer(model, None, Rows(ids), Rows(ids), None, config, accelerator=make_accelerator()).train()
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = KDCETrainer(model, None, Rows(ids), Rows(ids), None, config, accelerator=make_accelerator())
    trainer.train()
    # validation before training (eval mode), two training steps, the final validation
    assert trainer.calls == [False, True, True, False]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_nats_per_token" in r] == [0, 2]
    assert json.loads((tmp_path / "trainer_state.json").read_text())["finished"]
