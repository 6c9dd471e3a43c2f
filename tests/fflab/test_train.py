"""Training loop: optimiser recipes against optax, schedules against closed forms, learning, compile-once,
bit-for-bit resume, and non-finite losses."""

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fflab import checkpoint, data, losses, mlp, presets, train
from fflab import norm as fflab_norm

MLP = presets.classifier("relu")
FIT = {"loss_fn": MLP.loss_fn, "metrics_fn": MLP.metrics_fn}

TOL = {jnp.float32: 1e-6, jnp.float64: 1e-12}


def _leaves(tree):
    def raw(x):
        is_key = jax.dtypes.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key)
        return jax.random.key_data(x) if is_key else x

    return [raw(x) for x in jax.tree_util.tree_leaves(tree)]


def _tree_equal(a, b):
    la, lb = _leaves(a), _leaves(b)
    if len(la) != len(lb):
        return False
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True))


@pytest.fixture(scope="module")
def synthetic():
    return data.load("synthetic", n_train=300, n_test=100, dim=8, num_classes=4, teacher_width=16)


def _state(opt, sizes, *, seed=0, dtype=jnp.float64):
    k_init, k_shuffle = jax.random.split(jax.random.key(seed))
    return train.init_state(mlp.init(k_init, sizes, dtype=dtype), opt, k_shuffle)


# --- make_optimizer / make_schedule ---

_REFERENCE = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: optax.adam(lr),
    "adagrad": lambda lr: optax.adagrad(lr),
    "adadelta": lambda lr: optax.adadelta(lr),
    "rmsprop": lambda lr: optax.rmsprop(lr),
}


@pytest.mark.parametrize("name", train.OPTIMIZERS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_optimizer_matches_optax(name, dtype):
    assert set(_REFERENCE) == set(train.OPTIMIZERS)
    params = mlp.init(jax.random.key(1), [3, 4, 2], dtype=dtype)

    @jax.jit
    def run(params):
        out = []
        for opt in (train.make_optimizer(name, 0.1), _REFERENCE[name](0.1)):
            p, s = params, opt.init(params)
            for _ in range(4):  # gradient of 0.5 ||p||^2 + sum p, so updates are not all proportional to p
                u, s = opt.update(jax.tree_util.tree_map(lambda q: q + 1, p), s, p)
                p = optax.apply_updates(p, u)
            out.append((p, s))
        return out

    (p1, s1), (p2, _) = run(params)
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2), strict=True):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])
    assert float(train.learning_rate(s1)) == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("total", [40, 1000])
