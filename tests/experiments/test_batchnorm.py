import dataclasses
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import batchnorm as bn
from fflab import data, norm, train

CFG = bn.QUICK


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("batchnorm")
    payload = bn.main(CFG, out)
    return payload, json.loads((out / "batchnorm.json").read_text()), out


def _nan(values):
    return np.asarray([np.nan if v is None else v for v in values], float)


@pytest.mark.slow  # the QUICK run: two 3x100 sigmoid nets, an 8-rate sweep and 920 steps (about 35 s of CPU)
def test_quick_claims_recounted_from_the_saved_numbers(run):
    payload, saved, out = run
    r, claims = saved["results"], {i: c for i, c in enumerate(saved["claims"])}
    assert all("margin" in c for c in claims.values())
    for name in ("batchnorm", "batchnorm_lr"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    plain, b = r["curves"]["plain"], r["curves"]["batchnorm"]
    assert plain["steps"] == b["steps"] == list(range(0, CFG.steps + 1, CFG.eval_every))
    assert plain["learning_rate"] == b["learning_rate"] == r["baseline_lr"]
    # The baseline is the plain net's best rate after the sweep.
    errors = _nan(r["sweep"]["plain"]["test_error"])
    assert r["baseline_lr"] == CFG.sweep_lrs[int(np.nanargmin(errors))]
    reach = next(s for s, a in zip(b["steps"], b["test_accuracy"], strict=True) if a >= plain["test_accuracy"][-1])
    assert claims[0]["measured"]["BN steps to plain's final"] == reach
    assert claims[0]["holds"] == (b["test_accuracy"][-1] > plain["test_accuracy"][-1] and reach <= CFG.steps / 2)
    for s in bn.SETTINGS:
        for k in ("median_range", "spread_range"):
            assert r["drift"][s][k] == pytest.approx(np.median(r["curves"][s][k]))
        q = np.asarray(r["curves"][s]["probe_percentiles"])
        assert q.shape == (3, len(plain["steps"])) and np.all(q[0] <= q[1]) and np.all(q[1] <= q[2])
    # The ratio of the largest trainable rates, recounted per cut.
    for cut, ratio in zip(r["cuts"], r["ratio"], strict=True):
        best = {}
        for s in bn.SETTINGS:
            sw = r["sweep"][s]
            ok = [lr for lr, e in zip(sw["learning_rates"], sw["test_error"], strict=True)
                  if lr in CFG.sweep_lrs and e is not None and e < cut]
            best[s] = max(ok) if ok else None
        assert ratio == (best["batchnorm"] / best["plain"] if best["plain"] and best["batchnorm"] else None)
    window = [q for c, q in zip(r["cuts"], r["ratio"], strict=True) if CFG.cuts[0] <= c <= CFG.cuts[1] and q]
    assert claims[2]["holds"] == (min(window) > 5)
    assert claims[2]["margin"] == pytest.approx(min(window) / 5 - 1)
    # BN-x5 and BN-x30 are lanes of the BN sweep at 5x and 30x the baseline.
    lrs = r["sweep"]["batchnorm"]["learning_rates"]
    err = claims[3]["measured"]["test error %"]
    for m in bn.MULTIPLES:
        assert err[f"BN-x{m}"] == r["sweep"]["batchnorm"]["test_error"][lrs.index(m * r["baseline_lr"])]
    # Measured on the quick config (seeded), in float32 and float64: BN trains faster, keeps its inputs put,
    # takes > 5x larger rates, and its population statistics agree with training mode. (BN-x30 and the
    # running averages hold in float32 only: from the plain net's plateau, rounding moves the baseline rate.)
    assert all(claims[i]["holds"] for i in (0, 1, 2, 4)), [claims[i] for i in (0, 1, 2, 4)]


def test_claims_fail_when_batch_norm_changes_nothing(monkeypatch, tmp_path):
    """main's decisions on made-up runs in which the BN net is the plain net: every claim fails."""
    cfg = dataclasses.replace(CFG, steps=46, sweep_steps=23)
    steps = [0, 23, 46]

    def fake_run(config, ds, sizes, setting, lrs, curve_lr=None):
        errors = [20.0 if lr <= 2 else None for lr in lrs]  # the same for both nets: nothing trains faster
        return {"sweep": {"learning_rates": list(lrs), "test_error": errors},
                "curve": {"learning_rate": curve_lr or 0.5, "steps": steps, "test_accuracy": [10.0, 50.0, 80.0],
                          "probe_percentiles": np.zeros((3, 3)), "median_range": np.ones(4),
                          "spread_range": np.ones(4)},
                "state": SimpleNamespace(params=None, model_state=None)}

    monkeypatch.setattr(bn, "run_setting", fake_run)
    monkeypatch.setattr(bn, "mode_agreement", lambda *a: {
        "test_accuracy": {"train_mode": 90.0, "running_averages": 87.0, "population": 88.5},
        "identical_to_train_mode": {"train_mode": 100.0, "running_averages": 95.0, "population": 97.0}})
    monkeypatch.setattr(bn, "plot", lambda *a: None)
    claims = bn.main(cfg, tmp_path)["claims"]
    assert not any(c["holds"] for c in claims), [c["text"] for c in claims if c["holds"]]
    assert [c["margin"] is None or c["margin"] <= 0 for c in claims] == [True] * len(claims)


def _np_net(rng, sizes, *, batchnorm: bool):
    """Random ``(params, model_state)`` from numpy."""
    params = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)
        if batchnorm and k < len(sizes) - 2:
            params.append({"W": w, "gamma": rng.uniform(0.5, 2.0, n_out), "beta": rng.normal(size=n_out)})
        else:
            params.append({"W": w, "b": rng.normal(size=n_out)})
    state = tuple(norm.BatchNormState(np.zeros(n), np.ones(n)) for n in sizes[1:-1]) if batchnorm else None
    return params, state


