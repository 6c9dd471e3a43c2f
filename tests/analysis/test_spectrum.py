"""Spectrum summaries against matrices with planted spectra (``U diag(lam) U^T``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from analysis import spectrum
from fflab import mlp


def planted(lam, seed):
    """A symmetric matrix with eigenvalues ``lam`` and a random orthonormal eigenbasis."""
    lam = np.asarray(lam, dtype=np.float64)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    return (q * lam) @ q.T


NEG = np.array([-0.5, -0.3, -0.2, -0.1])
BULK = np.linspace(0.1, 1.0, 30)
OUT = np.array([20.0, 30.0, 50.0])
LAM = np.concatenate([NEG, np.zeros(3), BULK, OUT])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eigenvalues_recover_planted_spectrum(seed):
    H = planted(LAM, seed)
    eigs = spectrum.eigenvalues(H)
    assert eigs.dtype == np.float64 and eigs.shape == LAM.shape
    assert np.all(np.diff(eigs) >= 0)
    np.testing.assert_allclose(eigs, np.sort(LAM), atol=1e-12)
    vals, vecs = spectrum.eigh(H)
    np.testing.assert_allclose(H @ vecs, vecs * vals, atol=1e-12)


def test_eigenvalues_symmetrise_and_accept_float32():
    A = np.random.default_rng(0).standard_normal((6, 6))
    np.testing.assert_allclose(spectrum.eigenvalues(A), np.linalg.eigvalsh(0.5 * (A + A.T)), atol=1e-12)
    H32 = jnp.asarray(planted(np.arange(1.0, 7.0), 0), dtype=jnp.float32)
    eigs = spectrum.eigenvalues(H32)
    assert eigs.dtype == np.float64
    np.testing.assert_allclose(eigs, np.arange(1.0, 7.0), atol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((3, 4)), np.zeros(3), np.zeros((2, 2, 2)), np.full((2, 2), np.nan)])
def test_eigenvalues_reject_non_square(bad):
    with pytest.raises(ValueError):
        spectrum.eigenvalues(bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summary_matches_planted_values(seed):
    s = spectrum.summarize(spectrum.eigenvalues(planted(LAM, seed)))
    assert s.size == LAM.size
    assert (s.n_negative, s.n_zero, s.n_positive) == (4, 3, 33)
    assert s.index == pytest.approx(4 / LAM.size, abs=1e-15)
    assert s.lambda_min == pytest.approx(-0.5, abs=1e-12)
    assert s.lambda_max == pytest.approx(50.0, abs=1e-12)
    assert s.spectral_norm == pytest.approx(50.0, abs=1e-12)
    assert s.condition == pytest.approx(50.0 / 0.1, rel=1e-10)
    assert s.n_outliers == 3 and 1.0 < s.bulk_edge < 20.0
    mags = np.abs(LAM[LAM != 0])
    assert s.log10_range == pytest.approx(np.log10(50.0 / 0.1), rel=1e-10)
    assert s.log10_std == pytest.approx(np.std(np.log10(mags)), rel=1e-10)
    # Order does not matter.
    assert s == spectrum.summarize(
        np.random.default_rng(seed).permutation(spectrum.eigenvalues(planted(LAM, seed)))
    )


def test_zero_tolerance_is_relative_to_the_spectral_norm():
    lam = np.array([-1e-9, 1e-9, 1.0, 2.0]) * 1e3
    assert spectrum.inertia(lam) == (0, 2, 2, pytest.approx(2e-3))
    assert spectrum.inertia(lam, rtol=1e-15)[:3] == (1, 0, 3)
    assert spectrum.inertia(np.zeros(3), atol=1e-12)[:3] == (0, 3, 0)
    assert np.isnan(spectrum.condition_number(np.array([-2.0, -1.0, 0.0])))
    assert all(np.isnan(spectrum.log_spread(np.zeros(4))))


def test_outlier_rule_on_a_flat_bulk():
    lam = np.concatenate([np.linspace(0.0, 1.0, 101), [5.0, 9.0]])
    n, edge = spectrum.outliers(lam)
    # median 0.51, MAD 0.25 (ignoring the two outliers' small shift): edge = 0.51 + 3.5 * 1.4826 * MAD.
    med = np.median(lam)
    mad = np.median(np.abs(lam - med))
    assert edge == pytest.approx(med + 3.5 * 1.4826 * mad, rel=1e-12)
    assert n == 2
    assert spectrum.outliers(lam, c=100.0)[0] == 0


def test_diagonal_dominance_hand_values():
    assert spectrum.diagonal_dominance(np.diag([1.0, -2.0, 3.0])) == 0.0
    H = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert spectrum.diagonal_dominance(H) == pytest.approx(np.sqrt(8.0 / 10.0), rel=1e-14)
    H3 = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0], [3.0, 5.0, 6.0]])
    # Blocks {0} and {1, 2}: the off-diagonal blocks hold 2, 3 twice.
    total = np.sum(H3**2)
    assert spectrum.diagonal_dominance(H3, [1, 2]) == pytest.approx(np.sqrt(2 * 13 / total), rel=1e-14)
    assert spectrum.diagonal_dominance(H3, [3]) == 0.0
    block_diag = np.zeros((3, 3))
    block_diag[1:, 1:] = [[1.0, 2.0], [2.0, 1.0]]
    block_diag[0, 0] = 1.0
    assert spectrum.diagonal_dominance(block_diag, [1, 2]) == 0.0
    assert spectrum.diagonal_dominance(block_diag) > 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scaled_diagonal_dominance_ignores_the_parameters_units(seed):
    rng = np.random.default_rng(seed)
    H = planted(rng.standard_normal(8), seed)
    s = np.exp(rng.uniform(-2, 2, 8))  # rescale each parameter by up to e^+-2
    share = spectrum.diagonal_dominance(H, scaled=True)
    assert spectrum.diagonal_dominance(H * s[:, None] * s, scaled=True) == pytest.approx(share, rel=1e-10)
    # Element-wise: the Jacobi-scaled matrix by hand.
    d = 1 / np.sqrt(np.abs(np.diag(H)))
    C = np.abs(H) * d[:, None] * d[None, :]
    np.testing.assert_allclose(spectrum.block_coupling(H), C, rtol=1e-12)
    assert share == pytest.approx(np.linalg.norm(C - np.diag(np.diag(C))) / np.linalg.norm(C), rel=1e-12)
    # Block-wise: invariant when every block is rescaled by one factor; N_ab / sqrt(N_aa N_bb) by hand.
    sizes, sb = [3, 5], np.repeat(np.exp(rng.uniform(-2, 2, 2)), [3, 5])
    N = spectrum.block_norms(H, sizes)
    want = N / np.sqrt(np.outer(np.diag(N), np.diag(N)))
    np.testing.assert_allclose(spectrum.block_coupling(H, sizes), want, rtol=1e-12)
    np.testing.assert_allclose(spectrum.block_coupling(H * sb[:, None] * sb, sizes), want, rtol=1e-10)
    assert spectrum.diagonal_dominance(H, sizes, scaled=True) == pytest.approx(
        np.sqrt(2) * want[0, 1] / np.sqrt(2 + 2 * want[0, 1] ** 2), rel=1e-12)
    # Hand values: [[4, 2], [2, 1]] scales to all ones; a parameter the loss does not see is left out.
    H2 = np.array([[4.0, 2.0], [2.0, 1.0]])
    assert spectrum.diagonal_dominance(H2) == pytest.approx(np.sqrt(8 / 25), rel=1e-14)
    assert spectrum.diagonal_dominance(H2, scaled=True) == pytest.approx(np.sqrt(0.5), rel=1e-14)
    assert spectrum.diagonal_dominance(np.diag([2.0, 0.0]), scaled=True) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_norms_tile_the_frobenius_norm(seed):
    H = planted(np.random.default_rng(seed).standard_normal(10), seed)
    sizes = [3, 1, 4, 2]
    N = spectrum.block_norms(H, sizes)
    assert N.shape == (4, 4)
    assert np.sum(N**2) == pytest.approx(np.sum(H**2), rel=1e-12)
    np.testing.assert_allclose(N, N.T, rtol=1e-12)
    assert N[2, 0] == pytest.approx(np.linalg.norm(H[4:8, 0:3]), rel=1e-12)
    off = np.sqrt(np.sum(N**2) - np.sum(np.diag(N) ** 2)) / np.linalg.norm(H)
    assert spectrum.diagonal_dominance(H, sizes) == pytest.approx(off, rel=1e-10)
    with pytest.raises(ValueError, match="sum to P=10"):
        spectrum.block_norms(H, [3, 3])


def test_param_blocks_follow_ravel_order():
    params = mlp.init(jax.random.key(0), [3, 4, 2])
    blocks = spectrum.param_blocks(params)
    assert blocks.names == ("[0]['W']", "[0]['b']", "[1]['W']", "[1]['b']")
    assert blocks.sizes == (12, 4, 8, 2)
    flat, unravel = ravel_pytree(params)
    start = 0
    for name, size in zip(blocks.names, blocks.sizes, strict=True):
        e = jnp.zeros_like(flat).at[start : start + size].set(1.0)
        tree = unravel(e)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            expected = 1.0 if jax.tree_util.keystr(path) == name else 0.0
            assert jnp.all(leaf == expected)
        start += size
    layers = spectrum.param_blocks(params, level="layer")
    assert layers == (("[0]", "[1]"), (16, 10))
    H = np.eye(flat.size)
    assert spectrum.block_norms(H, layers).shape == (2, 2)
    with pytest.raises(ValueError, match="valid names: leaf, layer"):
        spectrum.param_blocks(params, level="unit")


def test_decades_below_top_hand_values():
    assert spectrum.decades_below_top([1.0, 1.0, -1.0]) == 0.0
    assert spectrum.decades_below_top([100.0, 1.0, -0.1, 0.01, 0.001]) == pytest.approx(3.0)  # median |.| 0.1
    assert spectrum.decades_below_top([100.0, 1.0, -0.1, 0.01, 0.001], q=1.0) == 0.0
    assert spectrum.decades_below_top([5.0, 0.0, 0.0]) == np.inf
    # No tolerance: a deeper tail is less even, where log_spread (above 1e-6 max only) calls it more even.
    shallow = np.geomspace(1, 1e-5, 50)
    deep = np.concatenate([np.ones(5), np.geomspace(1e-1, 1e-2, 10), np.full(35, 1e-9)])
    assert spectrum.decades_below_top(deep) > spectrum.decades_below_top(shallow)
    assert spectrum.log_spread(deep)[1] < spectrum.log_spread(shallow)[1]
    with pytest.raises(ValueError, match="q must lie"):
        spectrum.decades_below_top([1.0], q=0.0)
