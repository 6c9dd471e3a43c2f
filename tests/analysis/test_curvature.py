"""Curvature products and dense Hessians against ``jax.hessian`` and explicit Jacobian constructions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import analysis
from analysis import curvature
from fflab import losses, mlp
from tests.analysis import _models as M


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.max(np.abs(got - want)) / np.max(np.abs(want))


# --------------------------------------------------------------------------------------------------
# hvp and the operator


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hvp_and_operator_match_jax_hessian(seed):
    params, x, y = M.small_mlp()
    exact = M.small_jax_hessian()
    flat, unravel = ravel_pytree(params)
    vs = jax.random.normal(jax.random.PRNGKey(seed), (3, flat.size))
    got = analysis.hvp(M.loss_fn, params, unravel(vs[0]), x, y)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(params)
    assert rel_err(M.flat(got), exact @ np.asarray(vs[0])) < 1e-10
    matvec, dim = analysis.hessian_operator(M.loss_fn, params, x, y)
    assert dim == flat.size == mlp.num_params(params)
    assert rel_err(matvec(vs[0]), exact @ np.asarray(vs[0])) < 1e-10
    assert rel_err(jax.vmap(matvec)(vs), np.asarray(vs) @ exact.T) < 1e-10
    # Inside a caller's jit (and vmapped over tangents) hvp inlines to the same product.
    inside = jax.jit(jax.vmap(lambda t: M.flat(analysis.hvp(M.loss_fn, params, unravel(t), x, y))))
    assert rel_err(inside(vs), np.asarray(vs) @ exact.T) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hvp_matches_jax_hessian_on_digits_mlp(seed):
    params, x, y = M.digits_mlp()
    exact = M.digits_jax_hessian()
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.PRNGKey(seed), flat.shape)
    assert rel_err(M.flat(analysis.hvp(M.loss_fn, params, unravel(v), x, y)), exact @ np.asarray(v)) < 1e-10
    matvec, _ = analysis.hessian_operator(M.loss_fn, params, x, y)
    assert rel_err(matvec(v), exact @ np.asarray(v)) < 1e-10


def test_float32_path():
    # The float32 product against the float64 one on the same model (built explicitly in float32).
    p32, x32, y = M.small_mlp(jnp.float32)
    p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p32)
    v = jax.random.normal(jax.random.PRNGKey(0), (ravel_pytree(p32)[0].size,))
    matvec32, _ = analysis.hessian_operator(M.loss_fn, p32, x32, y)
    matvec64, _ = analysis.hessian_operator(M.loss_fn, p64, x32.astype(jnp.float64), y)
    got = matvec32(v)
    assert got.dtype == jnp.float32
    assert rel_err(got, matvec64(v)) < 1e-4


@pytest.mark.parametrize(
    ("curvature_kind", "batch_size"),
    # 120 samples: two full chunks of 50 plus a remainder of 20; one chunk of 119 plus a remainder of 1
    [("hessian", 50), ("hessian", 119), ("ggn", 50)],
)
def test_batched_operator_equals_full_batch(curvature_kind, batch_size):
    params, x, y = M.small_mlp()
    kw = dict(output_fn=M.output_fn, loss=losses.cross_entropy) if curvature_kind == "ggn" else {}
    full, dim = analysis.hessian_operator(M.loss_fn, params, x, y, curvature=curvature_kind, **kw)
    chunked, _ = analysis.hessian_operator(
        M.loss_fn, params, x, y, curvature=curvature_kind, batch_size=batch_size, **kw
    )
    vs = jax.random.normal(jax.random.PRNGKey(batch_size), (2, dim))
    assert rel_err(jax.vmap(chunked)(vs), jax.vmap(full)(vs)) < 1e-12


def test_operator_takes_data_as_arguments_and_compiles_once():
    params, x, y = M.small_mlp()
    traces = []

    def loss(p, x, y):
        traces.append(None)
        return M.loss_fn(p, x, y)

    matvec, dim = analysis.hessian_operator(loss, params, x, y)
    again, _ = analysis.hessian_operator(loss, params, x + 1.0, y)  # same settings, new data
    before = len(traces)
    matvec(jnp.ones(dim)).block_until_ready()
    matvec(jnp.zeros(dim)).block_until_ready()
    again(jnp.ones(dim)).block_until_ready()
    assert len(traces) - before <= 1
    # Data and params are inputs of the program, not constants folded into it.
    jaxpr = jax.make_jaxpr(lambda op, v: op(v))(matvec, jnp.ones(dim))
    assert not jaxpr.consts
    assert {(120, 64), (120,)} <= {tuple(var.aval.shape) for var in jaxpr.jaxpr.invars}


# --------------------------------------------------------------------------------------------------
# Gauss-Newton


@jax.jit
def explicit_ggn(params, x, y):
    """``J^T H_out J`` from ``jax.jacobian`` of the outputs and ``jax.hessian`` of the outer losses."""
    flat, unravel = ravel_pytree(params)
    outputs = M.output_fn(params, x)
    J = jax.jacobian(lambda t: M.output_fn(unravel(t), x).ravel())(flat)
    onehot = jax.nn.one_hot(y, 10, dtype=x.dtype)
    H_ce = jax.hessian(lambda z: losses.cross_entropy(z.reshape(outputs.shape), y))(outputs.ravel())
    H_mse = jax.hessian(lambda z: losses.mse(z.reshape(outputs.shape), onehot))(outputs.ravel())
    return J.T @ H_ce @ J, J.T @ H_mse @ J


def test_ggn_matches_explicit_jacobian_construction():
    params, x, y = M.digits_mlp(30, sizes=(64, 5, 10), seed=1)
    G_ce, G_mse = (np.asarray(G) for G in explicit_ggn(params, x, y))
    onehot = jax.nn.one_hot(y, 10, dtype=x.dtype)
    vs = jax.random.normal(jax.random.PRNGKey(3), (4, ravel_pytree(params)[0].size))
    # Cross-entropy with integer labels; squared error with one-hot targets.
    for outer, target, G in [(losses.cross_entropy, y, G_ce), (losses.mse, onehot, G_mse)]:

        def loss_fn(p, x, t, outer=outer):
            return outer(M.output_fn(p, x), t)

        matvec, _ = analysis.hessian_operator(
            loss_fn, params, x, target, curvature="ggn", output_fn=M.output_fn, loss=outer
        )
        assert rel_err(jax.vmap(matvec)(vs), np.asarray(vs) @ G.T) < 1e-10
        # Positive semi-definite for a convex output loss.
        assert np.linalg.eigvalsh(G).min() > -1e-10 * np.abs(G).max()


def test_ggn_equals_hessian_for_mse_on_linear_model():
    key_w, key_x, key_t = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {"W": jax.random.normal(key_w, (5, 3)), "b": jnp.zeros(3)}
    x = jax.random.normal(key_x, (30, 5))
    t = jax.random.normal(key_t, (30, 3))

    def linear(p, x):
        return x @ p["W"] + p["b"]

    def loss_fn(p, x, t):
        return losses.mse(linear(p, x), t)

    ggn, dim = analysis.hessian_operator(loss_fn, params, x, t, curvature="ggn", output_fn=linear, loss=losses.mse)
    hess, _ = analysis.hessian_operator(loss_fn, params, x, t)
    eye = jnp.eye(dim)
    assert rel_err(jax.vmap(ggn)(eye), jax.vmap(hess)(eye)) < 1e-12


# --------------------------------------------------------------------------------------------------
# dense Hessians


@pytest.mark.parametrize("chunk_size", [None, 7])  # 7: padded last chunks
def test_hessian_matches_jax_hessian(chunk_size):
    params, x, y = M.small_mlp()
    H = analysis.hessian(M.loss_fn, params, x, y, chunk_size=chunk_size)
    assert H.shape == (735, 735) and H.dtype == jnp.float64
    assert rel_err(H, M.small_jax_hessian()) < 1e-10


@pytest.mark.slow
def test_hessian_matches_jax_hessian_on_digits_mlp():
    H = analysis.hessian(M.loss_fn, *M.digits_mlp())
    assert rel_err(H, M.digits_jax_hessian()) < 1e-10


def test_hessian_float32():
    p32, x32, y = M.digits_mlp(60, sizes=(64, 4, 10), dtype=jnp.float32)
    p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p32)
    H = analysis.hessian(M.loss_fn, p32, x32, y)
    assert H.dtype == jnp.float32
    assert rel_err(H, analysis.hessian(M.loss_fn, p64, x32.astype(jnp.float64), y)) < 1e-4


def test_hessian_blocks_are_the_dense_blocks():
    params, x, y = M.small_mlp()
    H = M.small_jax_hessian()
    blocks = analysis.hessian_blocks(M.loss_fn, params, x, y)
    assert blocks.names == ("[0]['W']", "[0]['b']", "[1]['W']", "[1]['b']", "[2]['W']", "[2]['b']")
    assert blocks.sizes == (64 * 9, 9, 9 * 7, 7, 7 * 10, 10)
    edges = np.concatenate([[0], np.cumsum(blocks.sizes)])
    for i in range(6):
        for j in range(6):
            want = H[edges[i] : edges[i + 1], edges[j] : edges[j + 1]]
            assert blocks.blocks[i][j].shape == want.shape
            assert rel_err(blocks.blocks[i][j], want) < 1e-9 or np.abs(want).max() < 1e-14
    np.testing.assert_array_equal(blocks.block("[1]['W']", "[0]['b']"), blocks.blocks[2][1])
    with pytest.raises(ValueError, match="unknown leaf"):
        blocks.block("W", "b")


# --------------------------------------------------------------------------------------------------
# validation


def test_validation_errors():
    params, x, y = M.digits_mlp(20, sizes=(64, 4, 10))
    flat, unravel = ravel_pytree(params)
    v = unravel(jnp.ones_like(flat))
    with pytest.raises(ValueError, match="scalar"):
        analysis.hessian_operator(lambda p, x, y: mlp.apply(p, x), params, x, y)
    with pytest.raises(ValueError, match="scalar"):
        analysis.hessian(lambda p, x, y: mlp.apply(p, x), params, x, y)
    with pytest.raises(ValueError, match="scalar"):
        analysis.hvp(lambda p, x, y: mlp.apply(p, x), params, v, x, y)
    bad_params = jax.tree_util.tree_map(lambda a: a, params)
    bad_params[1]["W"] = bad_params[1]["W"].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"params contains NaN.*\[1\]\['W'\]"):
        analysis.hvp(M.loss_fn, bad_params, v, x, y)
    with pytest.raises(ValueError, match="params contains NaN"):
        analysis.hessian(M.loss_fn, bad_params, x, y)
    with pytest.raises(ValueError, match="args contains NaN"):
        analysis.hessian_operator(M.loss_fn, params, x.at[3, 3].set(jnp.inf), y)
    with pytest.raises(ValueError, match=r"args contains NaN.*\[0\]"):
        analysis.hvp(M.loss_fn, params, v, x.at[3, 3].set(jnp.nan), y)
    with pytest.raises(ValueError, match="structure of params"):
        analysis.hvp(M.loss_fn, params, v[:1], x, y)
    with pytest.raises(ValueError, match="leaf shapes"):
        analysis.hvp(M.loss_fn, params, [v[0], {"W": v[1]["W"].T, "b": v[1]["b"]}], x, y)
    matvec, dim = analysis.hessian_operator(M.loss_fn, params, x, y)
    with pytest.raises(ValueError, match=rf"shape \({dim},\)"):
        matvec(jnp.ones(dim + 1))
    with pytest.raises(ValueError, match="valid names: hessian, ggn"):
        analysis.hessian_operator(M.loss_fn, params, x, y, curvature="fisher")
    with pytest.raises(ValueError, match="needs output_fn"):
        analysis.hessian_operator(M.loss_fn, params, x, y, curvature="ggn")
    with pytest.raises(ValueError, match="loss must be a function"):
        analysis.hessian_operator(
            M.loss_fn, params, x, y, curvature="ggn", output_fn=M.output_fn, loss="hinge"
        )
    with pytest.raises(ValueError, match="linearise a different loss"):
        analysis.hessian_operator(
            M.loss_fn,
            params,
            x,
            y,
            curvature="ggn",
            output_fn=M.output_fn,
            loss=lambda z, t: 2 * losses.cross_entropy(z, t),
        )
    with pytest.raises(ValueError, match="only used with curvature='ggn'"):
        analysis.hessian_operator(M.loss_fn, params, x, y, output_fn=M.output_fn)
    with pytest.raises(ValueError, match="leading sample axis"):
        analysis.hessian_operator(M.loss_fn, params, x, y[:10], batch_size=4)
    with pytest.raises(ValueError, match="positive integer"):
        analysis.hessian_operator(M.loss_fn, params, x, y, batch_size=0)
    with pytest.raises(ValueError, match="positive integer"):
        analysis.hessian(M.loss_fn, params, x, y, chunk_size=2.5)
    assert set(curvature.__all__) >= {"hvp", "hessian", "hessian_operator", "hessian_blocks"}


# --------------------------------------------------------------------------------------------------
# parts of the params: wrt=, and vectors back to pytrees

# Parts of the 64-9-7-10 MLP: a layer, one leaf, and leaves out of ravel order (the part's own order counts).
PARTS = {
    "layer 1": (lambda p: p[1], ["[1]['W']", "[1]['b']"]),
    "one leaf": (lambda p: p[2]["W"], ["[2]['W']"]),
    "two leaves reversed": (lambda p: (p[2]["b"], p[0]["b"]), ["[2]['b']", "[0]['b']"]),
}


@pytest.fixture(scope="module")
def small_blocks():
    params, x, y = M.small_mlp()
    return analysis.hessian_blocks(M.loss_fn, params, x, y)


def dense_block(blocks, names):
    """The principal block of the dense Hessian on the named leaves, in that order (the oracle)."""
    return np.block([[np.asarray(blocks.block(a, b)) for b in names] for a in names])


@pytest.mark.parametrize(
    "part", ["layer 1", "two leaves reversed", pytest.param("one leaf", marks=pytest.mark.slow)]
)
def test_restricted_operator_is_the_dense_block(small_blocks, part):
    wrt, names = PARTS[part]
    params, x, y = M.small_mlp()
    want = dense_block(small_blocks, names)
    matvec, dim = analysis.hessian_operator(M.loss_fn, params, x, y, wrt=wrt)
    assert dim == want.shape[0] == ravel_pytree(wrt(params))[0].size
    eye = jnp.eye(dim)
    assert rel_err(jax.vmap(matvec)(eye), want) < 1e-10
    if part == "layer 1":  # chunked products and the dense path compile their own programs: one part suffices
        chunked, _ = analysis.hessian_operator(M.loss_fn, params, x, y, wrt=wrt, batch_size=50)
        assert rel_err(jax.vmap(chunked)(eye), want) < 1e-10
        assert rel_err(analysis.hessian(M.loss_fn, params, x, y, wrt=wrt), want) < 1e-10


def test_restricted_ggn_is_the_principal_block_of_the_ggn():
    params, x, y = M.digits_mlp(30, sizes=(64, 5, 10), seed=1)
    G = np.asarray(explicit_ggn(params, x, y)[0])
    edges = np.cumsum([0, 64 * 5, 5, 5 * 10, 10])  # W0, b0, W1, b1 in ravel order
    matvec, dim = analysis.hessian_operator(
        M.loss_fn, params, x, y, curvature="ggn", output_fn=M.output_fn, loss=losses.cross_entropy, wrt=lambda p: p[1]
    )
    assert dim == 60
    want = G[edges[2] :, edges[2] :]
    assert rel_err(jax.vmap(matvec)(jnp.eye(dim)), want) < 1e-10


def test_unravel_inverts_ravel_pytree():
    params, _, _ = M.small_mlp()
    flat, _ = ravel_pytree(params)
    vectors = jax.random.normal(jax.random.PRNGKey(0), (flat.size, 3))
    trees = analysis.unravel(vectors, params)
    assert len(trees) == 3
    for i, tree in enumerate(trees):
        assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(params)
        assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params), strict=True))
        np.testing.assert_array_equal(ravel_pytree(tree)[0], vectors[:, i])
    one = analysis.unravel(vectors[:, 1], params)
    np.testing.assert_array_equal(one[1]["W"], trees[1][1]["W"])
    with pytest.raises(ValueError, match=r"shape \(735,\) or \(735, k\).*wrt\(params\)"):
        analysis.unravel(vectors[:70], params)


def test_wrt_validation():
    params, x, y = M.digits_mlp(20, sizes=(64, 4, 10))
    with pytest.raises(ValueError, match="wrt must be a function"):
        analysis.hessian_operator(M.loss_fn, params, x, y, wrt="[1]")
    with pytest.raises(ValueError, match="wrt failed on the structure of params.*without computing"):
        analysis.hessian_operator(M.loss_fn, params, x, y, wrt=lambda p: 2 * p[0]["W"])
    with pytest.raises(ValueError, match="wrt failed.*KeyError"):
        analysis.hessian_operator(M.loss_fn, params, x, y, wrt=lambda p: p[0]["V"])
    with pytest.raises(ValueError, match="must return leaves of params.*got int"):
        analysis.hessian_operator(M.loss_fn, params, x, y, wrt=lambda p: (p[0]["W"], 3))
    with pytest.raises(ValueError, match="must return leaves of params.*got nothing"):
        analysis.hessian(M.loss_fn, params, x, y, wrt=lambda p: ())
    with pytest.raises(ValueError, match="same leaf of params twice"):
        analysis.hessian_operator(M.loss_fn, params, x, y, wrt=lambda p: (p[1], p[1]["b"]))
    assert "unravel" in curvature.__all__


def test_operator_inside_a_callers_jit_with_concrete_data():
    # Data closed over by the caller's jit are concrete, yet every value there is traced: the checks step aside.
    params, x, y = M.digits_mlp(20, sizes=(64, 4, 10))
    v = jnp.ones(ravel_pytree(params)[0].size)

    @jax.jit
    def products(p):
        matvec, _ = analysis.hessian_operator(M.loss_fn, p, x, y)
        ggn, _ = analysis.hessian_operator(
            M.loss_fn, p, x, y, curvature="ggn", output_fn=M.output_fn, loss=losses.cross_entropy
        )
        return matvec(v), ggn(v), M.flat(analysis.hvp(M.loss_fn, params, jax.tree.map(jnp.ones_like, p), x, y))

    h, g, tree = products(params)
    matvec, _ = analysis.hessian_operator(M.loss_fn, params, x, y)
    assert rel_err(h, matvec(v)) < 1e-12 and rel_err(tree, matvec(v)) < 1e-12 and np.all(np.isfinite(g))
