"""The repository's top-level folders are packages of `mdlm` (`kernels/` is `mdlm.kernels`), but a checkout's
root is on sys.path under pytest and `python -m ...`. There the bare folder names must not shadow installed
distributions: transformers >= 5.25 imports Hugging Face's `kernels` at start-up, and got our folder."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _run_from_root(code: str) -> subprocess.CompletedProcess:
    # `python -c` puts the working directory first on sys.path, as `python -m mdlm.eval.bench.X` does.
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_transformers_and_mdlm_import_from_the_repository_root():
    done = _run_from_root("from transformers import PreTrainedModel; import mdlm; from mdlm.kernels import "
                          "sample_categorical; print('ok')")
    assert done.returncode == 0, done.stderr[-2000:]


def test_bare_kernels_name_is_the_installed_distribution_not_our_folder():
    done = _run_from_root("import kernels; print(kernels.__file__)")
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        assert done.returncode != 0 and "mdlm.kernels" in done.stderr
        return
    assert done.returncode == 0, done.stderr[-2000:]
    assert not Path(done.stdout.strip()).resolve().is_relative_to(ROOT)


def test_mdlm_kernels_is_still_ours():
    import mdlm.kernels

    # Our package wherever mdlm is installed from (an editable install may point at another checkout).
    assert mdlm.kernels.__name__ == "mdlm.kernels"
    assert (Path(mdlm.kernels.__file__).resolve().parent / "dispatch.py").is_file()
    assert callable(mdlm.kernels.sample_categorical)
