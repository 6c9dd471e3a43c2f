import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments import backprop as bp
from fflab import losses, mlp


def _net(seed, sizes, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    return [{"W": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a), dtype),
             "b": jnp.asarray(0.1 * rng.standard_normal(b), dtype)}
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)], rng


def test_quick_config(tmp_path):
    payload = bp.main(bp.QUICK, tmp_path)
    assert all(c["holds"] for c in payload["checks"]), payload["checks"]
    saved = json.loads((tmp_path / "backprop.json").read_text())
    assert saved["config"]["depths"] == list(bp.QUICK.depths)
    assert (tmp_path / "backprop.png").stat().st_size > 10_000
    costs, timing, growth = (saved["results"][k] for k in ("costs", "timing", "growth_per_layer"))
    # Exact integer path counts: log10 of n_in * width^depth * n_out.
    for depth, logp in zip(costs["depth"], costs["log10_paths"], strict=True):
        assert logp == pytest.approx(math.log10(bp.QUICK.n_in * bp.QUICK.width**depth * bp.QUICK.n_out))
    # The analytic count is exactly linear in depth: 3 * batch * width^2 multiply-adds per hidden layer.
    per_layer = 3 * bp.QUICK.count_batch * bp.QUICK.width**2
    assert np.all(np.diff(costs["backprop_macs"]) == per_layer * np.diff(costs["depth"]))
    # The claims' numbers are the growth of the saved times, their margins relative to the 1.5 threshold.
    paths, backprop = saved["claims"]
    assert paths["measured"] == growth["path_sum"] == bp.growth_per_layer(timing["depth"], timing["path_sum_seconds"])
    assert backprop["measured"] == bp.growth_per_layer(costs["depth"], costs["backprop_seconds"])
    assert paths["margin"] == pytest.approx((paths["measured"] - bp.GROWTH) / bp.GROWTH)
    assert backprop["margin"] == pytest.approx((bp.GROWTH - backprop["measured"]) / bp.GROWTH)
    # Enumerating 3^(d+1) * 2 paths: from depth 4 on the path sum's time grows by far more than 1.5 per layer.
    assert paths["holds"]
    # The backprop claim fails on these times: the decision "grows by less than 1.5x per layer" says no.
    assert not bp.growth_per_layer(timing["depth"], timing["path_sum_seconds"]) < bp.GROWTH


@pytest.mark.parametrize("depth", [4, 10, 20])
def test_growth_per_layer_separates_exponential_from_linear_costs(depth):
    depths = np.arange(1, depth + 1)
    assert bp.growth_per_layer(depths, 3.0**depths) == pytest.approx(3.0)  # width 3: times 3 per layer
    assert bp.growth_per_layer(depths, 0.4 * 3.0**depths + 7.0) > bp.GROWTH  # an overhead does not hide it
    # A linear cost grows by at most (d + 1) / d per layer: the path claim fails on it, the backprop claim holds.
    assert 1 < bp.growth_per_layer(depths, 2.0 + 5.0 * depths) < bp.GROWTH
    assert 1 < bp.growth_per_layer(depths, 5.0 * depths) <= (depth // 2 + 2) / (depth // 2 + 1)


@functools.cache
def _both_grads(activation):
    """``bp.grad`` and ``jax.grad`` of the same loss, jitted together: one compilation per activation and
    dtype (run eagerly, every primitive of both passes compiles on its own, several times the cost)."""

    @jax.jit
    def both(params, x, y):
        def loss(p):
            return losses.cross_entropy(mlp.apply(p, x, activation=activation), y)

        return bp.grad(params, x, y, activation=activation), jax.grad(loss)(params)

    return both


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("activation", ["relu", "identity"])  # tanh and sigmoid: the QUICK run's exactness check
def test_hand_written_backprop_equals_jax_grad(activation, seed):
    params, rng = _net(seed, [5, 7, 6, 4])
    x = jnp.asarray(rng.standard_normal((9, 5)))
    y = jnp.asarray(rng.integers(0, 4, 9))
    got, want = _both_grads(activation)(params, x, y)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    np.testing.assert_allclose(ravel_pytree(got)[0], ravel_pytree(want)[0], rtol=1e-10, atol=1e-14)


def test_hand_written_backprop_in_float32():
    with jax.enable_x64(False):
        params, rng = _net(0, [6, 8, 3], dtype=jnp.float32)
        x = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 3, 5))
        got, want = _both_grads("tanh")(params, x, y)
        assert ravel_pytree(got)[0].dtype == jnp.float32
        np.testing.assert_allclose(ravel_pytree(got)[0], ravel_pytree(want)[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_backprop_and_path_sum_jacobians_equal_jax_jacobian(activation):
    sizes = [3, 4, 2, 5, 2]
    params, rng = _net(1, sizes)
    x = jnp.asarray(rng.standard_normal(3))

    @jax.jit  # both Jacobians in one compiled call: eagerly, each primitive would compile on its own
    def jacobians(p, v):
        apply = functools.partial(mlp.apply, p, activation=activation)
        return jax.jacobian(apply)(v), bp.backprop_jacobian(p, v, activation=activation)

    want, by_backprop = jacobians(params, x)
    jac, paths = bp.path_sum_jacobian(params, x, activation=activation)
    assert paths == 3 * 4 * 2 * 5 * 2
    np.testing.assert_allclose(jac, want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(by_backprop, want, rtol=1e-10, atol=1e-14)


def test_multiply_adds_by_hand():
    # sizes 2-3-4: forward 6 + 12, dW 6 + 12, dh of the second layer 12 -> 48 per example.
    assert bp.backprop_macs([2, 3, 4], 1) == 48
    assert bp.backprop_macs([2, 3, 4], 5) == 240


@pytest.mark.parametrize("depth", [1, 3])
def test_analytic_macs_match_xla_flops(depth):
    sizes = [32, *([64] * depth), 10]
    params, rng = _net(0, sizes)
    x = jnp.asarray(rng.standard_normal((16, 32)))
    y = jnp.asarray(rng.integers(0, 10, 16))
    flops = jax.jit(bp.grad).lower(params, x, y).compile().cost_analysis()["flops"]
    assert 1.0 <= flops / (2 * bp.backprop_macs(sizes, 16)) < 1.1


def test_unknown_activation_names_the_valid_ones():
    params, _ = _net(0, [3, 4, 2])
    hs = bp.forward(params, jnp.ones((5, 3)))
    assert [h.shape for h in hs] == [(5, 3), (5, 4), (5, 2)]
    with pytest.raises(ValueError, match="valid names: relu, tanh, sigmoid, identity"):
        bp.backward(params, hs, jnp.ones((5, 2)), activation="softplus")
