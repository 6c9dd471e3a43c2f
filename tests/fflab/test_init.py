import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fflab import init

FORMULAS = {
    "glorot_relu": lambda n_in, n_out: math.sqrt(4 / (n_in + n_out)),
    "glorot": lambda n_in, n_out: math.sqrt(2 / (n_in + n_out)),
    "he_forward": lambda n_in, n_out: math.sqrt(2 / n_in),
    "he_backward": lambda n_in, n_out: math.sqrt(2 / n_out),
    "lecun": lambda n_in, n_out: math.sqrt(1 / n_in),
    "sparse": lambda n_in, n_out: math.sqrt(15 / n_in),
    "orthogonal": lambda n_in, n_out: math.sqrt(1 / max(n_in, n_out)),
    "standard_uniform": lambda n_in, n_out: math.sqrt(1 / (3 * n_in)),  # U[+-1/sqrt(n_in)]
    "glorot_uniform": lambda n_in, n_out: math.sqrt(2 / (n_in + n_out)),  # U[+-sqrt(6/(n_in+n_out))]
}


@pytest.mark.parametrize("scheme", sorted(FORMULAS))
def test_empirical_std_matches_formula_on_1000x1000(scheme):
    w = init.weights(jax.random.PRNGKey(0), 1000, 1000, scheme)
    expected = FORMULAS[scheme](1000, 1000)
    assert w.shape == (1000, 1000)
    assert abs(float(jnp.std(w)) / expected - 1) < 0.03
    assert init.std(scheme, 1000, 1000) == pytest.approx(expected)


@pytest.mark.parametrize("scheme", ["glorot_relu", "he_forward", "he_backward", "lecun"])
def test_rectangular_layer_uses_the_right_fan(scheme):
    w = init.weights(jax.random.PRNGKey(1), 400, 1600, scheme)
    assert abs(float(jnp.std(w)) / FORMULAS[scheme](400, 1600) - 1) < 0.03


def test_scale_multiplies_the_weights():
    key = jax.random.PRNGKey(2)
    np.testing.assert_allclose(init.weights(key, 30, 20, "glorot", scale=3.0),
                               3.0 * init.weights(key, 30, 20, "glorot"), rtol=1e-12)


@pytest.mark.parametrize("partitionable", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_gaussian_draw_is_jax_random_normal_of_the_layer_shape(dtype, partitionable):
    # The schemes draw flat and reshape (faster to compile); the weights must stay the 2-D draw's numbers.
    with jax.threefry_partitionable(partitionable):
        for n_in, n_out in [(144, 10), (7, 3), (1, 5)]:
            key = jax.random.PRNGKey(n_in)
            expected = init.std("lecun", n_in, n_out) * jax.random.normal(key, (n_in, n_out), dtype)
            np.testing.assert_array_equal(init.weights(key, n_in, n_out, "lecun", dtype=dtype), expected)


@pytest.mark.parametrize("partitionable", [False, True])
def test_flat_draw_equals_the_shaped_draw(partitionable):
    key = jax.random.PRNGKey(7)
    with jax.threefry_partitionable(partitionable):
        for shape in [(4, 3, 10), (25, 2), (6,)]:
            args = (jnp.float32, -0.5, 2.0)
            np.testing.assert_array_equal(init.flat_draw(jax.random.uniform, key, shape, *args),
                                          jax.random.uniform(key, shape, *args))
            np.testing.assert_array_equal(init.flat_draw(jax.random.normal, key, shape),
                                          jax.random.normal(key, shape))


def test_sparse_has_exactly_15_nonzero_incoming_weights_per_unit():
    w = np.asarray(init.weights(jax.random.PRNGKey(3), 200, 50, "sparse"))
    np.testing.assert_array_equal((w != 0).sum(axis=0), np.full(50, 15))
    small = np.asarray(init.weights(jax.random.PRNGKey(3), 8, 5, "sparse"))
    np.testing.assert_array_equal((small != 0).sum(axis=0), np.full(5, 8))


@pytest.mark.parametrize("shape", [(50, 50), (80, 30), (30, 80)])
def test_orthogonal_has_unit_singular_values_times_gain(shape):
    w = np.asarray(init.weights(jax.random.PRNGKey(4), *shape, "orthogonal", scale=1.5))
    np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), 1.5, atol=1e-10)


def test_unknown_scheme_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: glorot_relu, glorot, he_forward"):
        init.weights(jax.random.PRNGKey(0), 3, 3, "xavier")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_uniform_schemes_are_glorot_and_bengios_draws(dtype):
    # Their eq. 1 (standard) and eq. 16 (normalized): U[-a, a] with a = 1/sqrt(n_in) and sqrt(6/(n_in + n_out)).
    key = jax.random.PRNGKey(5)
    for scheme, limit in (("standard_uniform", 1 / math.sqrt(40)), ("glorot_uniform", math.sqrt(6 / 70))):
        w = init.weights(key, 40, 30, scheme, dtype=dtype)
        assert w.dtype == dtype and float(jnp.max(jnp.abs(w))) <= limit
        assert float(jnp.max(jnp.abs(w))) > 0.95 * limit  # the draw fills the interval
        np.testing.assert_array_equal(w, jax.random.uniform(key, (40, 30), dtype, -limit, limit))