def test_schedules_closed_forms(total):
    lr, a = 0.2, 0.01
    s = {name: train.make_schedule(name, lr, total_steps=total, decay_to=a) for name in train.SCHEDULES}
    for name, f in s.items():
        assert float(f(0)) == pytest.approx(lr, rel=1e-12), name
        values = np.array([float(f(t)) for t in range(total + 5)])
        assert np.all(np.diff(values) <= 1e-15), f"{name} is not non-increasing"
        expected_floor = lr if name == "constant" else lr * a
        assert values[total] == pytest.approx(expected_floor, rel=1e-9), name
        assert values[-1] == pytest.approx(expected_floor, rel=1e-9), f"{name} moved past the end"
    half = total // 2
    assert float(s["linear"](half)) == pytest.approx(lr + (lr * a - lr) * half / total, rel=1e-9)
    assert float(s["exponential"](half)) == pytest.approx(lr * a ** (half / total), rel=1e-9)
    assert float(s["cosine"](half)) == pytest.approx(
        lr * ((1 - a) * 0.5 * (1 + math.cos(math.pi * half / total)) + a), rel=1e-9
    )
    step = s["step"]
    assert float(step(half - 1)) == pytest.approx(lr)
    assert float(step(half)) == pytest.approx(lr * 0.1)
    assert float(step((3 * total) // 4)) == pytest.approx(lr * 0.01)


def test_warmup_and_schedule_through_optimizer():
    f = train.make_schedule("cosine", 0.1, total_steps=50, warmup_steps=10)
    assert float(f(0)) == 0.0 and float(f(5)) == pytest.approx(0.05) and float(f(10)) == pytest.approx(0.1)
    assert float(f(50)) == pytest.approx(0.001)
    # The optimiser's state reports the rate its last update used: schedule(k - 1) after k updates.
    opt = train.make_optimizer(
        "nesterov", 0.1, schedule="linear", total_steps=20, clip=1.0, weight_decay=1e-3
    )
    params = {"W": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    sched = train.make_schedule("linear", 0.1, total_steps=20)
    update = jax.jit(lambda s: opt.update(params, s, params)[1])
    for k in range(1, 6):
        state = update(state)
        # optax's polynomial schedules compute in float32 even under x64, hence the float32 tolerance.
        assert float(train.learning_rate(state)) == pytest.approx(float(sched(k - 1)), rel=1e-6)


def test_unknown_names_and_bad_numbers():
    with pytest.raises(ValueError, match="valid names: sgd, momentum, nesterov, adam"):
        train.make_optimizer("lbfgs", 0.1)
    with pytest.raises(ValueError, match="valid names: constant, linear, exponential, step, cosine"):
        train.make_optimizer("sgd", 0.1, schedule="cyclic", total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        train.make_optimizer("sgd", 0.1, schedule="cosine")
    for bad in ({"clip": -1.0}, {"weight_decay": -1.0}, {"momentum": 1.5}):
        with pytest.raises(ValueError):
            train.make_optimizer("momentum", 0.1, **bad)
    with pytest.raises(ValueError, match="learning rate"):
        train.make_optimizer("sgd", float("nan"))
    with pytest.raises(ValueError, match="loss_fn must be a function"):
        train.make_train_epoch(optax.sgd(0.1), loss_fn="cross_entropy", batch_size=10)
    with pytest.raises(ValueError, match="hashable"):
        train.make_train_epoch(optax.sgd(0.1), loss_fn=_Unhashable(), batch_size=10)


class _Unhashable:
    __hash__ = None

    def __call__(self, params, x, y):
        return 0.0


def test_weight_decay_is_l2_on_weights_and_clip_bounds_the_step():
    params = mlp.init(jax.random.key(0), [5, 4, 3])
    x = jax.random.normal(jax.random.key(1), (7, 5))
    y = jnp.arange(7, dtype=jnp.int32) % 3
    lr, wd = 0.3, 0.05

    def loss(p):
        return losses.cross_entropy(mlp.apply(p, x), y)

    @jax.jit
    def steps(params):
        # Oracle: one SGD step on the loss plus (wd / 2) sum ||W||^2 (biases not decayed).
        opt = train.make_optimizer("sgd", lr, weight_decay=wd)
        u, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
        g = jax.grad(lambda p: loss(p) + wd * losses.l2(p))(params)
        expected = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, g)
        clipper = train.make_optimizer("sgd", 1.0, clip=1e-3)
        big = jax.tree_util.tree_map(lambda p: 100.0 * jnp.ones_like(p), params)
        clipped, _ = clipper.update(big, clipper.init(params), params)
        return optax.apply_updates(params, u), expected, optax.tree.norm(clipped)

    ours, expected, clipped_norm = steps(params)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert float(clipped_norm) == pytest.approx(1e-3, rel=1e-9)


# --- fit ---


@pytest.mark.parametrize("dtype", [jnp.float64])  # float32 training: the resume and CLI tests
def test_fit_learns_digits(dtype):
    ds = data.load("digits")
    epochs, batch = 12, 50
    steps = ds.x_train.shape[0] // batch
    opt = train.make_optimizer("momentum", 0.1, schedule="cosine", total_steps=epochs * steps)
    seen = []
    result = train.fit(
        _state(opt, [64, 64, 10], dtype=dtype),
        opt,
        (ds.x_train, ds.y_train),
        epochs=epochs,
        batch_size=batch,
        test=(ds.x_test, ds.y_test),
        callback=lambda e, s: seen.append((e, int(s.epoch))),
        snapshot_epochs=(0, 1, 12),
        progress=False,
        **FIT,
    )
    h = result.history
    assert seen == [(e, e) for e in range(1, epochs + 1)]
    assert h["epoch"] == list(range(1, epochs + 1))
    assert int(result.state.step) == epochs * steps and int(result.state.epoch) == epochs
    assert h["train_loss"][-1] < 0.25 * h["train_loss"][0]
    assert h["batch_loss"][-1] < h["batch_loss"][0]
    assert h["test_error"][-1] < 6.0  # percent: digits is easy for a 64-64-10 net
    assert all(0.0 <= e <= 100.0 for e in h["train_error"] + h["test_error"])
    assert h["learning_rate"][0] > h["learning_rate"][-1] > 0
    assert all(g > 0 for g in h["grad_norm"]) and all(s > 0 for s in h["train_seconds"] + h["eval_seconds"])
    assert h["eval_epoch"] == h["epoch"]
    assert sorted(result.snapshots) == [0, 1, 12]
    assert result.snapshots[0][0]["W"].dtype == dtype
    assert np.array_equal(result.snapshots[12][0]["W"], np.asarray(result.state.params[0]["W"]))
    assert not np.array_equal(result.snapshots[0][0]["W"], result.snapshots[1][0]["W"])
    # The history's numbers are those of evaluate(), in percent.
    got = train.evaluate(MLP.metrics_fn, result.state.params, ds.x_test, ds.y_test)
    assert h["test_error"][-1] == pytest.approx(got["error"]) and h["test_loss"][-1] == pytest.approx(got["loss"])
    by_hand = mlp.apply(result.state.params, jnp.asarray(ds.x_test))
    assert got["error"] == pytest.approx(100 * float(losses.error_rate(by_hand, jnp.asarray(ds.y_test))))


def test_eval_every_evaluates_less_and_trains_the_same(synthetic):
    opt = train.make_optimizer("momentum", 0.1)
    xy = (synthetic.x_train, synthetic.y_train)
    common = dict(epochs=5, batch_size=30, test=(synthetic.x_test, synthetic.y_test), progress=False, **FIT)
    every = train.fit(_state(opt, [8, 16, 4]), opt, xy, **common)
    sparse = train.fit(_state(opt, [8, 16, 4]), opt, xy, eval_every=2, **common)
    assert _tree_equal(every.state, sparse.state)
    assert sparse.history["eval_epoch"] == [2, 4, 5] and len(sparse.history["test_error"]) == 3
    assert sparse.history["test_error"] == [every.history["test_error"][e - 1] for e in (2, 4, 5)]
    assert [t == 0.0 for t in sparse.history["eval_seconds"]] == [True, False, True, False, False]


def test_epoch_compiles_once(synthetic, caplog, tmp_path):
    opt = train.make_optimizer("adam", 1e-2, schedule="cosine", total_steps=60)
    path = tmp_path / "ckpt.npz"
    on_disk = []  # the epoch of the checkpoint on disk after each epoch, with checkpoint_every=2
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        train.fit(
            _state(opt, [8, 16, 4]),
            opt,
            (synthetic.x_train, synthetic.y_train),
            epochs=3,
            batch_size=15,
            test=(synthetic.x_test, synthetic.y_test),
            checkpoint_path=path,
            checkpoint_every=2,
            callback=lambda e, s: on_disk.append(path.exists() and checkpoint.load_metadata(path)["epoch"]),
            progress=False,
            **FIT,
        )
    compiles = [r for r in caplog.records if "Compiling jit(train_epoch)" in r.getMessage()]
    assert len(compiles) == 1
    assert on_disk == [False, 2, 3]  # every 2 epochs, and always after the last

    # The jitted epoch alone: same compiled program for the initial state and every later one.
    opt = optax.adam(1e-2)  # a new transformation: a new, empty epoch function
    epoch = train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=15)
    assert epoch._cache_size() == 0
    state = _state(opt, [8, 16, 4], dtype=jnp.float32)
    x, y = jnp.asarray(synthetic.x_train, jnp.float32), jnp.asarray(synthetic.y_train)
    for _ in range(3):
        state, stats = epoch(state, x, y)
    assert epoch._cache_size() == 1
    assert stats.loss.shape == stats.grad_norm.shape == stats.learning_rate.shape == (20,)
    assert int(state.step) == 60


def test_equal_recipes_share_compiled_epochs(synthetic, caplog):
    """A second fit with an equal recipe (a notebook re-run, a seed sweep) does not compile again."""
    kwargs = dict(schedule="linear", total_steps=40, clip=1.0, weight_decay=1e-4)
    opt = train.make_optimizer("momentum", 0.05, **kwargs)
    assert train.make_optimizer("momentum", 0.05, **kwargs) is opt
    assert train.make_optimizer("momentum", 0.05, **{**kwargs, "clip": 2.0}) is not opt
    assert train.make_optimizer("momentum", 0.06, **kwargs) is not opt
    epoch = train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=30)
    same = train.make_train_epoch(opt, loss_fn=presets.classifier("relu").loss_fn, batch_size=30,
                                  record_grad_norm=True)
    assert same is epoch
    assert train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=30, record_grad_norm=False) is not epoch
    assert train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=20) is not epoch
    assert train.make_train_epoch(opt, loss_fn=presets.classifier("tanh").loss_fn, batch_size=30) is not epoch

    def run(seed):
        fresh = train.make_optimizer("momentum", 0.05, **kwargs)
        return train.fit(
            _state(fresh, [8, 16, 4], seed=seed),
            fresh,
            (synthetic.x_train, synthetic.y_train),
            epochs=2,
            batch_size=30,
            progress=False,
            **FIT,
        )

    with caplog.at_level(logging.WARNING), jax.log_compiles():
        first, second, again = run(0), run(1), run(0)
    compiles = [r for r in caplog.records if "Compiling jit(train_epoch)" in r.getMessage()]
    assert len(compiles) == 1
    # Sharing the program changes nothing: the re-run equals the first run bit for bit; another seed differs.
    for a, b, c in zip(*(jax.tree.leaves(r.state.params) for r in (first, again, second)), strict=True):
        assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_make_optimizer_accepts_unhashable_rates():
    """A learning rate given as an array skips the cache and still builds the recipe."""
    opt = train.make_optimizer("sgd", jnp.asarray(0.1))
    params = {"w": jnp.ones(3)}
    updates, _ = opt.update({"w": jnp.ones(3)}, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * np.ones(3), rtol=1e-6)


