"""`accelerate launch` with the script's own error line last and its exit status passed through.

    python -m mdlm.train.launch [accelerate launch options] train/pretrain.py [script options]
    mdlm-launch [accelerate launch options] train/pretrain.py [script options]     # the same

`accelerate launch` turns any failing process into a `CalledProcessError` traceback of 25-70 lines
after the script's output, and exits 1, so the script's one-line error (`mdlm.decode.cli_errors`) scrolls away and
its status 2 (bad input) is lost. This runs accelerate's own launcher in-process and, when the script
fails, exits with the script's status and prints nothing more: the script's line stays the last one.
(`accelerate launch --quiet` also keeps the line last, but exits 1.) With `--num_processes` below 1,
which accelerate silently runs as one process, it stops with a one-line error.
"""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(argv)
    if args.num_processes is not None and args.num_processes < 1:
        print(f"mdlm.train.launch: error: --num_processes must be >= 1, got {args.num_processes}", file=sys.stderr)
        return 2
    try:
        launch_command(args)
    except subprocess.CalledProcessError as error:  # the script already printed its error on stderr
        return error.returncode
    return 0


def cli() -> None:
    """The `mdlm-launch` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
