"""analysis: curvature of any ``loss_fn(params, *args) -> scalar`` over a params pytree.

Flat vectors and matrices use the order of ``jax.flatten_util.ravel_pytree(params)``. Data go in ``*args``.

Public names resolve lazily, so ``import analysis`` is cheap and each submodule loads on first use.
"""

import importlib

_FUNCTIONS = {
    "hvp": "curvature",
    "hessian_operator": "curvature",
    "data_mesh": "sharding",
    "hessian": "curvature",
    "hessian_blocks": "curvature",
    "unravel": "curvature",
    "lanczos": "krylov",
    "eigsh": "krylov",
    "spectral_density": "density",
    "trace": "density",
}
_MODULES = ("curvature", "krylov", "density", "spectrum", "critical", "landscape", "sharding", "plots", "sharpness")

__all__ = sorted([*_FUNCTIONS, *_MODULES])


def __getattr__(name):
    if name in _FUNCTIONS:
        value = getattr(importlib.import_module(f"analysis.{_FUNCTIONS[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"analysis.{name}")
    else:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads, not this function
    return value


def __dir__():
    return __all__
