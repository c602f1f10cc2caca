"""RL finetuning of masked diffusion LMs: TRL trainers over one shared base (`base.py`): diffu-GRPO (d1),
MDPO (`mdpo.py`) and CJ-GRPO (`cj_grpo.py`).

    from mdlm.train.rl import ALGORITHMS
    config_cls, trainer_cls = ALGORITHMS["diffu-grpo"]()
"""

from __future__ import annotations


def _diffu_grpo():
    from mdlm.train.rl.diffu_grpo import DiffuGRPOConfig, DiffuGRPOTrainer

    return DiffuGRPOConfig, DiffuGRPOTrainer


def _mdpo():
    from mdlm.train.rl.mdpo import MDPOConfig, MDPOTrainer

    return MDPOConfig, MDPOTrainer


def _cj_grpo():
    from mdlm.train.rl.cj_grpo import CJGRPOConfig, CJGRPOTrainer

    return CJGRPOConfig, CJGRPOTrainer


ALGORITHMS = {"diffu-grpo": _diffu_grpo, "mdpo": _mdpo, "cj-grpo": _cj_grpo}


def get_algorithm(name: str):
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]()
