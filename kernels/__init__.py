"""Sampling and attention kernels: each Triton kernel beside its pure-torch reference, behind one dispatch
function.

- `sample_categorical`: the categorical draw every decoder uses (float64 Gumbel-max, no float64 copy of the
  logits). Triton kernel (`sampling_triton.py`) for CUDA tensors when triton imports, the chunked torch
  reference (`sampling_reference.py`) elsewhere; MDLM_SAMPLER_BACKEND (`torch` or `triton`) or the
  `backend=` argument forces either. Both draw the same tokens for the same seed.
- `filter_logits` / `categorical_probs`: the top-k / top-p filter and the float64 probabilities of the
  very distribution `sample_categorical` draws from (speculative decoding's acceptance test needs them).
- `cached_attention`: queries of the active positions against cached + new keys/values under a boolean
  mask. Triton kernel (`attention_triton.py`) on CUDA, SDPA (`attention_reference.py`) elsewhere;
  MDLM_ATTENTION_BACKEND or `backend=` forces either.

Forcing triton on CPU tensors works only under TRITON_INTERPRET=1 (set before triton is imported).
"""

if __name__ == "kernels":
    # This folder is the package `mdlm.kernels`. Imported by its bare folder name, it is only here because the
    # repository root is on sys.path (pytest, `python -m ...` from a checkout), and it would shadow Hugging
    # Face's `kernels` distribution, which transformers >= 5.25 imports at start-up. Hand the name to that one.
    import os as _os
    import sys as _sys
    from importlib.machinery import PathFinder as _PathFinder
    from importlib.util import module_from_spec as _module_from_spec

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _spec = _PathFinder.find_spec("kernels", [p for p in _sys.path if _os.path.abspath(p or ".") != _root])
    if _spec is None:
        raise ModuleNotFoundError("No module named 'kernels': the repository's kernels/ folder is `mdlm.kernels`, "
                                  "and Hugging Face's `kernels` package is not installed", name="kernels")
    _installed = _module_from_spec(_spec)
    _sys.modules["kernels"] = _installed  # the import statement returns what sys.modules holds after this runs
    _spec.loader.exec_module(_installed)
else:
    from mdlm.kernels.dispatch import *  # noqa: F401,F403 (the names of dispatch.__all__)
    from mdlm.kernels.dispatch import __all__  # noqa: F401
