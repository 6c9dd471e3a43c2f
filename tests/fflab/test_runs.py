"""fflab.load_run: a `fflab train` run loads back without a hand-built template, and continues."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import fflab
from fflab import checkpoint, cli, data, losses, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    argv = ["train", "--dataset", "digits", "--epochs", "3", "--hidden", "32,16", "--schedule", "constant",
            "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    return out


def test_load_run_gives_the_trained_network(run_dir):
    run = fflab.load_run(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.config["hidden"] == (32, 16) and run.history["epoch"] == [1, 2, 3]
    assert run.data["features"] == 64 and run.data["classes"] == 10 and run.model_state is None
    ds = data.load("digits")
    logits, _ = run.model.apply(run.params, run.model_state, jnp.asarray(ds.x_test))
    error = 100 * float(losses.error_rate(logits, jnp.asarray(ds.y_test)))
    # The same mistakes (one test image is 0.28%); the run's number was computed in float32.
    assert error == pytest.approx(metrics["test_error"], abs=1e-4)
    assert int(run.state.epoch) == 3 and int(run.state.step) == 3 * (len(ds.x_train) // 100)


def test_checkpoint_leaves_are_named_by_their_paths(run_dir):
    with np.load(run_dir / "checkpoint.npz") as npz:
        names = set(npz.files)
    assert {".params[0]['W']", ".params[2]['b']", ".step", ".epoch", ".key"} <= names
    assert not any(name.startswith("leaf_") for name in names)


def test_a_constant_rate_run_extends_and_a_cosine_one_says_why_not(run_dir, tmp_path, capsys):
    more = ["train", "--dataset", "digits", "--out", str(run_dir), "--resume", "--epochs", "5", "--no-progress"]
    assert cli.main(more) == 0
    run = fflab.load_run(run_dir)
    assert run.history["epoch"] == [1, 2, 3, 4, 5] and run.config["epochs"] == 5
    # Bit for bit what a 5-epoch run from scratch gives: a constant rate does not depend on the length.
    fresh = tmp_path / "fresh"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "5", "--hidden", "32,16", "--schedule", "constant",
                     "--out", str(fresh), "--no-progress"]) == 0
    again = fflab.load_run(fresh)
    for a, b in zip(jnp_leaves(run.params), jnp_leaves(again.params), strict=True):
        np.testing.assert_array_equal(a, b)
    cosine = tmp_path / "cosine"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "2", "--hidden", "8", "--out", str(cosine),
                     "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--dataset", "digits", "--out", str(cosine), "--resume", "--epochs", "4"]) == 2
    assert "a cosine schedule is fixed by its length" in capsys.readouterr().err


def jnp_leaves(tree):
    import jax

    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_load_run_of_a_batchnorm_run_restores_its_state(tmp_path):
    out = tmp_path / "bn"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "2", "--hidden", "16", "--batchnorm",
                     "--out", str(out), "--no-progress"]) == 0
    run = fflab.load_run(out)
    assert run.model.stateful and len(run.model_state) == 1
    ds = data.load("digits")
    got = train.evaluate(run.model.metrics_fn, run.params, ds.x_test, ds.y_test, model_state=run.model_state)
    assert got["error"] == pytest.approx(json.loads((out / "metrics.json").read_text())["test_error"], abs=1e-4)
    assert checkpoint.load_metadata(out / "checkpoint.npz")["data"]["source"] == "scikit-learn"