def test_epoch_order_depends_only_on_key_and_epoch(synthetic):
    """Epoch e shuffles with fold_in(key, e): running epoch 3 from a state at epoch 2 needs no history."""
    opt = optax.sgd(0.1)
    epoch = train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=30)
    x, y = jnp.asarray(synthetic.x_train), jnp.asarray(synthetic.y_train)
    state = _state(opt, [8, 4])
    a, _ = epoch(state._replace(epoch=jnp.asarray(2, jnp.int32)), x, y)
    b, _ = epoch(state._replace(epoch=jnp.asarray(2, jnp.int32)), x, y)
    c, _ = epoch(state, x, y)
    assert _tree_equal(a.params, b.params) and not _tree_equal(a.params, c.params)


def test_grad_norm_record_is_optional_and_changes_nothing_else(synthetic):
    opt = train.make_optimizer("momentum", 0.1)
    x, y = jnp.asarray(synthetic.x_train), jnp.asarray(synthetic.y_train)
    state = _state(opt, [8, 16, 4])
    a, stats_a = train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=30)(state, x, y)
    b, stats_b = train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=30, record_grad_norm=False)(
        state, x, y)
    assert _tree_equal(a, b)
    np.testing.assert_array_equal(stats_a.loss, stats_b.loss)
    np.testing.assert_array_equal(stats_a.learning_rate, stats_b.learning_rate)
    assert np.all(np.isnan(stats_b.grad_norm))
    # The recorded norm is the mini-batch gradient's: check step 1 against a direct gradient.
    batch = data.batch_indices(jax.random.fold_in(state.key, 0), x.shape[0], 30)[0]
    grads = jax.grad(lambda p: losses.cross_entropy(mlp.apply(p, x[batch]), y[batch]))(state.params)
    np.testing.assert_allclose(stats_a.grad_norm[0], optax.tree.norm(grads), rtol=1e-12)
    common = dict(epochs=2, batch_size=30, progress=False, **FIT)
    fast = train.fit(state, opt, (synthetic.x_train, synthetic.y_train), record_grad_norm=False, **common)
    full = train.fit(state, opt, (synthetic.x_train, synthetic.y_train), **common)
    assert _tree_equal(fast.state, full.state)
    assert fast.history["grad_norm"] == [None, None] and all(g > 0 for g in full.history["grad_norm"])
    assert fast.history["batch_loss"] == full.history["batch_loss"]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_resume_is_bit_for_bit(synthetic, tmp_path, dtype):
    epochs, batch = 5, 20
    opt = train.make_optimizer("momentum", 0.2, schedule="cosine", total_steps=epochs * 15, weight_decay=1e-3)
    common = dict(epochs=epochs, batch_size=batch, test=(synthetic.x_test, synthetic.y_test), progress=False,
                  **FIT)
    xy = (synthetic.x_train, synthetic.y_train)
    full = train.fit(_state(opt, [8, 16, 4], dtype=dtype), opt, xy, **common)

    path = tmp_path / "ckpt.npz"

    def interrupt(epoch, state):
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train.fit(
            _state(opt, [8, 16, 4], dtype=dtype),
            opt,
            xy,
            checkpoint_path=path,
            config={"a": 1},
            callback=interrupt,
            **common,
        )
    # Resume into a template built from a different seed: every value comes from the checkpoint.
    state, history, config = train.restore(path, _state(opt, [8, 16, 4], seed=9, dtype=dtype))
    assert int(state.epoch) == 2 and len(history["epoch"]) == 2 and config == {"a": 1}
    resumed = train.fit(state, opt, xy, history=history, checkpoint_path=path, **common)

    assert _tree_equal(resumed.state, full.state)
    for key in full.history:
        if not key.endswith("seconds"):
            assert resumed.history[key] == full.history[key], key
    assert checkpoint.load_metadata(path)["epoch"] == epochs


