import json
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import batchnorm as bn
from fflab import data, mlp, norm, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("batchnorm")
    payload = bn.main(bn.QUICK, out)
    return payload, json.loads((out / "batchnorm.json").read_text()), out


def _floats(values):
    return np.asarray([math.nan if v is None else float(v) for v in values])


def test_quick_config_claims_hold_and_files_exist(run):
    payload, saved, out = run
    assert all(c["holds"] for c in payload["claims"]), [c for c in payload["claims"] if not c["holds"]]
    assert saved["config"]["sweep_lrs"] == list(bn.QUICK.sweep_lrs)
    assert "still trains" in saved["results"]["trains_definition"] and "still trains" in saved["notes"]
    for name in ("batchnorm", "batchnorm_lr"):
        assert (out / f"{name}.png").stat().st_size > 10_000


def test_largest_trainable_rate_recounted_from_the_definition(run):
    _, saved, _ = run
    r = saved["results"]
    for setting in bn.SETTINGS:
        s = r["sweep"][setting]
        errors = _floats(s["final_test_error"])
        # Each lane really trained at its own rate (read back from the optimiser state).
        np.testing.assert_allclose(s["used_learning_rate"], bn.QUICK.sweep_lrs, rtol=1e-6)
        trains = [bad is None and err < bn.QUICK.trains_error
                  for bad, err in zip(s["first_nonfinite_step"], errors, strict=True)]
        assert trains == s["trains"]
        ok = [lr for lr, t in zip(bn.QUICK.sweep_lrs, trains, strict=True) if t]
        assert s["max_trainable_lr"] == (max(ok) if ok else None)
        assert s["steps"] == bn.QUICK.sweep_steps
        # The curve is the sweep's lane at learning_rate: at the sweep's end, that lane's error.
        j = bn.QUICK.sweep_lrs.index(bn.QUICK.learning_rate)
        at = r["curves"][setting]["steps"].index(bn.QUICK.sweep_steps)
        assert r["curves"][setting]["test_accuracy"][at] == pytest.approx(100 - errors[j], abs=1e-3)
    big = r["largest_trainable_lr"]
    assert big["ratio"] == pytest.approx(big["batchnorm"] / big["plain"])
    assert big["ratio"] >= 5


@pytest.mark.slow
def test_sweep_lane_matches_a_separate_plain_sgd_run(run):
    """One vmapped lane (rate in the optimiser state) equals an unvmapped optax.sgd run on the same chunks."""
    _, saved, _ = run
    config = bn.QUICK
    setting, j = "batchnorm", 3
    lr = config.sweep_lrs[j]
    dtype = jnp.zeros(()).dtype
    ds = data.load(config.dataset)
    sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    x, y = jnp.asarray(ds.x_train, dtype), jnp.asarray(ds.y_train)
    k_init, k_data = jax.random.split(jax.random.key(config.seed))
    params, model_state = norm.init(k_init, sizes, norm=setting, init=config.init, dtype=dtype)
    opt = optax.sgd(lr)
    state = train.init_state(params, opt, k_data, model_state)
    epoch = train.make_train_epoch(opt, batch_size=config.batch_size, activation=config.activation,
                                   norm=setting)
    size = config.eval_every * config.batch_size
    per_pass = len(ds.x_train) // size
    for c in range(config.sweep_steps // config.eval_every):
        p, i = divmod(c, per_pass)
        xc, yc = bn._chunk(x, y, jax.random.fold_in(k_data, p), i, size=size)
        state, _ = epoch(state, xc, yc)
    _, err = train.evaluate(state.params, ds.x_test, ds.y_test, activation=config.activation, norm=setting,
                            model_state=state.model_state)
    saved_err = saved["results"]["sweep"][setting]["final_test_error"][j]
    assert 100 * err == pytest.approx(saved_err, abs=0.3)  # at most one test image apart


def test_curve_claim_numbers_recounted(run):
    _, saved, _ = run
    r = saved["results"]
    plain, b = r["curves"]["plain"], r["curves"]["batchnorm"]
    assert plain["steps"] == b["steps"] == list(range(0, bn.QUICK.steps + 1, bn.QUICK.eval_every))
    assert plain["test_accuracy"][0] < 30 and b["test_accuracy"][0] < 30  # both start near chance (10%)
    reach = next(s for s, a in zip(b["steps"], b["test_accuracy"], strict=True)
                 if a >= plain["test_accuracy"][-1])
    assert reach <= bn.QUICK.steps / 2
    for setting in bn.SETTINGS:
        d = r["drift"][setting]
        assert d["median_range"] == pytest.approx(np.median(r["curves"][setting]["median_range"]))
        assert d["spread_range"] == pytest.approx(np.median(r["curves"][setting]["spread_range"]))
        q = np.asarray(r["curves"][setting]["probe_percentiles"])
        assert q.shape == (3, len(plain["steps"]))
        assert np.all(q[0] <= q[1]) and np.all(q[1] <= q[2])
    assert r["drift"]["batchnorm"]["median_range"] < r["drift"]["plain"]["median_range"]


def _np_net(rng, sizes, *, batchnorm: bool):
    """Random ``(params, model_state)`` from numpy: no per-shape PRNG compilations in the default run."""
    params = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)
        if batchnorm and k < len(sizes) - 2:
            params.append({"W": w, "gamma": rng.uniform(0.5, 2.0, n_out), "beta": rng.normal(size=n_out)})
        else:
            params.append({"W": w, "b": rng.normal(size=n_out)})
    state = tuple(norm.BatchNormState(np.zeros(n), np.ones(n)) for n in sizes[1:-1]) if batchnorm else ()
    return params, state