def _np_forward(params, x, stats=None, eps=1e-5):
    """numpy oracle: the last hidden layer's sigmoid inputs and the logits; BN normalises with ``stats(z)``."""
    h = np.asarray(x, float)
    for layer in params[:-1]:
        if "b" in layer:
            z = h @ layer["W"] + layer["b"]
        else:
            mean, var = stats(h @ layer["W"])
            z = layer["gamma"] * (h @ layer["W"] - mean) / np.sqrt(var + eps) + layer["beta"]
        h = 1 / (1 + np.exp(-z))
    return z, h @ params[-1]["W"] + params[-1]["b"]


def _np_population(params, x, eps=1e-5):
    """Each BN layer's mean and unbiased variance on ``x`` (the layers below normalised with ``x``'s own)."""
    h, stats = np.asarray(x, float), []
    for layer in params[:-1]:
        z = h @ layer["W"]
        stats.append((z.mean(0), z.var(0) * len(z) / (len(z) - 1)))
        h = 1 / (1 + np.exp(-(layer["gamma"] * (z - z.mean(0)) / np.sqrt(z.var(0) + eps) + layer["beta"])))
    return stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_measure_against_numpy(seed):
    """Sigmoid inputs (BN: the probe's own statistics), percentiles, and the test error with the population
    statistics of x_pop (unbiased variance, as Algorithm 2)."""
    sizes = [7, 6, 5, 4, 3]
    rng = np.random.default_rng(seed)
    x_pop, xt, yt = rng.normal(size=(50, 7)), rng.normal(size=(30, 7)), rng.integers(0, 3, 30)
    for batchnorm in (False, True):
        params, state = _np_net(rng, sizes, batchnorm=batchnorm)
        err, pct = bn.measure(params, state, x_pop, xt, yt, probe=20)
        z, _ = _np_forward(params, xt[:20], lambda a: (a.mean(0), a.var(0)))
        np.testing.assert_allclose(pct, np.percentile(z, bn.PERCENTILES, axis=0), rtol=1e-10, atol=1e-12)

        if batchnorm:
            it = iter(_np_population(params, x_pop))
            _, logits = _np_forward(params, xt, lambda z, it=it: next(it))
        else:
            _, logits = _np_forward(params, xt)
        assert float(err) == pytest.approx(100 * np.mean(np.argmax(logits, 1) != yt), abs=1e-4)  # float32 count


def test_mode_agreement_population_statistics_against_numpy():
    rng = np.random.default_rng(0)
    params, state = _np_net(rng, [5, 8, 8, 3], batchnorm=True)
    ds = SimpleNamespace(x_train=rng.normal(size=(200, 5)), x_test=rng.normal(size=(50, 5)),
                         y_test=rng.integers(0, 3, 50))
    out = bn.mode_agreement(SimpleNamespace(params=params, model_state=state), ds)
    it = iter(_np_population(params, ds.x_train))
    _, logits = _np_forward(params, ds.x_test, lambda z: next(it))
    assert out["test_accuracy"]["population"] == pytest.approx(100 * np.mean(np.argmax(logits, 1) == ds.y_test))
    _, logits = _np_forward(params, ds.x_test, lambda z: (z.mean(0), z.var(0)))
    assert out["test_accuracy"]["train_mode"] == pytest.approx(100 * np.mean(np.argmax(logits, 1) == ds.y_test))


@pytest.mark.slow
def test_sweep_lane_matches_a_separate_sgd_run(run):
    """A BN lane of the sweep (rate in the optimiser state) equals an unvmapped optax.sgd run on the same chunks."""
    _, saved, _ = run
    sweep = saved["results"]["sweep"]["batchnorm"]
    j = 3
    lr = sweep["learning_rates"][j]
    ds = data.load(CFG.dataset)
    sizes = [ds.x_train.shape[1], *CFG.hidden, ds.num_classes]
    model = bn.fflab.classifier("sigmoid", "batchnorm", bn_momentum=CFG.bn_momentum)
    k_init, k_data = jax.random.split(jax.random.key(CFG.seed))
    params, state = model.init(k_init, sizes)
    params = [dict(p, W=CFG.init_std * jax.random.normal(k, p["W"].shape))
              for p, k in zip(params, jax.random.split(k_init, len(params)), strict=True)]
    opt = optax.sgd(lr)
    st = train.init_state(params, opt, k_data, state)
    epoch = train.make_train_epoch(opt, loss_fn=model.loss_fn, batch_size=CFG.batch_size)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    size = CFG.eval_every * CFG.batch_size
    for c in range(CFG.sweep_steps // CFG.eval_every):
        p, i = divmod(c, len(x) // size)
        st, _ = epoch(st, *bn._chunk(x, y, jax.random.fold_in(k_data, p), i, size=size))
    err, _ = bn.measure(st.params, st.model_state, x[: CFG.population_samples], jnp.asarray(ds.x_test),
                        jnp.asarray(ds.y_test), probe=CFG.probe_samples)
    assert float(err) == pytest.approx(sweep["test_error"][j], abs=0.3)  # at most one test image apart
