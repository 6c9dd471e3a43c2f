"""fflab: train feed-forward networks in JAX and look hard at their loss surfaces."""

from fflab import data, init, losses, mlp, norm

__all__ = ["data", "init", "losses", "mlp", "norm"]
__version__ = "0.1.0"