def _nan_at(update: int):
    """SGD whose update number ``update`` (0-based) turns the parameters into NaN."""
    return optax.chain(
        optax.sgd(0.05), optax.scale_by_schedule(lambda c: jnp.where(c == update, jnp.nan, 1.0))
    )


@pytest.mark.parametrize(("update", "epoch", "step"), [(13, 2, 5), (19, 2, 10)])
@pytest.mark.parametrize("record_grad_norm", [True, False])
def test_non_finite_loss_names_epoch_and_step_and_keeps_checkpoint(
    synthetic, tmp_path, update, epoch, step, record_grad_norm
):
    # 300 samples / 30 = 10 steps per epoch. A NaN update 13 shows in the loss of step 15 (epoch 2, step 5);
    # a NaN last update of epoch 2 (update 19) shows only in the parameters after the epoch: step 10.
    opt = _nan_at(update)
    path = tmp_path / "run" / "ckpt.npz"
    template = _state(opt, [8, 16, 4])
    with pytest.raises(train.NonFiniteLossError) as info:
        train.fit(
            template,
            opt,
            (synthetic.x_train, synthetic.y_train),
            epochs=4,
            batch_size=30,
            checkpoint_path=path,
            progress=False,
            record_grad_norm=record_grad_norm,
            **FIT,
        )
    err = info.value
    assert (err.epoch, err.step) == (epoch, step)
    assert err.global_step == 10 * (epoch - 1) + step
    assert f"epoch {epoch}, step {step} of 10" in str(err) and "\n" not in str(err)
    assert str(path) in str(err) and err.checkpoint == path
    state, history, _ = train.restore(path, template)
    assert int(state.epoch) == 1 and history["epoch"] == [1]
    assert _tree_equal(state, err.state)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state.params))


