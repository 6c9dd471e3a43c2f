"""Test session setup: float64 everywhere, since precision is the point of most checks.

Rank promotion stays at JAX's default ("allow"): bias broadcasting ``h @ W + b`` is the idiom of every layer.
Shape mistakes are caught by the explicit checks in :mod:`fflab.losses` and the analysis validators instead.
"""

import jax

jax.config.update("jax_enable_x64", True)
