import dataclasses
import json

import numpy as np
import pytest
from scipy import stats

from experiments import mnist_mlp, sparsity
from fflab import data, train


def _numpy_hidden(params, x):
    h, out = np.asarray(x, np.float64), []
    for layer in params[:-1]:
        h = np.maximum(h @ np.asarray(layer["W"]) + np.asarray(layer["b"]), 0.0)
        out.append(h)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sparsity")
    # The network the histogram reuses, trained and saved as mnist_mlp.main does; its figures and filter
    # analysis (seconds of plotting) are test_mnist_mlp's business.
    _, fit = mnist_mlp.train_network(mnist_mlp.QUICK, progress=False)
    mnist_mlp.save_params(out / mnist_mlp.PARAMS_FILE, fit.state.params, mnist_mlp.QUICK)
    payload = sparsity.main(sparsity.QUICK, out)
    return payload, json.loads((out / "sparsity.json").read_text()), out


def test_quick_config_claims(run):
    payload, saved, tmp_path = run
    assert (tmp_path / "sparsity.png").stat().st_size > 10_000
    r = saved["results"]
    assert r["params_source"].startswith("reused")

    # Histogram and dead units, independently: numpy forward pass of the saved network on the test set.
    ds = data.load("digits")
    params = mnist_mlp.load_params(tmp_path / mnist_mlp.PARAMS_FILE, mnist_mlp.QUICK)
    hidden = _numpy_hidden(params, ds.x_test)
    for i, h in enumerate(hidden):
        np.testing.assert_allclose(r["frequency"][i], (h > 0).mean(axis=0), atol=1e-12)
        assert r["dead_test"][i] == int(((h > 0).sum(axis=0) == 0).sum())
    train_dead = [int(((h > 0).sum(axis=0) == 0).sum()) for h in _numpy_hidden(params, ds.x_train)]
    assert r["dead_train"] == train_dead

    c_dead, c_grow, c_sparse = payload["claims"]
    sw = {k: np.asarray(v) for k, v in r["sweep"].items()}
    ok = ~sw["diverged"].astype(bool)
    assert len(sw["learning_rate"]) == len(sparsity.QUICK.learning_rates) * len(sparsity.QUICK.seeds)
    most = int(sw["dead_train"][ok].sum(axis=1).max())
    assert c_dead["measured"]["sweep_max"] == most and c_dead["holds"] == (most > 0)
    frac = sw["dead_train"].sum(axis=1) / sum(mnist_mlp.QUICK.hidden)
    rho = stats.spearmanr(sw["learning_rate"][ok], frac[ok]).statistic
    np.testing.assert_allclose(c_grow["measured"][0], rho, atol=1e-9)
    per_lr = [frac[ok & (sw["learning_rate"] == lr)].mean() for lr in sparsity.QUICK.learning_rates
              if (ok & (sw["learning_rate"] == lr)).any()]
    np.testing.assert_allclose(c_grow["measured"][1:], [per_lr[0], per_lr[-1]], atol=1e-12)
    assert c_grow["holds"] == (rho > 0.5 and per_lr[-1] > per_lr[0])
    mean_freq = [float((h > 0).mean()) for h in hidden]
    np.testing.assert_allclose(c_sparse["measured"], mean_freq, atol=1e-9)
    assert c_sparse["holds"] == (max(mean_freq) < 0.5)
    # On the 8x8 digits the trained relu units are on for more than half the inputs: not sparse (see notes).
    assert c_dead["holds"] and c_grow["holds"], payload["claims"]


def test_vmapped_sweep_matches_a_plain_fit(run):
    """lr_sweep runs all step sizes in one vmapped program; one of its runs must equal train.fit's.

    The sweep is the QUICK run's (18 lanes), so this costs one plain fit, not a second compiled sweep.
    """
    _, saved, _ = run
    sweep = {k: np.asarray(v) for k, v in saved["results"]["sweep"].items()}
    net = mnist_mlp.QUICK
    ds = data.load("digits")
    lr, seed, epochs = 0.3, 1, sparsity.QUICK.sweep_epochs
    assert lr in sparsity.QUICK.learning_rates and seed in sparsity.QUICK.seeds
    i = list(zip(sweep["learning_rate"], sweep["seed"], strict=True)).index((lr, seed))
    cfg = dataclasses.replace(net, seed=seed)
    params, key = mnist_mlp.initial_params(cfg, ds)
    opt = train.make_optimizer("sgd", lr)
    fit = train.fit(train.init_state(params, opt, key), opt, (ds.x_train, ds.y_train), epochs=epochs,
                    batch_size=net.batch_size, test=(ds.x_test, ds.y_test), progress=False)
    np.testing.assert_allclose(sweep["test_error"][i], fit.history["test_error"][-1], atol=1e-9)
    hidden = _numpy_hidden(fit.state.params, ds.x_train)
    assert list(sweep["dead_train"][i]) == [int(((h > 0).sum(axis=0) == 0).sum()) for h in hidden]
    assert not sweep["diverged"][i]


def test_spearman_handles_ties():
    a, b = [1, 1, 2, 3, 3, 3], [0.0, 0.1, 0.1, 0.5, 0.2, 0.5]
    np.testing.assert_allclose(sparsity._spearman(a, b), stats.spearmanr(a, b).statistic, atol=1e-12)
    assert sparsity._spearman([1, 2, 3], [5, 5, 5]) == 0.0
