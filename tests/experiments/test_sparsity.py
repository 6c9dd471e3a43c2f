import json

import jax
import numpy as np
import pytest
from scipy import stats

from experiments import _common, sparsity
from fflab import data, train


def _numpy_hidden(params, x):
    h, out = np.asarray(x, np.float64), []
    for layer in params[:-1]:
        h = np.maximum(h @ np.asarray(layer["W"]) + np.asarray(layer["b"]), 0.0)
        out.append(h)
    return out


def _dead(params, x):
    return [int(((h > 0).sum(axis=0) == 0).sum()) for h in _numpy_hidden(params, x)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The QUICK run, with the example net's FitResult kept (train.fit wrapped) for independent checks."""
    out = tmp_path_factory.mktemp("sparsity")
    fits, fit = [], train.fit

    def spy(*args, **kwargs):
        fits.append(fit(*args, **kwargs))
        return fits[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "fit", spy)
        payload = sparsity.main(sparsity.QUICK, out)
    return payload, json.loads((out / "sparsity.json").read_text()), fits[0], out


def test_quick_config_claims(run):
    payload, saved, fit, out = run
    assert (out / "sparsity.png").stat().st_size > 10_000
    r = saved["results"]
    ds = data.load("digits")
    params = fit.state.params

    # Histogram and dead units, independently: numpy forward pass of the trained net.
    hidden = _numpy_hidden(params, ds.x_test)
    for i, h in enumerate(hidden):
        np.testing.assert_allclose(r["frequency"][i], (h > 0).mean(axis=0), atol=1e-12)
    assert r["dead_test"] == _dead(params, ds.x_test) and r["dead_train"] == _dead(params, ds.x_train)

    c_dead, c_grow, c_sparse = payload["claims"]
    sw = {k: np.asarray(v) for k, v in r["sweep"].items()}
    ok = ~sw["diverged"].astype(bool)
    assert len(sw["learning_rate"]) == len(sparsity.QUICK.learning_rates) * len(sparsity.QUICK.seeds)
    most = int(sw["dead_train"][ok].sum(axis=1).max())
    assert c_dead["measured"]["sweep_max"] == most and c_dead["holds"] == (most > 0) and c_dead["holds"]
    assert not _common.above(0, 0)[0]  # a sweep in which no unit dies fails the claim

    frac = sw["dead_train"].sum(axis=1) / sum(sparsity.QUICK.hidden)
    rho = stats.spearmanr(sw["learning_rate"][ok], frac[ok]).statistic
    per_lr = [frac[ok & (sw["learning_rate"] == lr)].mean() for lr in sparsity.QUICK.learning_rates]
    np.testing.assert_allclose(c_grow["measured"], [rho, per_lr[0], per_lr[-1]], atol=1e-12)
    assert c_grow["holds"] == (rho > 0.5 and per_lr[-1] > per_lr[0]) and c_grow["holds"]
    # Below the step where units start dying (<= 0.3 on digits) the count does not grow: the claim fails there.
    small = ok & (sw["learning_rate"] <= 0.3)
    assert stats.spearmanr(sw["learning_rate"][small], frac[small]).statistic < 0.5

    mean_freq = [float((h > 0).mean()) for h in hidden]
    np.testing.assert_allclose(c_sparse["measured"], mean_freq, atol=1e-9)
    assert c_sparse["holds"] == (max(mean_freq) < 0.5)
    assert not c_sparse["holds"]  # on the 8x8 digits the trained relu units are on more than half the time


@pytest.mark.slow  # one more compiled training program: about 4 s
def test_sweep_lane_matches_a_plain_fit(run):
    """The sweep trains all (step, seed) runs as lanes of one program; one lane must equal a plain train.fit."""
    _, saved, _, _ = run
    sw = {k: np.asarray(v) for k, v in saved["results"]["sweep"].items()}
    cfg, ds = sparsity.QUICK, data.load("digits")
    lr, seed = 0.3, 1
    i = list(zip(sw["learning_rate"], sw["seed"], strict=True)).index((lr, seed))
    model = sparsity.fflab.classifier("relu")
    key_init, key_data = jax.random.split(jax.random.key(seed))
    params, _ = model.init(key_init, [64, *cfg.hidden, 10])
    opt = train.make_optimizer("sgd", lr)
    fit = train.fit(train.init_state(params, opt, key_data), opt, (ds.x_train, ds.y_train), loss_fn=model.loss_fn,
                    epochs=cfg.sweep_epochs, batch_size=cfg.batch_size, progress=False)
    assert list(sw["dead_train"][i]) == _dead(fit.state.params, ds.x_train) and not sw["diverged"][i]
