"""fflab: train feed-forward networks in JAX and look hard at their loss surfaces.

Public names resolve lazily, so ``import fflab`` (and the command line's help) does not load JAX; each
submodule loads on first use.
"""

import importlib

_FUNCTIONS = {"classifier": "presets", "load_run": "runs"}
_MODULES = (
    "checkpoint", "compilation", "data", "errors", "files", "init", "losses", "mlp", "norm", "options", "presets",
    "progress", "runs", "signals", "train",
)

__all__ = sorted([*_FUNCTIONS, *_MODULES])
__version__ = "0.1.0"


def __getattr__(name):
    if name in _FUNCTIONS:
        value = getattr(importlib.import_module(f"fflab.{_FUNCTIONS[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"fflab.{name}")
    else:
        raise AttributeError(f"module 'fflab' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads, not this function
    return value


def __dir__():
    return __all__