def test_fit_rejects_bad_data(synthetic):
    opt = optax.sgd(0.1)
    state = _state(opt, [8, 4])
    with pytest.raises(ValueError, match="batch_size"):
        train.fit(state, opt, (synthetic.x_train, synthetic.y_train), epochs=1, batch_size=10_000, **FIT)
    with pytest.raises(ValueError, match="share a leading sample axis"):
        train.fit(state, opt, (synthetic.x_train, synthetic.y_train[:5]), epochs=1, batch_size=10, **FIT)
    with pytest.raises(ValueError, match="training set is empty"):
        train.fit(state, opt, (synthetic.x_train[:0], synthetic.y_train[:0]), epochs=1, batch_size=10, **FIT)
    # Labels outside 0..C-1 are bad data, found before any step, not blamed on the step size.
    bad = synthetic.y_train.copy()
    bad[-1] = -1
    with pytest.raises(ValueError, match="not finite at the initial parameters"):
        train.fit(state, opt, (synthetic.x_train, bad), epochs=1, batch_size=10, **FIT)


# --- stateful models ---


def _norm_state(opt, sizes, model, *, seed=0, dtype=jnp.float64):
    k_init, k_shuffle = jax.random.split(jax.random.key(seed))
    params, model_state = model.init(k_init, sizes, dtype=dtype)
    return train.init_state(params, opt, k_shuffle, model_state)


def test_batchnorm_training_updates_running_stats_and_evaluates_with_them(synthetic):
    bn = presets.classifier("relu", "batchnorm")
    opt = train.make_optimizer("momentum", 0.1)
    state = _norm_state(opt, [8, 16, 4], bn)
    start = train.evaluate(bn.metrics_fn, state.params, synthetic.x_train, synthetic.y_train,
                           model_state=state.model_state)["loss"]
    result = train.fit(state, opt, (synthetic.x_train, synthetic.y_train), epochs=6, batch_size=50,
                       loss_fn=bn.loss_fn, metrics_fn=bn.metrics_fn, progress=False)
    hist = result.history
    assert hist["train_loss"][-1] < 0.7 * start
    # The running mean tracks the pre-activations' mean over the training data.
    (running,) = result.state.model_state
    z = jnp.asarray(synthetic.x_train) @ result.state.params[0]["W"]
    assert np.allclose(running.mean, z.mean(0), atol=0.15 * float(jnp.abs(z.mean(0)).max()) + 1e-3)
    # The metrics use the running averages: the same number as norm.apply(train=False) by hand.
    logits, _ = fflab_norm.apply(result.state.params, result.state.model_state, jnp.asarray(synthetic.x_test),
                                 norm="batchnorm", train=False)
    expected = float(losses.cross_entropy(logits, jnp.asarray(synthetic.y_test)))
    got = train.evaluate(bn.metrics_fn, result.state.params, synthetic.x_test, synthetic.y_test,
                         model_state=result.state.model_state)
    assert math.isclose(got["loss"], expected, rel_tol=1e-12)
    # freeze() gives analysis the training-mode loss at fixed state: batch statistics of the data passed.
    x, y = jnp.asarray(synthetic.x_test), jnp.asarray(synthetic.y_test)
    frozen = train.freeze(bn.loss_fn)
    assert train.freeze(bn.loss_fn) is frozen
    by_hand = fflab_norm.apply(result.state.params, result.state.model_state, x, norm="batchnorm", train=True)[0]
    assert float(frozen(result.state.params, result.state.model_state, x, y)) == pytest.approx(
        float(losses.cross_entropy(by_hand, y)), rel=1e-12)
    eval_frozen = train.freeze(bn.eval_loss_fn)(result.state.params, result.state.model_state, x, y)
    assert float(eval_frozen) == pytest.approx(expected, rel=1e-12)


