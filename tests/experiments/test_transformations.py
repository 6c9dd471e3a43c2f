import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import analysis
from experiments import transformations as tr
from fflab import data, losses, norm, train

CFG = tr.QUICK


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("transformations")
    payload = tr.main(CFG, out)
    return payload, json.loads((out / "transformations.json").read_text()), out


@pytest.mark.slow  # the QUICK run: four nets trained at three rates and three dense Hessians (about 40 s of CPU)
def test_quick_claims_recounted_from_the_saved_numbers(run):
    payload, saved, out = run
    for name in ("transformations", "transformations_hessian"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    r, claims = saved["results"], saved["claims"]
    assert all("margin" in c for c in claims)
    final = {}
    for net in tr.NETS:
        run_ = r["runs"][net]
        loss = np.asarray([[np.nan if v is None else v for v in row] for row in run_["batch_loss"]], float)
        assert loss.shape == (len(CFG.learning_rates), CFG.epochs)
        assert run_["best"] == int(np.nanargmin(loss[:, -1])) and run_["best_lr"] == CFG.learning_rates[run_["best"]]
        final[net] = loss[run_["best"], -1]
    assert claims[0]["holds"] == (final["transform"] < final["plain"])
    assert claims[0]["margin"] == pytest.approx((final["plain"] - final["transform"]) / final["plain"])
    assert claims[1]["holds"] == (final["transform_gamma"] < final["plain"])
    assert claims[2]["holds"] == (final["transform_gamma"] < final["transform"])
    assert claims[3]["holds"] == (final["batchnorm"] < final["plain"])
    h = r["hessian"]
    assert claims[4]["holds"] == (h["transform"]["fisher_blocks_scaled"] < h["none"]["fisher_blocks_scaled"])
    assert claims[5]["holds"] == (h["transform_gamma"]["decades"] < h["none"]["decades"])
    # One function in three parameterisations: the same loss, the same parameter count.
    sizes = h["sizes"]
    weights = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    shortcuts = sum(sizes[j] * sizes[k + 1] for k in range(len(sizes) - 1) for j in range(k))
    assert h["num_params"] == weights + shortcuts
    for p in tr.PARAMETERISATIONS:
        assert h[p]["loss"] == pytest.approx(h["none"]["loss"], rel=1e-9)
        c = np.asarray(h[p]["coupling"])
        np.testing.assert_allclose(np.diag(c), 1.0, rtol=1e-12)
        assert np.all(c <= 1 + 1e-9)  # the Fisher is positive semi-definite: no block outweighs its diagonal
    assert saved["checks"][0]["holds"]
    # Measured on the quick config (seeded): gamma and batch norm train faster than the plain net; the Fisher
    # is closer to block-diagonal with the transformations.
    assert claims[1]["holds"] and claims[3]["holds"] and claims[4]["holds"]


def test_claims_fail_when_the_transformations_change_nothing(monkeypatch, tmp_path):
    """main's decisions on made-up runs and Hessians in which every net and parameterisation is the same."""
    def fake_train(config, ds, sizes, net):
        loss = np.full((len(config.learning_rates), config.epochs), 0.5)
        return {"learning_rates": list(config.learning_rates), "batch_loss": loss, "test_error": loss * 10,
                "finite": np.ones(len(loss), bool), "best": 1, "best_lr": config.learning_rates[1],
                "steps_per_epoch": 10, "_state": train.TrainState(None, None, 0, 0, None, None)}

    same = {"loss": 1.0, "coupling": np.eye(2), "fisher_blocks_scaled": 0.9, "hessian_blocks_scaled": 0.9,
            "hessian_blocks": 0.8, "hessian_elements": 0.95, "decades": 3.0, "log10_std": 0.7,
            "abs_eigenvalues_desc": [1.0, 0.1]}
    monkeypatch.setattr(tr, "train_net", fake_train)
    monkeypatch.setattr(tr, "invariance", lambda *a: (1.0, 10.0, 0.0))  # the logits moved, nothing else did
    monkeypatch.setattr(tr, "hessian_comparison", lambda *a: {"sizes": [4, 2, 3], "num_params": 30,
                                                              "block_names": ["a", "b"],
                                                              **{p: same for p in tr.PARAMETERISATIONS}})
    monkeypatch.setattr(tr, "plot", lambda *a: None)
    payload = tr.main(CFG, tmp_path)
    assert not any(c["holds"] for c in payload["claims"] + payload["checks"])
    assert all(c["margin"] == 0 for c in payload["claims"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariance_of_a_fresh_transformation(seed):
    """From the plain state, one re-estimation moves alpha to mean tanh' and the centre to mean x, not the logits."""
    sizes = [6, 5, 4, 3]
    rng = np.random.default_rng(seed)
    params, state = jax.eval_shape(lambda k: norm.init(k, sizes, norm="transform"), jax.random.key(0))
    params = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape) * 0.5 + 0.1, params)
    state = jax.tree_util.tree_map(lambda a: np.zeros(a.shape), state)._replace(
        gamma=tuple(np.ones(n) for n in sizes[1:-1]))
    x = rng.normal(size=(40, sizes[0])) + 1.0
    change, scale, moved = (float(v) for v in tr.invariance(params, state, x))
    z1 = x @ params[0]["W"] + params[0]["b"]
    alpha1 = (1 - np.tanh(z1) ** 2).mean(0)  # tanh' averaged over the data
    assert moved >= max(alpha1.max(), np.abs(x.mean(0)).max()) - 1e-12
    assert change < 1e-10 * max(1.0, scale)


def test_fisher_against_the_jacobian():
    """The Fisher matrix as hessian_comparison builds it equals J^T H_out J from jax.jacobian."""
    params, state = norm.init(jax.random.PRNGKey(1), [4, 3, 3, 3], norm="transform", init="glorot")
    x = jax.random.normal(jax.random.PRNGKey(2), (12, 4)) + 0.5
    y = jnp.arange(12) % 3
    state = norm.transform_update(params, state, x, activation="tanh", gamma=True)
    ggn, dim = analysis.hessian_operator(None, params, (state, x), y, curvature="ggn", output_fn=tr.logits,
                                         loss=losses.cross_entropy)
    fisher = np.asarray(jax.lax.map(ggn, jnp.eye(dim), batch_size=64))
    flat, unravel = ravel_pytree(params)
    J = np.asarray(jax.jit(jax.jacobian(lambda v: tr.logits(unravel(v), (state, x))))(flat))  # (n, classes, P)
    p = np.asarray(jax.nn.softmax(tr.logits(params, (state, x))))
    h_out = np.einsum("nc,cd->ncd", p, np.eye(3)) - np.einsum("nc,nd->ncd", p, p)  # softmax-CE output Hessian
    np.testing.assert_allclose(fisher, np.einsum("ncp,ncd,ndq->pq", J, h_out, J) / len(x), atol=1e-12)


def test_pool_images_against_a_loop():
    x = np.random.default_rng(0).random((3, 8 * 8))
    pooled = tr.pool_images(x, (8, 8), 2)
    img = x.reshape(3, 8, 8)
    expected = np.array([[img[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean() for i in range(4) for j in range(4)]
                         for n in range(3)])
    np.testing.assert_allclose(pooled, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="does not divide"):
        tr.pool_images(x, (8, 8), 3)


@pytest.mark.slow
def test_a_lane_matches_fit(run):
    """The gamma net's lane equals fflab.train.fit with optax.sgd at that rate: same batch losses."""
    _, saved, _ = run
    j, epochs = 1, 2
    ds = data.load(CFG.dataset)
    model = tr.model("transform_gamma")
    k_init, k_data = jax.random.split(jax.random.key(CFG.seed))
    params, state = model.init(k_init, [ds.x_train.shape[1], *CFG.hidden, ds.num_classes], init="glorot")
    opt = optax.sgd(CFG.learning_rates[j])
    result = train.fit(train.init_state(params, opt, k_data, state), opt, (ds.x_train, ds.y_train),
                       loss_fn=model.loss_fn, epochs=epochs, batch_size=CFG.batch_size, progress=False)
    saved_loss = np.asarray(saved["results"]["runs"]["transform_gamma"]["batch_loss"], float)[j, :epochs]
    np.testing.assert_allclose(result.history["batch_loss"], saved_loss, rtol=1e-6)
