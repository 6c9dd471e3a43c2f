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


@functools.partial(jax.jit, static_argnames=("activation", "gamma", "centre"))
def _update_twice(params, state, x1, x2, *, activation, gamma, centre):
    """Two re-estimations (momentum 0.5, two batches) and the logits on x1 before and after each."""
    out = [norm.apply(params, state, x1, norm="transform", activation=activation)[0]]
    for xb in (x1, x2):
        state = norm.transform_update(params, state, xb, activation=activation, momentum=0.5, gamma=gamma,
                                      centre=centre)
        out.append(norm.apply(params, state, x1, norm="transform", activation=activation)[0])
    fresh = norm.transform_update(params, state, x2, activation=activation, gamma=gamma, centre=centre)
    return out, fresh


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("gamma, centre", [(True, True), (False, False)])
def test_gamma_and_centring_keep_the_function_and_meet_their_definitions(seed, activation, gamma, centre):
    """Vatanen et al.'s gamma and input centring, against numpy: the outputs never move; after a fresh
    estimate (momentum 0) each unit's output has mean(h^2) * mean(h'^2) = 1 and the inputs mean zero."""
    x1, _ = _data(seed)
    x2, _ = _data(seed + 10)
    params, state = norm.init(jax.random.PRNGKey(seed), [6, 5, 4, 3], norm="transform", init="glorot")
    rng = np.random.default_rng(seed)  # non-zero shortcuts and biases, so every compensation term is exercised
    params = jax.tree_util.tree_map(lambda a: a + 0.3 * rng.normal(size=a.shape), params)
    outs, fresh = _update_twice(params, state, x1, x2, activation=activation, gamma=gamma, centre=centre)
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], atol=1e-10)
    np.testing.assert_allclose(fresh.mean, np.asarray(x2).mean(0) if centre else 0, atol=1e-12)
    # The transformed hidden outputs on x2, by hand in numpy from the shifted parameters.
    f = {"tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z))}[activation]
    df = {"tanh": lambda z: 1 - np.tanh(z) ** 2, "sigmoid": lambda z: f(z) * (1 - f(z))}[activation]
    eff = jax.tree_util.tree_map(lambda p, s: np.asarray(p + s), params, list(fresh.shift))
    sources = [np.asarray(x2) - np.asarray(fresh.mean)]
    for k in range(2):
        z = sources[-1] @ eff[k]["W"] + eff[k]["b"] + sum(s @ c for s, c in zip(sources[:k], eff[k]["C"], strict=True))
        a, b, g = (np.asarray(t[k]) for t in (fresh.alpha, fresh.beta, fresh.gamma))
        h, slope = g * (f(z) - a * z - b), g * (df(z) - a)
        np.testing.assert_allclose(h.mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(slope.mean(0), 0, atol=1e-12)
        product = ((h / g) ** 2).mean(0) * ((slope / g) ** 2).mean(0)  # of the unscaled g = f - alpha z - beta
        expected = product / (product + 1e-12) if gamma else product  # gamma^4 = 1 / (product + eps)
        np.testing.assert_allclose((h**2).mean(0) * (slope**2).mean(0), expected, rtol=1e-9)
        if not gamma:
            np.testing.assert_allclose(g, 1.0)
        sources.append(h)


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


def test_the_transform_preset_passes_its_options_to_transform_update():
    from fflab import presets

    x, y = _data(0)
    model = presets.classifier("tanh", "transform", transform_momentum=0.0, transform_gamma=True)
    params, state = model.init(jax.random.PRNGKey(0), [6, 5, 4, 3], init="glorot")
    _, got = jax.jit(model.loss_fn)(params, state, x, y)
    want = norm.transform_update(params, state, x, activation="tanh", gamma=True, centre=True)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert float(jnp.abs(got.gamma[0] - 1).max()) > 0.01 and float(jnp.abs(got.mean).max()) > 0.1
    # Options that only the transformed net reads do not split the other presets.
    assert presets.classifier("tanh", "batchnorm", transform_gamma=True) is presets.classifier("tanh", "batchnorm")
