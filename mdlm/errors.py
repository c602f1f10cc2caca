"""Moved to `mdlm.cli.errors` (command-line plumbing is not part of the model package); a short-lived
re-export for old imports."""

from mdlm.cli.errors import INPUT_ERROR, INTERNAL_ERROR, exit_code_of, one_line, report, run_main  # noqa: F401
