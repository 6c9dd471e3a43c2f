"""Test session setup: float64 everywhere, since precision is the point of most checks; one BLAS thread;
XLA's fast-compile settings (:func:`fflab.compilation.fast_compile`), since the tests' models are tiny and
most of their time is compilation (``FFLAB_FAST_COMPILE=0 pytest`` runs them with XLA's defaults).

Rank promotion stays at JAX's default ("allow"): bias broadcasting ``h @ W + b`` is the idiom of every layer.
Shape mistakes are caught by the explicit checks in :mod:`fflab.losses` and the analysis validators instead.
"""

from fflab.compilation import fast_compile

fast_compile()  # before JAX starts; subprocesses (the CLI tests, notebook kernels) inherit XLA_FLAGS

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="session", autouse=True)
def one_blas_thread():
    """Run numpy's and jax's LAPACK oracles (dense ``eigh`` of Hessians) on one OpenBLAS thread.

    The default run puts an xdist worker on every core; OpenBLAS's threads then spin waiting for busy cores,
    and a 2,780-wide ``eigvalsh`` costs three to four times the CPU and wall time of one thread (10-40x
    for some smaller ones). jax's CPU LAPACK kernels use scipy's OpenBLAS, which loads lazily: import it
    first so that the limit reaches it too.
    """
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
