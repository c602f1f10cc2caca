"""Loading a run's tokenizer is quiet: no transformers warning about the model type (issue 13.8)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

WARNING = "to instantiate a model of type"


def load_in_fresh_process(code: str, run) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


@pytest.mark.parametrize("code", [
    "import sys; from mdlm.tokenizer import load_tokenizer; load_tokenizer(sys.argv[1])",
    "import sys, mdlm; from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(sys.argv[1])",
])
def test_a_run_tokenizer_loads_without_the_model_type_warning(tiny_run_dir, code):
    assert WARNING not in load_in_fresh_process(code, tiny_run_dir)


@pytest.mark.xfail(strict=True, reason="transformers' AutoTokenizer reads config.json first; without `import mdlm` "
                                       "the model type is unknown and transformers warns, whatever the tokenizer files")
def test_plain_transformers_without_importing_mdlm_is_quiet(tiny_run_dir):
    code = "import sys; from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(sys.argv[1])"
    assert WARNING not in load_in_fresh_process(code, tiny_run_dir)
