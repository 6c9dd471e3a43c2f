"""The names of fflab's named options, importable without JAX.

The library validates against these tuples and the command line lists them in its help, which must answer
before JAX loads (``fflab --help`` imports this module and nothing heavier).
"""

from __future__ import annotations

__all__ = ["ACTIVATIONS", "DATASETS", "INIT_SCHEMES", "NORMS", "OPTIMIZERS", "SCHEDULES", "check"]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")
INIT_SCHEMES = (
    "glorot_relu", "glorot", "he_forward", "he_backward", "lecun", "standard_uniform", "glorot_uniform", "sparse",
    "orthogonal",
)
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adagrad", "adadelta", "rmsprop")
SCHEDULES = ("constant", "linear", "exponential", "step", "cosine")
NORMS = ("batchnorm", "transform")
DATASETS = ("digits", "mnist", "fashion-mnist", "synthetic")


def check(kind: str, name, valid) -> None:
    """Raise ``ValueError`` naming the valid choices unless ``name`` is one of ``valid``."""
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(map(str, valid))}")
