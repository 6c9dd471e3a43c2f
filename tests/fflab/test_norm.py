import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

from fflab import losses, norm


def _data(seed, n=40, d=6):
    kx, ky = jax.random.split(jax.random.PRNGKey(100 + seed))
    return jax.random.normal(kx, (n, d)) * 2 + 1, jax.random.randint(ky, (n,), 0, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batchnorm_matches_the_numpy_formula_and_updates_running_stats(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(32, 5)) * 3 + 2
    params = {"gamma": jnp.asarray(rng.normal(size=5)), "beta": jnp.asarray(rng.normal(size=5))}
    state = norm.BatchNormState(jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.uniform(1, 2, size=5)))
    y, new = norm.batchnorm(params, state, jnp.asarray(z), train=True, momentum=0.8, eps=1e-5)
    mean, var = z.mean(0), z.var(0)
    expected = np.asarray(params["gamma"]) * (z - mean) / np.sqrt(var + 1e-5) + np.asarray(params["beta"])
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    np.testing.assert_allclose(new.mean, 0.8 * np.asarray(state.mean) + 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(new.var, 0.8 * np.asarray(state.var) + 0.2 * z.var(0, ddof=1), rtol=1e-12)
    y_eval, same = norm.batchnorm(params, new, jnp.asarray(z), train=False)
    np.testing.assert_allclose(
        y_eval, np.asarray(params["gamma"]) * (z - np.asarray(new.mean)) / np.sqrt(np.asarray(new.var) + 1e-5)
        + np.asarray(params["beta"]), rtol=1e-12)
    assert same is new


def test_batchnorm_network_train_and_eval_modes_agree_once_running_stats_converge():
    x, _ = _data(0, n=64)
    params, state = norm.init(jax.random.PRNGKey(0), [6, 8, 7, 3], norm="batchnorm", init="glorot")
    # One compiled training-mode pass, called 200 times (op-by-op dispatch of 200 eager passes costs seconds).
    train_step = jax.jit(functools.partial(norm.apply, norm="batchnorm", activation="tanh", train=True))
    for _ in range(200):  # the same batch every time: running averages converge to its statistics
        logits_train, state = train_step(params, state, x)
    logits_eval, _ = norm.apply(params, state, x, norm="batchnorm", activation="tanh", train=False)
    # Running variance is unbiased (m / (m - 1)), the batch one is not: agreement to that factor's effect.
    np.testing.assert_allclose(logits_eval, logits_train, atol=0.05)


def test_batchnorm_hessian_is_finite_symmetric_and_second_derivatives_check():
    x, y = _data(1, n=20, d=4)
    params, state = norm.init(jax.random.PRNGKey(1), [4, 5, 3], norm="batchnorm", init="glorot")

    def loss(p):
        logits, _ = norm.apply(p, state, x, norm="batchnorm", activation="tanh", train=True)
        return losses.cross_entropy(logits, y)

    # Jitted: the same derivative rules, traced through the whole loss, but a few compiled programs instead
    # of a couple of hundred op-by-op compilations (most of this test's time when run eagerly).
    flat, unravel = ravel_pytree(params)
    h = jax.jit(jax.hessian(lambda v: loss(unravel(v))))(flat)
    assert np.all(np.isfinite(h))
    np.testing.assert_allclose(h, h.T, atol=1e-10)
    check_grads(jax.jit(loss), (params,), order=2, modes=["rev"])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_transform_update_keeps_the_function_and_centres_output_and_slope(seed, activation):
    x, _ = _data(seed)
    params, state = norm.init(jax.random.PRNGKey(seed), [6, 5, 4, 3, 3], norm="transform", init="glorot")
    params = [dict(layer, b=layer["b"] + 0.3) for layer in params]
    before, _ = norm.apply(params, state, x, norm="transform", activation=activation)
    for _ in range(2):
        state = norm.transform_update(params, state, x, activation=activation)
        after, _ = norm.apply(params, state, x, norm="transform", activation=activation)
        np.testing.assert_allclose(after, before, atol=1e-12)
    # With the statistics re-estimated on this batch, each unit's output and slope average zero on it.
    f = {"tanh": jnp.tanh, "relu": jax.nn.relu}[activation]
    _, pre = norm._transform_forward(norm._shifted(params, state), state, x, f)
    for z, alpha, beta in zip(pre, state.alpha, state.beta, strict=True):
        slope = jax.vmap(jax.vmap(jax.grad(f)))(z)
        np.testing.assert_allclose(jnp.mean(f(z) - alpha * z - beta, axis=0), 0, atol=1e-12)
        np.testing.assert_allclose(jnp.mean(slope - alpha, axis=0), 0, atol=1e-12)
    # The shortcuts took the linear part, through the state's shift; the parameters are untouched.
    assert any(float(jnp.abs(c).max()) > 0 for c in state.shift[-1]["C"])
    assert all(float(jnp.abs(c).max()) == 0 for c in params[-1]["C"])


def test_transform_network_at_zero_state_is_the_plain_mlp():
    from fflab import mlp

    x, _ = _data(0)
    params, state = norm.init(jax.random.PRNGKey(3), [6, 5, 4, 3], norm="transform")
    plain = [{"W": layer["W"], "b": layer["b"]} for layer in params]
    got, _ = norm.apply(params, state, x, norm="transform", activation="relu")
    np.testing.assert_allclose(got, mlp.apply(plain, x, activation="relu"), rtol=1e-12)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="valid names: batchnorm, transform"):
        norm.init(jax.random.PRNGKey(0), [3, 4, 2], norm="layernorm")
    with pytest.raises(ValueError, match="at least one hidden layer"):
        norm.init(jax.random.PRNGKey(0), [3, 2], norm="batchnorm")
    params, state = norm.init(jax.random.PRNGKey(0), [3, 4, 2], norm="batchnorm")
    with pytest.raises(ValueError, match=r"expected inputs of shape \(batch, 3\)"):
        norm.apply(params, state, jnp.ones((5, 4)), norm="batchnorm")
    with pytest.raises(ValueError, match="at least 2 samples"):
        norm.apply(params, state, jnp.ones((1, 3)), norm="batchnorm", train=True)
