"""RL finetuning of masked diffusion LMs: TRL trainers over one shared base (`base.py`): diffu-GRPO (d1),
MDPO (`mdpo.py`), CJ-GRPO (`cj_grpo.py`) and d2-AnyOrder (`d2_anyorder.py`, exact trajectory likelihood).

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


def _d2_anyorder():
    from mdlm.train.rl.d2_anyorder import D2AnyOrderConfig, D2AnyOrderTrainer

    return D2AnyOrderConfig, D2AnyOrderTrainer


ALGORITHMS = {"diffu-grpo": _diffu_grpo, "mdpo": _mdpo, "cj-grpo": _cj_grpo, "d2-anyorder": _d2_anyorder}


def get_algorithm(name: str):
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]()
