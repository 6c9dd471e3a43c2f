import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fflab import losses


def _logits_labels(seed=0, n=8, k=5):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, k)) * 3), jnp.asarray(rng.integers(0, k, n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_entropy_equals_the_hand_formula(seed):
    logits, labels = _logits_labels(seed)
    z = np.asarray(logits)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(len(z)), np.asarray(labels)]))
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-12)
    one_hot = jax.nn.one_hot(labels, 5)
    assert float(losses.cross_entropy(logits, one_hot)) == pytest.approx(expected, rel=1e-12)
    assert float(losses.nll(jax.nn.log_softmax(logits), labels)) == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = jnp.array([[1000.0, 0.0], [0.0, -1000.0]])
    value = losses.cross_entropy(logits, jnp.array([1, 1]))
    assert float(value) == pytest.approx((1000.0 + 1000.0) / 2, rel=1e-12)


def test_mse_error_rate_and_l2():
    pred = jnp.array([[1.0, 2.0], [3.0, 5.0]])
    target = jnp.array([[0.0, 2.0], [1.0, 1.0]])
    assert float(losses.mse(pred, target)) == pytest.approx((1 + 0 + 4 + 16) / 2)
    logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 2.0]])
    assert float(losses.error_rate(logits, jnp.array([0, 1, 1, 0]))) == pytest.approx(0.5)
    params = [{"W": jnp.array([[1.0, 2.0]]), "b": jnp.array([10.0])}]
    assert float(losses.l2(params)) == pytest.approx(0.5 * 5)
    assert float(losses.l2(params, weights_only=False)) == pytest.approx(0.5 * 105)


def test_shapes_are_checked_not_broadcast():
    logits, labels = _logits_labels()
    with pytest.raises(ValueError, match=r"do not match logits of shape \(8, 5\)"):
        losses.cross_entropy(logits, labels[:4])
    with pytest.raises(ValueError, match="one-hot of shape"):
        losses.cross_entropy(logits, jnp.ones((8, 4)))
    with pytest.raises(ValueError, match="must be integers"):
        losses.cross_entropy(logits, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match="differ"):
        losses.mse(jnp.ones((4, 1)), jnp.ones((4,)))
