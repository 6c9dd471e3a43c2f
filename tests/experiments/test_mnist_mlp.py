import dataclasses
import json

import numpy as np
import pytest

from experiments import mnist_mlp
from fflab import data


def _numpy_forward(params, x):
    h = np.asarray(x, np.float64)
    for layer in params[:-1]:
        h = np.maximum(h @ np.asarray(layer["W"]) + np.asarray(layer["b"]), 0.0)
    return h @ np.asarray(params[-1]["W"]) + np.asarray(params[-1]["b"])


def _pooled_neighbour_corr(w1, shape, mask):
    """Oracle for filter_smoothness: explicit loops over pixel pairs."""
    rows, cols = shape
    m = mask.reshape(rows, cols)
    a_all, b_all = [], []
    for f in np.asarray(w1, np.float64).T:
        img = f.reshape(rows, cols)
        img = img - img[m].mean()
        for r in range(rows):
            for c in range(cols):
                for dr, dc in ((0, 1), (1, 0)):
                    r2, c2 = r + dr, c + dc
                    if r2 < rows and c2 < cols and m[r, c] and m[r2, c2]:
                        a_all.append(img[r, c])
                        b_all.append(img[r2, c2])
    a, b = np.array(a_all), np.array(b_all)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_quick_config_claims(tmp_path):
    payload = mnist_mlp.main(mnist_mlp.QUICK, tmp_path)
    saved = json.loads((tmp_path / "mnist_mlp.json").read_text())
    assert saved["config"]["dataset"] == "digits" and saved["config"]["batch_size"] == 100
    for name in ("mnist_mlp", "mnist_mlp_filters", "mnist_mlp_filters_learned"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    r = saved["results"]
    h = r["history"]
    assert h["epoch"] == list(range(1, mnist_mlp.QUICK.epochs + 1))
    assert r["updates_per_epoch"] == r["n_train"] // 100
    # The step size is annealed: the last epoch runs at decay_to x the peak.
    np.testing.assert_allclose(h["learning_rate"][-1], 0.01 * mnist_mlp.QUICK.learning_rate, rtol=1e-3)
    assert h["learning_rate"][0] > 0.9 * mnist_mlp.QUICK.learning_rate

    # Claim 1, independently: reload the saved parameters and classify the test set with numpy.
    ds = data.load("digits")
    params = mnist_mlp.load_params(tmp_path / mnist_mlp.PARAMS_FILE, mnist_mlp.QUICK)
    assert params is not None
    err = 100 * np.mean(np.argmax(_numpy_forward(params, ds.x_test), axis=1) != ds.y_test)
    c_err, c_filters = payload["claims"]
    np.testing.assert_allclose(c_err["measured"], err, atol=1e-6)
    assert c_err["holds"] == (err <= mnist_mlp.TARGETS["digits"])
    assert c_err["holds"], c_err

    # Claim 2, independently: loop-based neighbour correlation of the init and of the learned part.
    init, _ = mnist_mlp.initial_params(mnist_mlp.QUICK, ds)
    mask = ds.x_train.std(axis=0) > 0.1
    w0, w = np.asarray(init[0]["W"]), np.asarray(params[0]["W"])
    corr0 = _pooled_neighbour_corr(w0, (8, 8), mask)
    learned = _pooled_neighbour_corr(w - w0, (8, 8), mask)
    np.testing.assert_allclose(c_filters["measured"], [corr0, learned], atol=1e-6)
    assert c_filters["holds"] == (abs(corr0) < 0.1 and learned > 0.25)
    assert c_filters["holds"], c_filters


def test_params_cache_matches_config_only(tmp_path):
    ds = data.load("digits")
    params, _ = mnist_mlp.initial_params(mnist_mlp.QUICK, ds)
    path = mnist_mlp.save_params(tmp_path / "p.npz", params, mnist_mlp.QUICK)
    back = mnist_mlp.load_params(path, dataclasses.replace(mnist_mlp.QUICK, data_dir="/elsewhere"))
    for a, b in zip(params, back, strict=True):
        np.testing.assert_array_equal(np.asarray(a["W"]), np.asarray(b["W"]))
    assert mnist_mlp.load_params(path, dataclasses.replace(mnist_mlp.QUICK, epochs=3)) is None
    assert mnist_mlp.load_params(tmp_path / "missing.npz", mnist_mlp.QUICK) is None
    (tmp_path / "bad.npz").write_bytes(b"not a checkpoint")
    assert mnist_mlp.load_params(tmp_path / "bad.npz", mnist_mlp.QUICK) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_smoothness_noise_vs_smooth(seed):
    rng = np.random.default_rng(seed)
    mask = np.ones(64, bool)
    noise = rng.standard_normal((64, 30))
    assert abs(mnist_mlp.filter_smoothness(noise, (8, 8), mask)) < 0.1
    yy, xx = np.mgrid[0:8, 0:8]
    blobs = np.stack([np.exp(-((yy - rng.uniform(0, 8)) ** 2 + (xx - rng.uniform(0, 8)) ** 2) / 8).ravel()
                      for _ in range(30)], axis=1)
    assert mnist_mlp.filter_smoothness(blobs, (8, 8), mask) > 0.7
    np.testing.assert_allclose(mnist_mlp.filter_smoothness(blobs, (8, 8), mask),
                               _pooled_neighbour_corr(blobs, (8, 8), mask), atol=1e-10)


def test_mosaic_layout_and_quantization():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 7))  # 7 filters of 3x4 on a 3x3 grid
    m = mnist_mlp.mosaic(w, (3, 4))
    assert m.shape == (3 * 4 - 1, 3 * 5 - 1)
    np.testing.assert_allclose(m[4:7, 5:9], (w[:, 4] / np.abs(w[:, 4]).max()).reshape(3, 4))
    assert np.isnan(m[3, :]).all() and np.isnan(m[:, 4]).all()
    assert np.isnan(m[8:, 5:]).all()  # the unused cells of the last row
    codes, scale = mnist_mlp._quantize(w)
    assert codes.dtype == np.uint8
    assert np.all(np.abs(mnist_mlp._dequantize(codes, scale) - w) <= scale / 255 + 1e-7)
