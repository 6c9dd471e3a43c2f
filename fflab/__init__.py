"""fflab: train feed-forward networks in JAX and look hard at their loss surfaces."""

from fflab import checkpoint, data, init, losses, mlp, norm, train

__all__ = ["checkpoint", "data", "init", "losses", "mlp", "norm", "train"]
__version__ = "0.1.0"
