"""`python -m mdlm.eval ...` (and `accelerate launch -m mdlm.eval ...`): the mdlm-eval CLI."""

from mdlm.eval.cli import main

main()
