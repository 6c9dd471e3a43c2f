import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import linear_collapse as lc
from fflab import mlp


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("linear_collapse")
    lc.main(lc.QUICK, out)
    return json.loads((out / "linear_collapse.json").read_text()), out


def test_quick_config_claims_and_checks_hold(quick):
    saved, out = quick
    assert all(c["holds"] for c in saved["claims"] + saved["checks"]), saved["claims"] + saved["checks"]
    assert saved["config"]["n"] == lc.QUICK.n and saved["config"]["datasets"] == list(lc.QUICK.datasets)
    assert (out / "linear_collapse.png").stat().st_size > 10_000
    claims = {c["text"]: c for c in saved["claims"]}
    for name, r in saved["results"].items():
        x, y = np.asarray(r["x"]), np.asarray(r["y"])
        # Independent oracle: the saved single affine map, applied with numpy, classifies the training set as
        # well as the trained deep identity net did (up to one point: float32 ties), and no better than a line.
        flat = r["identity"]["collapsed"]
        acc = np.mean(np.argmax(x @ np.asarray(flat["W"]) + np.asarray(flat["b"]), axis=1) == y)
        assert abs(acc - r["identity"]["train_accuracy"]) <= 1 / len(y), name
        assert acc <= r["best_linear_accuracy"] + 0.01 < lc.FITS_NOT, name
        relu = claims[f"{name}: the net with relu fits the data (train accuracy above {lc.FITS})"]
        assert relu["measured"] == r["relu"]["train_accuracy"] >= 0.97
        assert relu["margin"] == pytest.approx((relu["measured"] - lc.FITS) / lc.FITS)
        ident = claims[f"{name}: the same net with identity activations cannot (train accuracy below {lc.FITS_NOT})"]
        assert ident["margin"] == pytest.approx((lc.FITS_NOT - r["identity"]["train_accuracy"]) / lc.FITS_NOT)


def test_claims_fail_where_the_effect_is_absent(quick, tmp_path):
    # QUICK's sizes, so the compiled epochs of the fixture's run are reused: only the data differ.
    moons = lc.main(dataclasses.replace(lc.QUICK, datasets=("moons",)), tmp_path)  # a line nearly separates them
    relu, identity = moons["claims"]
    assert relu["holds"] and not identity["holds"] and identity["margin"] < 0
    assert identity["measured"] > 0.8
    # Circles drowned in noise: no net can fit them, the relu claim fails.
    noisy = lc.main(dataclasses.replace(lc.QUICK, datasets=("circles",), noise=0.5), tmp_path)
    relu, _ = noisy["claims"]
    assert not relu["holds"] and relu["margin"] < 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sizes", [[3, 2], [4, 6, 5, 3], [2, 8, 8, 8, 2]])
def test_collapse_is_the_product_of_the_weight_matrices(sizes, seed):
    rng = np.random.default_rng(seed)
    params = [{"W": rng.standard_normal((a, b)), "b": rng.standard_normal(b)}
              for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    flat = lc.collapse(params)
    Ws = [p["W"] for p in params]

    def chain(mats, n):  # the product of mats, the (n, n) identity if there are none
        return functools.reduce(np.matmul, mats, np.eye(n))

    W_want = chain(Ws, sizes[0])
    b_want = sum(p["b"] @ chain(Ws[i + 1:], sizes[i + 1]) for i, p in enumerate(params))  # b_l W_l+1 ... W_L
    np.testing.assert_allclose(flat["W"], W_want, rtol=1e-12)
    np.testing.assert_allclose(flat["b"], b_want, rtol=1e-12, atol=1e-12)
    x = rng.standard_normal((7, sizes[0]))
    deep = mlp.apply(jax.tree_util.tree_map(jnp.asarray, params), jnp.asarray(x), activation="identity")
    np.testing.assert_allclose(deep, x @ W_want + b_want, rtol=1e-10, atol=1e-12)
    # The slide's column convention: W'_slide = W_L^T ... W_1^T is the transpose of ours.
    np.testing.assert_allclose(chain([W.T for W in reversed(Ws)], sizes[-1]), W_want.T, rtol=1e-12)


def test_best_linear_accuracy_on_known_cases():
    # Separable: a line gets everything right.
    x = np.array([[-1.0, 0.2], [-0.5, -0.3], [0.7, 0.1], [1.2, -0.4]])
    assert lc.best_linear_accuracy(x, np.array([0, 0, 1, 1])) == 1.0
    assert lc.best_linear_accuracy(x, np.array([1, 1, 0, 0])) == 1.0  # the flipped labelling
    # The four XOR corners: any line gets at most three right.
    corners = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    assert lc.best_linear_accuracy(corners, np.array([1, 1, 0, 0])) == 0.75
    # One class inside a ring: a half-plane clear of the centre holds at most 20 of the 40 ring points.
    angle = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    ring = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x = np.concatenate([ring, 0.01 * ring])
    y = np.concatenate([np.zeros(40, int), np.ones(40, int)])
    assert lc.best_linear_accuracy(x, y) == pytest.approx((40 + 20) / 80)


def test_best_linear_accuracy_beats_random_lines():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 2))
    y = (x[:, 0] ** 2 + 0.3 * rng.standard_normal(60) > 0.5).astype(int)
    best = lc.best_linear_accuracy(x, y)
    for _ in range(200):
        w, c = rng.standard_normal(2), rng.standard_normal()
        acc = np.mean((x @ w + c > 0) == y)
        assert max(acc, 1 - acc) <= best + 1e-12


@pytest.mark.parametrize("name", lc.DATASETS)
def test_datasets_are_balanced_and_reproducible(name):
    x, y = lc.make_dataset(name, 301, seed=1)
    assert x.shape == (301, 2) and x.dtype == np.float32 and y.dtype == np.int32
    assert set(np.unique(y)) == {0, 1} and abs(int(y.sum()) - 150) <= 1
    assert lc.best_linear_accuracy(x, y) < 0.95
    x2, y2 = lc.make_dataset(name, 301, seed=1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_unknown_data_set_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: circles, xor, moons"):
        lc.make_dataset("spirals", 10)
