"""The throughput benchmark compares like with like: fflab's epoch and the PyTorch loop do the same work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import train_throughput as bench
from fflab import data, mlp, train

SIZES = (20, 16, 12, 10)
N, BATCH = 300, 50


def _problem(seed):
    rng = np.random.default_rng(seed)
    x = rng.random((N, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], N).astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def library():
    """The library's optimiser and jitted epoch, compiled once for the module."""
    _, optimizer, _, train_epoch = bench.fflab_setup(jax.random.key(0), SIZES, batch_size=BATCH)
    return optimizer, train_epoch


def _fflab_epoch(library, seed):
    """One library epoch from fresh parameters, as :func:`bench.fflab_setup` makes them."""
    optimizer, train_epoch = library
    x, y = _problem(seed)
    params = mlp.init(jax.random.key(seed), SIZES, dtype=jnp.float32)
    state = train.init_state(params, optimizer, seed + 10)
    batches = np.asarray(data.batch_indices(jax.random.fold_in(state.key, state.epoch), N, BATCH))
    new, stats = train_epoch(state, jnp.asarray(x), jnp.asarray(y))
    return x, y, params, state, batches, new, stats


def _close(a, b, tol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == np.float32 and b.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_epoch_matches_fflab_epoch(library, seed):
    torch = pytest.importorskip("torch")
    x, y, params, _, batches, new, stats = _fflab_epoch(library, seed)
    model = bench.torch_model(params)
    optimizer = torch.optim.SGD(model.parameters(), lr=bench.LEARNING_RATE, momentum=bench.MOMENTUM)
    losses = bench.torch_epoch(
        model,
        optimizer,
        torch.from_numpy(x),
        torch.from_numpy(y.astype(np.int64)),
        torch.from_numpy(batches.copy()),
    )
    assert losses.shape == (N // BATCH,)
    _close(losses.numpy(), stats.loss)
    # The epoch really trained (momentum builds up), so agreeing parameters are not the initial ones.
    assert float(np.abs(np.asarray(new.params[0]["W"]) - np.asarray(params[0]["W"])).max()) > 1e-2
    for got, want in zip(bench.torch_params(model), new.params, strict=True):
        _close(got["W"], want["W"])
        _close(got["b"], want["b"])


def test_torch_model_copies_weights():
    torch = pytest.importorskip("torch")
    x, _ = _problem(3)
    params = bench.fflab_setup(jax.random.key(3), SIZES)[0]
    want = np.asarray(jax.nn.relu(jnp.asarray(x) @ params[0]["W"] + params[0]["b"]))
    want = np.asarray(jax.nn.relu(want @ params[1]["W"] + params[1]["b"]))
    want = np.asarray(want @ params[2]["W"] + params[2]["b"])
    with torch.no_grad():
        _close(bench.torch_model(params)(torch.from_numpy(x)).numpy(), want)


@pytest.mark.parametrize(
    "options",
    [{"pregather": True}, {"grad_norm": False, "learning_rate": False}],
    ids=["pregather", "loss-only"],
)
def test_candidate_epoch_matches_library(library, options):
    x, y, _, state, _, new, lib_stats = _fflab_epoch(library, 2)
    epoch = bench.make_candidate_epoch(library[0], batch_size=BATCH, **options)
    got, out = epoch(state, jnp.asarray(x), jnp.asarray(y))
    want = [lib_stats.loss]
    want += [lib_stats.grad_norm] if options.get("grad_norm", True) else []
    want += [lib_stats.learning_rate] if options.get("learning_rate", True) else []
    assert len(out) == len(want)
    for a, b in zip(out, want, strict=True):
        _close(a, b, 1e-5)
    assert int(got.step) == int(new.step) == N // BATCH and int(got.epoch) == 1
    for a, b in zip(
        jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(new.params), strict=True
    ):
        _close(a, b, 1e-5)


def test_epoch_flops_counts_the_matrix_products():
    # Hand count for 3-4-2 on 5 samples: forward 2*(12 + 8) = 40, weight gradients 40, the gradient sent
    # back through the second layer 16, none into the data.
    assert bench.epoch_flops((3, 4, 2), 5) == 5 * (40 + 40 + 16)
    assert bench.rule_of_thumb_flops((3, 4, 2), 5) == 6 * 5 * 20
    # The lecture's network: 908,640 per sample.
    assert bench.epoch_flops(bench.SIZES, 1) == 908_640


def test_epoch_flops_against_xla_cost_analysis():
    """XLA's own FLOP count of one jitted training step agrees with the analytic count within 5%."""
    sizes = bench.SIZES
    params = [
        {"W": jnp.zeros((a, b), jnp.float32), "b": jnp.zeros((b,), jnp.float32)}
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    x = jnp.zeros((100, sizes[0]), jnp.float32)
    y = jnp.zeros((100,), jnp.int32)

    def loss(p):
        logits = x @ p[0]["W"] + p[0]["b"]
        for layer in p[1:]:
            logits = jax.nn.relu(logits) @ layer["W"] + layer["b"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(100), y])

    cost = jax.jit(jax.grad(loss)).lower(params).cost_analysis()  # of the HLO; no compile needed
    cost = cost[0] if isinstance(cost, list) else cost
    xla = float(cost["flops"])
    assert abs(xla / bench.epoch_flops(bench.SIZES, 100) - 1) < 0.05, xla


def test_missing_data_is_one_line_and_exit_2(monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise data.DataError("fashion-mnist: not found in /nowhere")

    monkeypatch.setattr(bench.data, "load", missing)
    assert bench.main(["--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "/nowhere" in err