@jax.jit
def _forward_both(plain, p, s, x):
    """What the sigmoid-input test compares, in one compiled program for all seeds."""
    z_plain = bn.sigmoid_inputs(plain, (), x, setting="plain", activation="sigmoid")
    _, hidden = mlp.apply(plain, x, activation="sigmoid", return_hidden=True)
    z_bn = bn.sigmoid_inputs(p, s, x, setting="batchnorm", activation="sigmoid")
    logits, _ = norm.apply(p, s, x, norm="batchnorm", activation="sigmoid", train=True)
    return z_plain, hidden[-1], z_bn, logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigmoid_inputs_feed_the_forward_pass(seed):
    sizes = [7, 6, 5, 4, 3]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(20, sizes[0]))
    plain, _ = _np_net(rng, sizes, batchnorm=False)
    p, s = _np_net(rng, sizes, batchnorm=True)
    z, last_hidden, z_bn, logits = (np.asarray(v) for v in _forward_both(plain, p, s, x))
    np.testing.assert_allclose(1 / (1 + np.exp(-z)), last_hidden, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(1 / (1 + np.exp(-z_bn)) @ p[-1]["W"] + p[-1]["b"], logits, rtol=1e-10,
                               atol=1e-12)
    # Training-mode batch norm: every unit's input has mean beta and (biased) std ~ gamma.
    np.testing.assert_allclose(np.mean(z_bn, axis=0), p[-2]["beta"], atol=1e-10)
    np.testing.assert_allclose(np.std(z_bn, axis=0), p[-2]["gamma"], rtol=1e-3)


def test_percentiles_match_numpy():
    z = np.random.default_rng(0).normal(size=(101, 4))
    np.testing.assert_allclose(bn._percentiles(jnp.asarray(z)), np.percentile(z, bn.PERCENTILES, axis=0),
                               rtol=1e-10)


def _np_bn_predict(params, x_train, x_test, eps=1e-5):
    """Batch-norm net in numpy: population statistics of the training set, layer by layer, then predict."""
    h_tr, h_te = np.asarray(x_train, float), np.asarray(x_test, float)
    for layer in params[:-1]:
        w, g, b = (np.asarray(layer[k], float) for k in ("W", "gamma", "beta"))
        z_tr, z_te = h_tr @ w, h_te @ w
        mean, var = z_tr.mean(0), z_tr.var(0)
        h_tr = 1 / (1 + np.exp(-(g * (z_tr - mean) / np.sqrt(var + eps) + b)))
        unbiased = var * len(z_tr) / (len(z_tr) - 1)
        h_te = 1 / (1 + np.exp(-(g * (z_te - mean) / np.sqrt(unbiased + eps) + b)))
    return np.argmax(h_te @ np.asarray(params[-1]["W"], float) + np.asarray(params[-1]["b"], float), axis=1)


def test_mode_agreement_population_statistics_against_numpy():
    rng = np.random.default_rng(0)
    params, state = _np_net(rng, [5, 8, 8, 3], batchnorm=True)
    params[0]["beta"] = params[0]["beta"] + 0.5
    ds = SimpleNamespace(x_train=rng.normal(size=(200, 5)), x_test=rng.normal(size=(50, 5)),
                         y_test=rng.integers(0, 3, 50))
    out = bn.mode_agreement(params, state, ds, activation="sigmoid", dtype=jnp.float64)
    expected = 100 * np.mean(_np_bn_predict(params, ds.x_train, ds.x_test) == ds.y_test)
    assert out["test_accuracy"]["population"] == pytest.approx(expected)
    # Untrained running averages (mean 0, var 1) are far from the data's statistics.
    assert max(out["running_mean_max_offset_in_std"]) > 0.1


def test_bad_configs_are_rejected():
    import dataclasses

    ds = data.load("digits")
    bad = dataclasses.replace(bn.QUICK, learning_rate=0.3)
    with pytest.raises(ValueError, match="sweep_lrs"):
        bn.run_setting(bad, ds, [64, 10, 10], jnp.float32, "plain")
    bad = dataclasses.replace(bn.QUICK, steps=100)
    with pytest.raises(ValueError, match="multiples"):
        bn.run_setting(bad, ds, [64, 10, 10], jnp.float32, "plain")