def test_transform_steps_keep_the_function_and_move_the_statistics(synthetic):
    tr = presets.classifier("relu", "transform")
    # With a zero learning rate only the transformations change, and they leave the function unchanged.
    opt = optax.sgd(0.0)
    state = _norm_state(opt, [8, 16, 12, 4], tr, seed=3)
    x = jnp.asarray(synthetic.x_test)
    before, _ = tr.apply(state.params, state.model_state, x)
    new, _ = train.make_train_epoch(opt, loss_fn=tr.loss_fn, batch_size=50)(
        state, jnp.asarray(synthetic.x_train), jnp.asarray(synthetic.y_train))
    after, _ = tr.apply(new.params, new.model_state, x)
    np.testing.assert_allclose(after, before, rtol=1e-10, atol=1e-10)
    assert _tree_equal(new.params, state.params)  # the optimiser owns the parameters, the re-estimation the state
    # relu: alpha = mean f'(z) is the fraction of active units, so it moved off 0 into (0, 1].
    alpha = np.concatenate(new.model_state.alpha)
    assert np.all(alpha >= 0) and np.all(alpha <= 1) and alpha.mean() > 0.1
    # And with a learning rate it trains.
    opt = train.make_optimizer("momentum", 0.05)
    state = _norm_state(opt, [8, 16, 12, 4], tr, seed=3)
    start = train.evaluate(tr.metrics_fn, state.params, synthetic.x_train, synthetic.y_train,
                           model_state=state.model_state)["loss"]
    hist = train.fit(state, opt, (synthetic.x_train, synthetic.y_train), epochs=6, batch_size=50,
                     loss_fn=tr.loss_fn, metrics_fn=tr.metrics_fn, progress=False).history
    assert hist["train_loss"][-1] < 0.7 * start


@pytest.mark.slow  # as tests/test_readme.py's hand-written model: fit trains it, eigsh against the dense Hessian
def test_a_model_written_by_hand_trains_and_its_loss_goes_to_analysis():
    """Dict params, tanh, squared error on one-hot targets: fit trains it, analysis gets the same loss."""
    import analysis

    ds = data.load("digits")

    def loss_fn(p, x, y):
        out = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return jnp.mean(jnp.sum((out - jax.nn.one_hot(y, 10)) ** 2, axis=1))

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w1": 0.3 * jax.random.normal(k1, (64, 8)), "b1": jnp.zeros(8),
              "w2": 0.3 * jax.random.normal(k2, (8, 10)), "b2": jnp.zeros(10)}
    opt = optax.sgd(0.05, momentum=0.9)
    result = train.fit(train.init_state(params, opt, key=1), opt, (ds.x_train, ds.y_train), loss_fn=loss_fn,
                       epochs=10, batch_size=50, progress=False)
    loss = result.history["train_loss"]
    assert loss[-1] < 0.5 * train.evaluate(loss_fn, params, ds.x_train, ds.y_train)["loss"] and loss[-1] < loss[0]
    x, y = jnp.asarray(ds.x_train[:200]), jnp.asarray(ds.y_train[:200])
    trained = result.state.params
    matvec, dim = analysis.hessian_operator(loss_fn, trained, x, y)
    top = analysis.eigsh(matvec, dim, 4, key=jax.random.key(2), tol=1e-10)
    flat, unravel = jax.flatten_util.ravel_pytree(trained)
    dense = jax.hessian(lambda v: loss_fn(unravel(v), x, y))(flat)
    exact = np.linalg.eigvalsh(np.asarray(dense))[::-1][:4]
    np.testing.assert_allclose(np.asarray(top.eigenvalues), exact, rtol=1e-10)


def test_lanes_train_each_hyperparameter_like_its_own_run(synthetic):
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    state = _state(opt, [8, 16, 4])
    rates = [0.01, 0.1, 0.3]
    stacked = train.lanes(state, learning_rate=rates)
    assert stacked.params[0]["W"].shape == (3, 8, 16)
    x, y = jnp.asarray(synthetic.x_train), jnp.asarray(synthetic.y_train)
    lanes_epoch = train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=30, lanes=True)
    stacked, stats = lanes_epoch(stacked, x, y)
    assert stats.loss.shape == (3, 10)
    for i, lr in enumerate(rates):
        one = optax.sgd(lr)
        alone, alone_stats = train.make_train_epoch(one, loss_fn=MLP.loss_fn, batch_size=30)(
            _state(one, [8, 16, 4]), x, y)
        got = train.lane(stacked, i)
        for a, b in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(alone.params),
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(stats.learning_rate[i], lr)
        np.testing.assert_allclose(stats.loss[i], alone_stats.loss, rtol=1e-12)
    with pytest.raises(ValueError, match="injects no hyperparameter 'momentum'"):
        train.lanes(state, momentum=[0.1, 0.2])
    with pytest.raises(ValueError, match="one common length"):
        train.lanes(state, learning_rate=[[0.1]])


