import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fflab import losses, mlp


@pytest.mark.parametrize("sizes", [[5, 3], [6, 4, 3], [7, 6, 5, 4, 2]])
def test_shapes_and_param_count(sizes):
    params = mlp.init(jax.random.PRNGKey(0), sizes)
    assert len(params) == len(sizes) - 1
    for layer, n_in, n_out in zip(params, sizes[:-1], sizes[1:], strict=True):
        assert layer["W"].shape == (n_in, n_out) and layer["b"].shape == (n_out,)
        assert not jnp.any(layer["b"])
    assert mlp.num_params(params) == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    logits, hidden = mlp.apply(params, jnp.ones((9, sizes[0])), return_hidden=True)
    assert logits.shape == (9, sizes[-1])
    assert [h.shape for h in hidden] == [(9, n) for n in sizes[1:-1]]


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "identity"])
def test_apply_matches_a_numpy_forward_pass(activation):
    numpy_f = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh,
               "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "identity": lambda z: z}[activation]
    key_p, key_b, key_x = jax.random.split(jax.random.PRNGKey(1), 3)
    params = mlp.init(key_p, [4, 6, 5, 3])
    params = [dict(layer, b=jax.random.normal(k, layer["b"].shape))
              for layer, k in zip(params, jax.random.split(key_b, 3), strict=True)]
    x = jax.random.normal(key_x, (7, 4))
    h = np.asarray(x)
    hidden = []
    for layer in params[:-1]:
        h = numpy_f(h @ np.asarray(layer["W"]) + np.asarray(layer["b"]))
        hidden.append(h)
    expected = h @ np.asarray(params[-1]["W"]) + np.asarray(params[-1]["b"])
    logits, got_hidden = mlp.apply(params, x, activation=activation, return_hidden=True)
    np.testing.assert_allclose(logits, expected, rtol=1e-12)
    for got, want in zip(got_hidden, hidden, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_loss_gradients_pass_check_grads(activation):
    key_p, key_x = jax.random.split(jax.random.PRNGKey(2))
    params = mlp.init(key_p, [5, 7, 4], init="glorot")
    x = jax.random.normal(key_x, (11, 5))
    y = jnp.arange(11) % 4

    def loss(p):
        return losses.cross_entropy(mlp.apply(p, x, activation=activation), y)

    check_grads(loss, (params,), order=2, modes=["fwd", "rev"])


def test_float32_by_default_and_errors_for_bad_input():
    with jax.enable_x64(False):
        params = mlp.init(jax.random.PRNGKey(0), [3, 2])
        assert params[0]["W"].dtype == jnp.float32
    with pytest.raises(ValueError, match="at least two positive widths"):
        mlp.init(jax.random.PRNGKey(0), [3])
    with pytest.raises(ValueError, match="valid names: relu, tanh, sigmoid, identity"):
        mlp.apply(mlp.init(jax.random.PRNGKey(0), [3, 2]), jnp.ones((1, 3)), activation="gelu")
    with pytest.raises(ValueError, match="input has 4 features, the first layer expects 3"):
        mlp.apply(mlp.init(jax.random.PRNGKey(0), [3, 2]), jnp.ones((1, 4)))
