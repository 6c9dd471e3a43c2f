"""XLA settings for small, compile-bound work: quick experiment runs, tests, notebooks on toy models.

On a CPU, a network of a few thousand parameters trains or multiplies by its Hessian in milliseconds, while
XLA spends a second or two optimising each program it compiles: a quick run of every lecture experiment is
about two thirds compilation. :func:`fast_compile` asks XLA:CPU to compile quickly instead (LLVM at
optimisation level 0, the classic loop emitters). That cuts compilation three- to fourfold and changes no
result beyond floating-point rounding, but the compiled code runs slower (two to three times on long
training loops), so full-size runs keep XLA's defaults. ``fflab run --quick``, ``python -m experiments.NAME
--quick`` and the test suite use it; ``FFLAB_FAST_COMPILE=0`` turns it off.
"""

import importlib.metadata
import os
import sys

FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_ACCELERATOR_PACKAGES = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "_backends", None))


def _accelerator_installed() -> bool:
    names = (dist.metadata.get("Name", "") or "" for dist in importlib.metadata.distributions())
    return any(name.lower().startswith(_ACCELERATOR_PACKAGES) for name in names)


def fast_compile(environ=None) -> bool:
    """Make XLA:CPU compile fast rather than optimise hard, for the rest of this process; True if it will.

    It adds :data:`FAST_COMPILE_FLAGS` to ``XLA_FLAGS`` (flags already set there win), which XLA reads once,
    when JAX starts its backend: call it before the first JAX computation. It does nothing, and returns
    False, when the backend has already started, when a GPU or TPU plugin is installed (unless
    ``JAX_PLATFORMS=cpu``), or when ``FFLAB_FAST_COMPILE=0`` is set.
    """
    environ = os.environ if environ is None else environ
    if environ.get("FFLAB_FAST_COMPILE", "1") == "0" or _backend_started():
        return False
    if environ.get("JAX_PLATFORMS", "").strip().lower() != "cpu" and _accelerator_installed():
        return False
    flags = environ.get("XLA_FLAGS", "").split()
    present = {flag.split("=", 1)[0] for flag in flags}
    environ["XLA_FLAGS"] = " ".join([*flags, *(f for f in FAST_COMPILE_FLAGS if f.split("=", 1)[0] not in present)])
    return True