def test_mesh_is_checked():
    opt = train.make_optimizer("sgd", 0.1)
    with pytest.raises(ValueError, match="unknown norm 'layernorm'"):
        presets.classifier("relu", "layernorm")
    with pytest.raises(ValueError, match="divisible"):
        train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=10, mesh=_FakeMesh())


class _FakeMesh:
    axis_names = ("data",)
    shape = {"data": 3}


_SHARDED = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from fflab import data, presets, train
assert jax.device_count() == 4, jax.devices()
ds = data.load("synthetic", n_train=400, n_test=100, dim=8, num_classes=4, teacher_width=16)
out = {}
for kind in [None, "batchnorm"]:
    runs = []
    for mesh in [None, jax.sharding.Mesh(np.array(jax.devices()), ("data",))]:
        model = presets.classifier("relu", kind)
        opt = train.make_optimizer("momentum", 0.1)
        k_init, k_shuffle = jax.random.split(jax.random.key(0))
        params, ms = model.init(k_init, [8, 32, 4], dtype=jnp.float32)
        state = train.init_state(params, opt, k_shuffle, ms)
        r = train.fit(state, opt, (ds.x_train, ds.y_train), epochs=3, batch_size=40, mesh=mesh,
                      loss_fn=model.loss_fn, metrics_fn=model.metrics_fn, test=(ds.x_test, ds.y_test),
                      progress=False)
        tree = (r.state.params, r.state.model_state)
        leaves = [np.asarray(a).ravel() for a in jax.tree_util.tree_leaves(tree)]
        runs.append({"params": np.concatenate(leaves).tolist(), "loss": r.history["train_loss"],
                     "shardings": len(r.state.params[0]["W"].sharding.device_set)})
    out[str(kind)] = runs
