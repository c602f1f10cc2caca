"""Not part of the package: this file exists for one situation.

When a clone of this repository is named `mdlm` and Python runs from the folder that holds it
(`python -m mdlm.decode.cli ...`, `python -c`, a notebook), that folder is on sys.path and Python takes the
clone's root for the package `mdlm` before the installed one. Without this file the root is an empty
namespace package: `from mdlm import MDLMForMaskedLM` fails, and a good run fails to load with "retrain it".
With it, the root is the real package: `mdlm/__init__.py` runs here, and submodules are found where
pyproject.toml's package-dir puts them (`mdlm.model` in mdlm/, `mdlm.decode` in decode/, ...).
"""

import os as _os

_root = _os.path.dirname(_os.path.abspath(__file__))
_package = _os.path.join(_root, "mdlm", "__init__.py")
__path__ = [_os.path.join(_root, "mdlm"), _root]  # noqa: F811 (a package's search path: mdlm/ first)
__file__ = _package
with open(_package, encoding="utf-8") as _source:
    exec(compile(_source.read(), _package, "exec"))
