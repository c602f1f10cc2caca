"""One clear line for every error of a command-line entry point (`mdlm-generate`, `mdlm-pretrain`,
`train/sft.py`, `mdlm-eval`, the benchmarks).

Bad input raises ValueError (or FileNotFoundError / FileExistsError) with a message that names the input
and the fix; the entry point prints it as `PROG: error: MESSAGE` on stderr and exits with status 2, like
argparse does for a bad flag. An operating-system error (a full disk, a read-only folder) is one line
naming the file, status 2. Anything else is a bug or an environment problem: one line with the exception
type, status 1. `MDLM_TRACEBACK=1` re-raises instead, for the full traceback.
"""

from __future__ import annotations

import os
import sys

INPUT_ERROR = 2
INTERNAL_ERROR = 1


def one_line(error: BaseException) -> str:
    """The error as one line: an OSError names its file and the system's reason, else the message with its
    line breaks folded."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}; check that the folder exists, is writable and has free space"
    return " ".join(str(error).split()) or type(error).__name__


def exit_code_of(error: BaseException) -> int:
    return INPUT_ERROR if isinstance(error, (ValueError, OSError)) else INTERNAL_ERROR


def report(prog: str, error: BaseException) -> int:
    """Print `error` as one line under `prog` and return the exit status to use."""
    code = exit_code_of(error)
    text = one_line(error)
    if code == INTERNAL_ERROR:
        text = f"{type(error).__name__}: {text} (set MDLM_TRACEBACK=1 for the traceback)"
    print(f"{prog}: error: {text}", file=sys.stderr, flush=True)
    return code


def run_main(prog: str, fn, *args, **kwargs):
    """Call `fn`; on an exception print one line and exit with its status (SystemExit passes through)."""
    try:
        return fn(*args, **kwargs)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 (the point: nothing reaches the user as a traceback)
        if os.environ.get("MDLM_TRACEBACK"):
            raise
        raise SystemExit(report(prog, error)) from None