json.dump(out, sys.stdout)
"""


def test_data_parallel_training_matches_one_device():
    import os
    import subprocess
    import sys

    from fflab.compilation import FAST_COMPILE_FLAGS

    flags = " ".join(["--xla_force_host_platform_device_count=4", *FAST_COMPILE_FLAGS])  # the tests' own, and 4 devices
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    for kind, (one, four) in json.loads(proc.stdout).items():
        assert (one["shardings"], four["shardings"]) == (1, 4), kind
        # Same arithmetic up to the order of float32 sums across devices.
        np.testing.assert_allclose(four["params"], one["params"], rtol=2e-4, atol=2e-5, err_msg=kind)
        np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-4, err_msg=kind)


# --- monitors ---


@functools.partial(jax.tree_util.register_dataclass, data_fields=["x", "y"], meta_fields=["every"])
@dataclasses.dataclass(frozen=True, eq=False)
class _ProbeMonitor:
    """A monitor written by hand (fflab defines only the protocol): the loss on a fixed subset, how often it
    ran, the step it saw, and the Adam step count of the optimiser state it saw."""

    x: jax.Array
    y: jax.Array
    every: int

    def init(self, state):
        return jnp.zeros((), jnp.int32)

    def __call__(self, calls, view):
        (adam,) = [s for s in jax.tree.leaves(view.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
                   if isinstance(s, optax.ScaleByAdamState)]
        records = {"probe_loss": MLP.loss_fn(view.params, self.x, self.y), "calls": calls + 1, "step": view.step,
                   "adam_count": adam.count}
        return calls + 1, records


_ADAM = optax.adam(1e-2)  # one optimiser for the monitor tests, so that they share compiled epochs


def test_monitor_records_every_k_steps_and_changes_nothing(synthetic):
    x, y = synthetic.x_train, synthetic.y_train
    monitor = _ProbeMonitor(jnp.asarray(x[:50]), jnp.asarray(y[:50]), every=4)
    opt = _ADAM
    common = dict(epochs=3, batch_size=30, progress=False, **FIT)  # 10 steps per epoch
    plain = train.fit(_state(opt, [8, 16, 4]), opt, (x, y), **common)
    seen = train.fit(_state(opt, [8, 16, 4]), opt, (x, y), monitor=monitor, **common)
    assert _tree_equal(plain.state, seen.state)
    assert plain.history["batch_loss"] == seen.history["batch_loss"]
    h = seen.history
    assert h["monitor_step"] == list(range(0, 30, 4)) == h["step"]
    assert h["calls"] == list(range(1, 9))  # lax.cond: the monitor runs at the due steps only
    assert h["adam_count"] == [s + 1 for s in h["monitor_step"]]  # the optimiser state after the step's update
    # The raw epoch: records at the due steps, NaN elsewhere; the monitor state goes in and comes out.
    epoch = train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=30, monitor=monitor)
    state = _state(opt, [8, 16, 4])
    state, calls, stats = epoch(state, monitor.init(state), jnp.asarray(x), jnp.asarray(y))
    assert int(calls) == 3 and set(stats.records) == {"probe_loss", "calls", "step", "adam_count"}
    due = np.arange(10) % 4 == 0
    assert np.all(np.isfinite(stats.records["probe_loss"][due])) and np.all(np.isnan(stats.records["calls"][~due]))
    assert stats.records["probe_loss"].dtype == stats.loss.dtype
    with pytest.raises(ValueError, match="monitor.every must be a positive integer"):
        train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=30, monitor=_ProbeMonitor(x, y, every=0))


def test_monitor_sees_the_parameters_of_its_step(synthetic, caplog):
    # Full batch: one step per epoch, so the parameters before step t are the snapshot after epoch t.
    x, y = synthetic.x_train, synthetic.y_train
    monitor = _ProbeMonitor(jnp.asarray(x[:50]), jnp.asarray(y[:50]), every=2)
    opt = optax.adam(1e-3)  # a fresh optimiser: its programs are compiled here, and counted
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        result = train.fit(_state(opt, [8, 16, 4]), opt, (x, y), epochs=5, batch_size=300, monitor=monitor,
                           snapshot_epochs=range(6), progress=False, **FIT)
    # Epochs with a due step run the monitored program, the others the plain one; each compiles once.
    for name in ("monitored_epoch", "train_epoch"):
        assert len([r for r in caplog.records if f"Compiling jit({name})" in r.getMessage()]) == 1, name
    assert result.history["monitor_step"] == [0, 2, 4] and result.history["calls"] == [1, 2, 3]
    for step, got in zip(result.history["monitor_step"], result.history["probe_loss"], strict=True):
        want = train.evaluate(MLP.loss_fn, result.snapshots[step], x[:50], y[:50])["loss"]
        assert got == pytest.approx(want, rel=1e-12)


def test_monitor_in_lanes_and_compiled_once(synthetic, caplog):
    x, y = jnp.asarray(synthetic.x_train), jnp.asarray(synthetic.y_train)
    monitor = _ProbeMonitor(x[:50], y[:50], every=3)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1.0)
    rates = [0.01, 0.03]
    states = train.lanes(_state(opt, [8, 16, 4]), learning_rate=rates)
    epoch = train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=30, lanes=True, monitor=monitor)
    calls = jax.vmap(monitor.init)(states)
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        for _ in range(2):
            states, calls, stats = epoch(states, calls, x, y)
    assert len([r for r in caplog.records if "Compiling jit(monitored_epoch)" in r.getMessage()]) == 1
    assert stats.records["probe_loss"].shape == (2, 10) and list(np.asarray(calls)) == [7, 7]
    single = train.make_train_epoch(opt, loss_fn=MLP.loss_fn, batch_size=30, monitor=monitor)
    for i, lr in enumerate(rates):  # each lane's records are those of its own run
        state = _state(opt, [8, 16, 4])
        state = state._replace(opt_state=optax.tree_utils.tree_set(state.opt_state, learning_rate=lr))
        alone = monitor.init(state)
        for _ in range(2):
            state, alone, alone_stats = single(state, alone, x, y)
        # epoch 2: steps 12, 15 and 18 are due
        np.testing.assert_allclose(stats.records["probe_loss"][i], alone_stats.records["probe_loss"], rtol=1e-10)
        assert np.isnan(alone_stats.records["probe_loss"]).sum() == 7


def test_monitor_state_is_not_checkpointed_and_resume_continues(synthetic, tmp_path):
    x, y = synthetic.x_train, synthetic.y_train
    monitor = _ProbeMonitor(jnp.asarray(x[:50]), jnp.asarray(y[:50]), every=4)
    opt = _ADAM
    common = dict(epochs=4, batch_size=30, progress=False, monitor=monitor, **FIT)
    full = train.fit(_state(opt, [8, 16, 4]), opt, (x, y), **common)
    path = tmp_path / "ckpt.npz"

    def stop(epoch, state):
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train.fit(_state(opt, [8, 16, 4]), opt, (x, y), checkpoint_path=path, callback=stop, **common)
    state, history, _ = train.restore(path, _state(opt, [8, 16, 4], seed=5))  # a plain template loads it
    resumed = train.fit(state, opt, (x, y), history=history, checkpoint_path=path, **common)
    assert _tree_equal(resumed.state, full.state)
    assert resumed.history["monitor_step"] == full.history["monitor_step"] == list(range(0, 40, 4))
    np.testing.assert_allclose(resumed.history["probe_loss"], full.history["probe_loss"], rtol=1e-12)
    assert resumed.history["calls"] == [1, 2, 3, 4, 5] * 2  # the monitor's state started afresh at the resume
