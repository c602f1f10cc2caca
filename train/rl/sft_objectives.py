"""The SFT recipe of `train/sft.py` (its data, training loop and run folder) with another training
objective, for the models RL compares against or needs:

- `as-arm`: the any-subset AR model (`mdlm/as_arm.py`, two-stream, joint mask) that d2-AnyOrder trains,
  usually continued from a masked-diffusion SFT run (same weights, same tokenizer);
- `ar`: the autoregressive baseline of the same backbone (config attention "causal"), SFT-ed the same way:
  from scratch with the same byte-level tokenizer (`scratch_model` trains it from the same seed), or from
  the causal pretrained run (`mdlm-pretrain --objective ar`) where the diffusion SFT starts from
  `mdlm-small`; for the TRL GRPOTrainer control (`train/rl/ar_control.py`).

    finetune_with_objective({"task": "sudoku", "model": "runs/sft-sudoku", "max_steps": 150, "lr": 5e-4,
                             "output_dir": "runs/sft-sudoku-asarm"}, "as-arm")

The prompt is never scored (`fixed`), exactly as in train/sft.py; the saved config names the objective
and attention, so loaders and `mdlm-rl` see what the run is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

OBJECTIVES = ("as-arm", "ar")


def _is_causal_run(run: str) -> bool:
    import json

    config = Path(run) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("attention") == "causal"


def finetune_with_objective(options: dict, objective: str) -> Path:
    """One SFT run of `objective` (see the module docstring); `options` are train/sft.py's. Returns the
    run folder."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    from mdlm import MDLMForMaskedLM
    from mdlm.tokenizer import load_tokenizer
    from mdlm.train.sft import SFTArgs, build_data, scratch_model
    from mdlm.train.run_folder import RunFolder
    from mdlm.train.trainer import Trainer, make_accelerator, objective_loss_fn

    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}; choose one of {', '.join(OBJECTIVES)} (plain masked-diffusion "
                         "SFT is train/sft.py)")
    args = SFTArgs.from_dict(options).resolved()
    if objective == "ar" and args.model and not _is_causal_run(args.model):
        raise ValueError(f"--model {args.model} is not a causal run: the autoregressive baseline starts from scratch "
                         "(--preset) or from a causal pretrained run (mdlm-pretrain --objective ar); a masked-"
                         "diffusion run's weights are not a causal model's")
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=True)  # several runs in one Python process
    accelerator = make_accelerator(args.mixed_precision)
    with RunFolder(Path(args.output_dir), dataclasses.asdict(args), accelerator.is_main_process,
                   accelerator.wait_for_everyone) as run:
        set_seed(args.seed)
        if args.model:
            network, tokenizer = MDLMForMaskedLM.from_pretrained(args.model), load_tokenizer(args.model)
        else:
            tokenizer, network = scratch_model(args)
        network.config.objective = objective
        network.config.attention = "causal" if objective == "ar" else "bidirectional"
        train_data, eval_data = build_data(args, tokenizer, args.seq_len or network.config.max_position_embeddings,
                                           accelerator.print)
        run.save_options()
        trainer = Trainer(network.train(), tokenizer, train_data, eval_data, objective_loss_fn(objective, args.loss),
                          args, accelerator=accelerator, title=f"sft {objective} {args.task}")
        result = trainer.train()
        accelerator.wait_for_everyone()
    return result
