import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import transformations as tr
from fflab import data, norm, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("transformations")
    payload = tr.main(tr.QUICK, out)  # on one BLAS thread (tests/conftest.py)
    return payload, json.loads((out / "transformations.json").read_text()), out


def test_quick_config_claims_and_files(run):
    payload, saved, out = run
    claims = payload["claims"]
    # Same model, faster training (transformed and BN nets both beat the plain one on digits).
    assert all(c["holds"] for c in claims[:3]), claims[:3]
    h = saved["results"]["hessian"]
    hp, ht = h["plain"], h["transform"]
    assert claims[3]["holds"] == (ht["offdiag_fraction"] < 0.9 * hp["offdiag_fraction"])
    assert claims[4]["holds"] == (ht["log10_std"] < hp["log10_std"])
    for name in ("transformations", "transformations_hessian"):
        assert (out / f"{name}.png").stat().st_size > 10_000


def test_best_rates_recounted(run):
    _, saved, _ = run
    for net in tr.NETS:
        r = saved["results"]["runs"][net]
        loss = np.asarray(r["batch_loss"], float)
        assert loss.shape == (len(tr.QUICK.learning_rates), tr.QUICK.epochs)
        final = np.where(np.asarray(r["finite"]), loss[:, -1], np.inf)
        assert r["best"] == int(np.argmin(final))
        assert r["best_lr"] == tr.QUICK.learning_rates[r["best"]]


@pytest.mark.slow
def test_vmapped_lane_matches_fit(run):
    """The transformed net's lane equals fflab.train.fit with optax.sgd at that rate: same batch losses."""
    _, saved, _ = run
    config, j, epochs = tr.QUICK, 1, 3
    lr = config.learning_rates[j]
    ds = data.load(config.dataset)
    dtype = jnp.zeros(()).dtype
    sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    k_init, k_data = jax.random.split(jax.random.key(config.seed))
    params, state = norm.init(k_init, sizes, norm="transform", init=config.init, dtype=dtype)
    opt = optax.sgd(lr)
    result = train.fit(train.init_state(params, opt, k_data, state), opt, (ds.x_train, ds.y_train),
                       epochs=epochs, batch_size=config.batch_size, activation=config.activation,
                       norm="transform", progress=False)
    saved_loss = np.asarray(saved["results"]["runs"]["transform"]["batch_loss"], float)[j, :epochs]
    np.testing.assert_allclose(result.history["batch_loss"], saved_loss, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariance_of_a_fresh_transformation(seed):
    """From alpha = beta = 0, one full re-estimation moves alpha to mean sigmoid' but not the outputs."""
    sizes = [6, 5, 4, 3]
    rng = np.random.default_rng(seed)
    # norm.init's layout (shapes only, nothing compiled), filled from numpy: no per-shape PRNG compilations.
    params, state = jax.eval_shape(lambda k: norm.init(k, sizes, norm="transform"), jax.random.key(0))
    params = [{"W": rng.normal(size=layer["W"].shape) / np.sqrt(layer["W"].shape[0]),
               "b": rng.normal(size=layer["b"].shape) + 0.7,  # off-centre units, so beta matters too
               "C": [np.zeros(c.shape) for c in layer["C"]]} for layer in params]
    state = jax.tree_util.tree_map(lambda a: np.zeros(a.shape), state)
    x = rng.normal(size=(40, sizes[0]))
    out = tr.invariance(params, state, x, activation="sigmoid")
    z1 = x @ params[0]["W"] + params[0]["b"]
    s1 = 1 / (1 + np.exp(-z1))
    alpha1 = (s1 * (1 - s1)).mean(0)  # sigmoid' = s (1 - s), averaged over the data
    assert out["max_alpha_change"] >= alpha1.max() - 1e-12
    assert out["max_abs_logit_change"] < 1e-10 * max(1.0, out["max_abs_logit"])


def test_hessian_setup_is_the_same_function_in_two_parameterisations(run):
    _, saved, _ = run
    h = saved["results"]["hessian"]
    sizes = h["sizes"]
    assert sizes[0] == 64 // tr.QUICK.hessian_pool**2
    # W and b of every layer, plus a shortcut from each lower source into each layer above the first.
    weights = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    shortcuts = sum(sizes[j] * sizes[k + 1] for k in range(len(sizes) - 1) for j in range(k))
    assert h["num_params"] == weights + shortcuts
    assert h["transform"]["loss"] == pytest.approx(h["plain"]["loss"], rel=1e-9)
    for name in ("plain", "transform"):
        mags = np.asarray(h[name]["abs_eigenvalues_desc"], float)
        assert np.all(np.diff(mags) <= 0)
        assert mags[0] == pytest.approx(max(abs(h[name]["lambda_max"]), abs(h[name]["lambda_min"])), rel=1e-3)
        assert 0 < h[name]["offdiag_fraction"] < 1


def test_pool_images_against_a_loop():
    x = np.random.default_rng(0).random((3, 8 * 8))
    pooled = tr.pool_images(x, (8, 8), 2)
    img = x.reshape(3, 8, 8)
    expected = np.array([[img[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean() for i in range(4) for j in range(4)]
                         for n in range(3)])
    np.testing.assert_allclose(pooled, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="does not divide"):
        tr.pool_images(x, (8, 8), 3)
