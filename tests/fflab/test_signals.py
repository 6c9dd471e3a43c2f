"""Forward/backward signal statistics against closed forms and a manual ``jax.grad``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fflab import losses, mlp, signals


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orthogonal_deep_linear_net_preserves_variance(seed):
    kx, kp = jax.random.split(jax.random.key(seed))
    x = 3.0 * jax.random.normal(kx, (128, 32)) + 1.0
    params = mlp.init(kp, [32] * 11, init="orthogonal")
    s = signals.activation_stats(params, x, activation="identity")
    assert s.pre_var.shape == (10,) and s.post_var.shape == (9,)
    # Orthogonal maps keep every sample's norm and the trace of the covariance.
    np.testing.assert_allclose(s.pre_second_moment, jnp.mean(x**2), rtol=1e-10)
    np.testing.assert_allclose(s.pre_var, jnp.mean(jnp.var(x, axis=0)), rtol=1e-10)
    np.testing.assert_allclose(s.post_var, s.pre_var[:-1], rtol=1e-15)


def relu_moments(seed, scale, depth=10, width=256):
    kx, kp = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (256, width))
    params = mlp.init(kp, [width] * (depth + 1), init="he_forward", scale=scale)
    return signals.activation_stats(params, x, activation="relu")


def per_layer_ratio(q):
    """Geometric mean of ``q_{l+1} / q_l``."""
    return float(jnp.exp(jnp.mean(jnp.log(q[1:] / q[:-1]))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relu_he_init_keeps_the_second_moment(seed):
    s = relu_moments(seed, 1.0)
    # q_l = n_in * (2 / n_in) * E[relu(z)^2] = q_{l-1} (He et al. 2015), q_1 = 2 E[x^2] = 2. A finite
    # width-256 net fluctuates around that by some 10% a layer.
    assert per_layer_ratio(s.pre_second_moment) == pytest.approx(1.0, rel=0.1)
    assert jnp.all((s.pre_second_moment > 1.0) & (s.pre_second_moment < 4.0))
    np.testing.assert_allclose(s.post_second_moment, 0.5 * s.pre_second_moment[:-1], rtol=0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relu_scaled_init_decays_geometrically(seed):
    s = relu_moments(seed, 0.5)
    # Each layer multiplies q by scale^2 * 2 * 1/2 = 0.25, so ten layers lose a factor of 4^9 ~ 2.6e5.
    assert per_layer_ratio(s.pre_second_moment) == pytest.approx(0.25, rel=0.1)
    assert 0.5 < s.pre_second_moment[-1] / (2 * 0.25 * 0.25**9) < 2.0


def test_activation_frequency_and_dead_units():
    params = mlp.init(jax.random.key(0), [3, 5, 4, 2])
    params[0]["b"] = params[0]["b"].at[2].set(-1e6).at[4].set(10.0)
    params[1]["b"] = params[1]["b"].at[0].set(-1e6).at[3].set(-1e6)
    x = jax.random.normal(jax.random.key(1), (200, 3))
    freqs = signals.activation_frequency(params, x)
    assert [f.shape for f in freqs] == [(5,), (4,)]
    assert freqs[0][2] == 0.0 and freqs[0][4] == 1.0
    assert freqs[1][0] == 0.0 and freqs[1][3] == 0.0
    h1 = jax.nn.relu(x @ params[0]["W"] + params[0]["b"])
    np.testing.assert_array_equal(freqs[0], np.mean(np.asarray(h1) > 0, axis=0))
    np.testing.assert_array_equal(signals.dead_units(params, x), [1, 2])
    # tanh is "on" when positive; the dead relu unit is a saturated tanh unit.
    assert signals.activation_frequency(params, x, activation=jnp.tanh)[0][2] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gradient_stats_match_manual_grad(seed, activation):
    kx, kp = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (64, 6))
    y = jnp.arange(64) % 3
    params = mlp.init(kp, [6, 8, 7, 3])
    f = mlp.activation_fn(activation)
    s = signals.gradient_stats(params, x, y, activation=activation)

    grads = jax.grad(lambda p: losses.cross_entropy(mlp.apply(p, x, activation=activation), y))(params)
    np.testing.assert_allclose(s.weight_grad_var, [jnp.var(g["W"]) for g in grads], rtol=1e-12)
    np.testing.assert_allclose(
        s.weight_grad_second_moment, [jnp.mean(g["W"] ** 2) for g in grads], rtol=1e-12
    )

    def from_layer(z, layer):
        # The rest of the network as a function of layer ``layer``'s pre-activations.
        for p in params[layer + 1 :]:
            z = f(z) @ p["W"] + p["b"]
        return losses.cross_entropy(z, y)

    h = x
    for layer, p in enumerate(params):
        z = h @ p["W"] + p["b"]
        delta = jax.grad(from_layer)(z, layer)
        assert s.delta_var[layer] == pytest.approx(float(jnp.mean(jnp.var(delta, axis=0))), rel=1e-12)
        assert s.delta_second_moment[layer] == pytest.approx(float(jnp.mean(delta**2)), rel=1e-12)
        assert s.delta_mean[layer] == pytest.approx(float(jnp.mean(delta)), abs=1e-15)
        h = f(z)


def test_gradient_stats_with_a_given_cotangent():
    params = mlp.init(jax.random.key(0), [4, 5, 3])
    x = jax.random.normal(jax.random.key(1), (16, 4))
    ct = jax.random.normal(jax.random.key(2), (16, 3))
    s = signals.gradient_stats(params, x, ct, loss=signals.cotangent_loss)
    assert s.delta_var[-1] == pytest.approx(float(jnp.mean(jnp.var(ct, axis=0))), rel=1e-12)
    # dC/dW_L = h^T delta_L.
    h = jax.nn.relu(x @ params[0]["W"] + params[0]["b"])
    assert s.weight_grad_var[-1] == pytest.approx(float(jnp.var(h.T @ ct)), rel=1e-12)


def test_signals_validate_inputs():
    params = mlp.init(jax.random.key(0), [4, 5, 3])
    with pytest.raises(ValueError, match=r"shape \(batch, n_in\)"):
        signals.activation_stats(params, jnp.ones(4))
    with pytest.raises(ValueError, match="layer 0"):
        signals.activation_stats(params, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="valid names"):
        signals.activation_stats(params, jnp.ones((2, 4)), activation="gelu")
    with pytest.raises(ValueError, match="list"):
        signals.activation_stats({"W": jnp.ones((4, 3)), "b": jnp.ones(3)}, jnp.ones((2, 4)))


def _numpy_second_moments(params, x, cot, activation):
    """E[z_l^2] and E[delta_l^2] for C = sum(z_L * cot), by a plain numpy forward and reverse pass."""
    f, fprime = {"relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0) * 1.0),
                 "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2)}[activation]
    layers = [(np.asarray(p["W"]), np.asarray(p["b"])) for p in params]
    zs, h = [], np.asarray(x)
    for W, b in layers:
        zs.append(h @ W + b)
        h = f(zs[-1])
    deltas = [np.asarray(cot)]
    for i in range(len(layers) - 1, 0, -1):
        deltas.insert(0, (deltas[0] @ layers[i][0].T) * fprime(zs[i - 1]))
    return [np.mean(z**2) for z in zs], [np.mean(d**2) for d in deltas]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_second_moments_match_a_numpy_forward_and_reverse_pass(activation, seed):
    k_net, k_x, k_c, k_b = jax.random.split(jax.random.key(seed), 4)
    params = mlp.init(k_net, [6, 9, 8, 7, 5], init="he_forward")
    params[1]["b"] = jax.random.normal(k_b, (8,))  # a bias too, so it is not left out
    x, cot = jax.random.normal(k_x, (11, 6)), jax.random.normal(k_c, (11, 5))
    got = signals.second_moments(params, x, cot, activation=activation)
    want_fwd, want_bwd = _numpy_second_moments(params, x, cot, activation)
    np.testing.assert_allclose(got.forward, want_fwd, rtol=1e-10)
    np.testing.assert_allclose(got.backward, want_bwd, rtol=1e-10)
    # The same numbers as the two general statistics.
    np.testing.assert_allclose(got.forward, signals.activation_stats(params, x, activation=activation)
                               .pre_second_moment, rtol=1e-12)
    stats = signals.gradient_stats(params, x, cot, activation=activation, loss=signals.cotangent_loss)
    np.testing.assert_allclose(got.backward, stats.delta_second_moment, rtol=1e-12)


def test_second_moments_scale_as_powers_of_the_weight_scale_in_relu_nets():
    # Relu is positively homogeneous: every W times s gives z_l times s^l and delta_l times s^(L - l).
    k_net, k_x, k_c = jax.random.split(jax.random.key(3), 3)
    x, cot = jax.random.normal(k_x, (10, 16)), jax.random.normal(k_c, (10, 16))
    one = signals.second_moments(mlp.init(k_net, [16] * 7, init="he_forward"), x, cot)
    for s in (0.5, 2.0):
        scaled = signals.second_moments(mlp.init(k_net, [16] * 7, init="he_forward", scale=s), x, cot)
        np.testing.assert_allclose(scaled.forward, one.forward * s ** (2 * np.arange(1, 7)), rtol=1e-12)
        np.testing.assert_allclose(scaled.backward, one.backward * s ** (2 * np.arange(5, -1, -1)), rtol=1e-12)


def test_second_moments_reject_a_cotangent_of_the_wrong_shape():
    params = mlp.init(jax.random.key(0), [3, 4, 2])
    with pytest.raises(ValueError, match=r"cotangent must have the logits' shape \(5, 2\), got \(5, 3\)"):
        signals.second_moments(params, jnp.ones((5, 3)), jnp.ones((5, 3)))
