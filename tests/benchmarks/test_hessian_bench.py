"""Smoke test of benchmarks.hessian_bench on tiny models: every competitor sees the same function.

The torch side must compute the JAX loss and its dense Hessian (checked against ``jax.hessian``), PyHessian's
eigenpairs and matfree's quadrature must agree with our own on the same operator; otherwise the benchmark's
ratios would compare different problems.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import hessian_bench as hb

TINY = (64, 6, 5, 10)  # 485 parameters
TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.fixture(scope="module")
def tiny64():
    return hb.digits_problem(60, sizes=TINY, dtype="float64")


@pytest.mark.parametrize(("dtype", "activation"), [("float64", "tanh"), ("float32", "relu")])
def test_torch_loss_matches_jax(tiny64, activation, dtype):
    pytest.importorskip("torch")
    params, x, y = hb.cast(tiny64, dtype)
    loss, diff = hb.loss_difference(params, x, y, activation)
    assert np.isfinite(loss) and loss > 0
    assert abs(diff) <= TOL[dtype] * abs(loss)


def test_dense_hessians_agree(tiny64):
    pytest.importorskip("torch")
    params, x, y = tiny64
    want = np.asarray(hb.jax_dense_hessian(hb.tanh_loss, params, x, y))
    ours = np.asarray(jax.jit(hb._hessian_program(hb.tanh_loss, 4))(params, x, y))
    theirs = hb.torch_dense_hessian(params, x, y, "tanh")
    scale = np.abs(want).max()
    assert want.shape == (hb.mlp.num_params(params),) * 2
    assert np.abs(ours - want).max() <= 1e-10 * scale
    assert np.abs(theirs - want).max() <= 1e-10 * scale
    assert hb.relative_error(theirs, want) <= 1e-10


def test_compiled_bytes_counts_the_output(tiny64):
    params, x, y = tiny64
    dim = hb.mlp.num_params(params)
    stats = hb.compiled_bytes(hb._hessian_program(hb.tanh_loss, 4), params, x, y)
    assert stats["output"] == dim * dim * 8
    assert stats["total"] == stats["temp"] + stats["output"]


@pytest.mark.slow
def test_pyhessian_eigenpairs_and_residuals(tiny64):
    pytest.importorskip("torch")
    pytest.importorskip("pyhessian")
    params, x, y = tiny64
    op, dim = hb.analysis.hessian_operator(hb.tanh_loss, params, x, y)
    dense = np.asarray(hb.jax_dense_hessian(hb.tanh_loss, params, x, y))
    top = np.sort(np.linalg.eigvalsh(0.5 * (dense + dense.T)))[::-1][:2]
    tx, ty = hb.torch_data(x, y)
    model = hb.torch_model(params, "tanh")
    values, vectors = hb.pyhessian_eigenvalues(model, tx, ty, dtype="float64", top_n=2, maxIter=500, tol=1e-9)
    assert vectors.shape == (dim, 2)
    # Power iteration on the largest-magnitude end; this model's top two are positive and well separated
    # from the rest, so PyHessian must find them and its residuals, computed with our HVP, must be small.
    np.testing.assert_allclose(np.sort(values)[::-1], top, rtol=1e-4)
    res = hb.residual_norms(op, vectors, values)
    assert res.shape == (2,) and np.all(res < 1e-2)
    # The residual helper itself, on exact eigenpairs of the dense matrix.
    lam, vec = np.linalg.eigh(0.5 * (dense + dense.T))
    assert np.all(hb.residual_norms(op, vec[:, -2:], lam[-2:]) < 1e-8)


@pytest.mark.slow
def test_matfree_quadrature_matches_ours(tiny64):
    pytest.importorskip("matfree")
    params, x, y = tiny64
    op, dim = hb.analysis.hessian_operator(hb.tanh_loss, params, x, y)
    probes = jax.random.rademacher(jax.random.key(0), (3, dim), jnp.float64)
    ours = hb.analysis.spectral_density(op, dim, num_steps=12, probes=probes)
    theirs = hb.matfree_slq(12)(op, probes / jnp.linalg.norm(probes, axis=1, keepdims=True))
    unit = np.asarray(probes) / np.sqrt(dim)
    av = np.asarray(jax.vmap(op)(jnp.asarray(unit)))
    for nodes, weights in (ours, theirs):
        m1, m2 = hb._quadrature_moments(nodes, weights)
        np.testing.assert_allclose(m1, np.sum(unit * av, axis=1), rtol=1e-8)
        np.testing.assert_allclose(m2, np.sum(av * av, axis=1), rtol=1e-8)
    np.testing.assert_allclose(
        np.asarray(theirs[0]), np.asarray(ours.nodes), atol=1e-8 * np.abs(ours.nodes).max()
    )


def test_torch_eig_shim_matches_eigh():
    torch = pytest.importorskip("torch")
    a = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    with hb.torch_eig_shim():
        values, vectors = torch.eig(a, eigenvectors=True)
    np.testing.assert_allclose(values[:, 0].numpy(), np.linalg.eigvalsh(a.numpy()), rtol=1e-12)
    np.testing.assert_allclose((a @ vectors).numpy(), (vectors * values[:, 0]).numpy(), atol=1e-12)
    assert "torch" in hb.torch_eig_removed()


@pytest.mark.slow
def test_count_matvecs_counts_lanczos_steps(tiny64):
    params, x, y = tiny64
    op, dim = hb.analysis.hessian_operator(hb.tanh_loss, params, x, y)
    count = hb.count_matvecs(lambda mv: hb.analysis.lanczos(mv, dim, 7, key=jax.random.key(0)), op)
    assert count == 7
