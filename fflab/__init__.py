"""fflab: train feed-forward networks in JAX and look hard at their loss surfaces."""

from fflab import init, losses, mlp

__all__ = ["init", "losses", "mlp"]
__version__ = "0.1.0"
