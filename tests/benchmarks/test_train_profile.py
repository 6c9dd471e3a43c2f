import jax
import jax.numpy as jnp

from benchmarks import train_profile


def _hlo(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


def test_matmul_kernels_finds_the_products_and_only_them():
    a, b, v = jnp.ones((64, 48)), jnp.ones((48, 32)), jnp.ones((64, 32))
    products = train_profile.matmul_kernels(_hlo(lambda a, b: jnp.tanh(a @ b) + 1.0, a, b))
    assert products  # the product (plain dot or a fusion calling one) is found
    both = train_profile.matmul_kernels(_hlo(lambda a, b: (a @ b, a.T @ (a @ b)), a, b))
    assert len(both) >= 2
    assert train_profile.matmul_kernels(_hlo(lambda v: jnp.exp(v).sum(axis=0) * 2.0, v)) == set()
