"""RL finetuning entry point: `accelerate launch train/rl.py --algorithm diffu-grpo --task sudoku --model RUN`.

The code is `mdlm.train.rl.cli` (the `mdlm-rl` command): `train/rl/` is the package of trainers, so
this file, which shares its name, only hands over to it. See `mdlm-rl --help`."""

from mdlm.train.rl.cli import main

if __name__ == "__main__":
    main()
