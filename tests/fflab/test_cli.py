"""The ``fflab`` command line: a short training run, resume rules, one-line errors, experiment wiring."""

import json
import subprocess
import sys

import pytest

from fflab import checkpoint, cli
from tests.analysis._models import dense_jax_hessian


def _fail(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fflab: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_train_digits_writes_metrics_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--hidden",
        "32",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"test error {metrics['test_error']:.2f}%" in printed
    assert 0.0 < metrics["test_error"] < 100.0  # percent
    assert metrics["test_error"] == metrics["history"]["test_error"][-1]
    assert metrics["epochs_completed"] == 2 and len(metrics["history"]["train_loss"]) == 2
    assert metrics["config"]["hidden"] == [32] and metrics["config"]["optimizer"] == "momentum"
    assert checkpoint.load_metadata(out / "checkpoint.npz")["epoch"] == 2

    # The folder is taken: a fresh run is refused, a resume with other settings too.
    assert "--resume" in _fail(capsys, argv)
    assert "differs from the checkpoint" in _fail(capsys, [*argv, "--resume", "--lr", "0.3"])
    # Resuming a finished run changes nothing and reports the same error.
    assert cli.main(["train", "--dataset", "digits", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["test_error"] == metrics["test_error"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "nope", "--out", "{tmp}"], "unknown data set 'nope'"),
        (["train", "--dataset", "digits", "--hidden", "22,x", "--out", "{tmp}"], "--hidden"),
        (["train", "--dataset", "digits", "--hidden", "0", "--out", "{tmp}"], "--hidden"),
        (["train", "--dataset", "digits", "--optimizer", "lbfgs", "--out", "{tmp}"], "unknown optimizer"),
        (["train", "--dataset", "digits", "--schedule", "cyclic", "--out", "{tmp}"], "unknown schedule"),
        (["train", "--dataset", "digits", "--lr", "-1", "--out", "{tmp}"], "learning rate"),
        (["train", "--dataset", "digits", "--epochs", "0", "--out", "{tmp}"], "--epochs"),
        (["train", "--dataset", "digits", "--batch-size", "5000", "--out", "{tmp}"], "batch-size"),
        (["train", "--dataset", "digits", "--out", "{tmp}", "--resume"], "no checkpoint"),
        (["train", "--dataset", "mnist", "--data-dir", "{tmp}", "--out", "{tmp}"], "not found"),
        (["train", "--out", "{tmp}"], "--dataset"),
        (["train", "--dataset", "digits", "--devices", "64", "--out", "{tmp}"], "--devices 64: only"),
        (["train", "--dataset", "digits", "--batchnorm", "--transform", "--out", "{tmp}"], "not allowed"),
        (["train", "--dataset", "digits", "--batchnorm", "--hidden", "", "--out", "{tmp}"], "hidden layer"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch, argv, message):
    # No network: a missing mnist must fail fast on the local search.
    monkeypatch.setenv("FFLAB_MIRROR", "file:///nonexistent")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    line = _fail(capsys, [a.replace("{tmp}", str(tmp_path / "out")) for a in argv])
    assert message in line


@pytest.mark.parametrize("flag", ["--batchnorm", "--transform"])
def test_train_normalised_network(tmp_path, capsys, flag):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--epochs", "3", "--hidden", "32,16", flag, "--out", str(out),
            "--no-progress"]
    assert cli.main(argv) == 0
    assert f"with {flag[2:]}" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["norm"] == flag[2:]
    assert metrics["test_error"] < 20.0  # 10 classes: chance is 90%
    # Resuming without the flag keeps the network; switching it is refused.
    assert cli.main(["train", "--dataset", "digits", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["norm"] == flag[2:]
    other = "--transform" if flag == "--batchnorm" else "--batchnorm"
    switched = ["train", "--dataset", "digits", other, "--out", str(out), "--resume"]
    assert "--batchnorm/--transform" in _fail(capsys, switched)


def test_no_grad_norm_trains_the_same_network(tmp_path):
    common = ["train", "--dataset", "digits", "--epochs", "2", "--hidden", "16", "--no-progress"]
    assert cli.main([*common, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*common, "--no-grad-norm", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in "ab")
    assert b["history"]["grad_norm"] == [None, None] and all(g > 0 for g in a["history"]["grad_norm"])
    assert a["history"]["train_loss"] == b["history"]["train_loss"] and a["test_error"] == b["test_error"]


def test_track_sharpness_records_lambda_max_of_the_training_loss(tmp_path):
    """``--track-sharpness K``: lambda_max every K steps on the first N samples, into metrics.json's history; the
    first record (at the initial parameters) against jax.hessian + numpy on the same subset and loss."""
    import numpy as np

    from fflab import data, runs

    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--epochs", "2", "--hidden", "8", "--no-progress",
            "--track-sharpness", "6", "--sharpness-samples", "200", "--out", str(out)]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert history["monitor_step"] == [0, 6, 12, 18, 24]  # 14 steps an epoch, 28 in all
    assert metrics["config"]["track_sharpness"] == 6 and "preconditioned_sharpness" not in history
    ds = data.load("digits")
    model, _, state = runs.build(metrics["config"], features=64, classes=10, train_samples=len(ds.x_train))
    x, y = ds.x_train[:200], ds.y_train[:200]
    H = dense_jax_hessian(model.loss_fn, state.params, x, y)
    top = np.linalg.eigvalsh(np.asarray(H, np.float64))[-1]
    assert history["sharpness"][0] == pytest.approx(top, rel=1e-3)
    assert all(s > 0 for s in history["sharpness"]) and history["sharpness_matvecs"][0] > 0
    # A resumed run may track at another interval (it changes no trained number).
    assert cli.main([*argv[:-6], "--track-sharpness", "7", "--out", str(out), "--resume"]) == 0


def test_non_finite_loss_exits_2(tmp_path, capsys):
    out = tmp_path / "run"
    # A linear net with an absurd learning rate overflows within a few steps.
    argv = [
        "train",
        "--dataset",
        "digits",
        "--optimizer",
        "sgd",
        "--lr",
        "1e10",
        "--activation",
        "identity",
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--out",
        str(out),
        "--no-progress",
    ]
    line = _fail(capsys, argv)
    assert "non-finite loss at epoch 1, step" in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 0 and "non-finite" in metrics["error"]


def test_module_entry_point_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fflab",
            "train",
            "--dataset",
            "digits",
            "--hidden",
            "1,a",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("fflab: error: argument --hidden")


class _FakeExperiments:
    def __init__(self):
        self.calls = []

    def describe(self):
        return [("activations", "Sigmoid, tanh and relu"), ("landscape", "Loss along a line")]

    def run(self, names, **kwargs):
        self.calls.append(("run", list(names), kwargs))
        if "bogus" in names:
            raise ValueError("unknown experiment 'bogus'; valid names: activations, landscape")
        if "slow" in names:
            raise KeyboardInterrupt
        return []

    def report(self, out_dir):
        self.calls.append(("report", out_dir))
        return f"{out_dir or 'figures'}/README.md"


def test_experiment_commands_delegate(monkeypatch, capsys):
    fake = _FakeExperiments()
    monkeypatch.setitem(sys.modules, "experiments", fake)
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("activations") and "Loss along a line" in out[1]
    assert cli.main(["run", "all", "--quick", "--dataset", "digits", "--out", "o"]) == 0
    call, names, kwargs = fake.calls[-1]
    assert (call, names) == ("run", ["all"]) and callable(kwargs.pop("interrupted"))
    assert kwargs == {"quick": True, "dataset": "digits", "data_dir": None, "out_dir": "o", "resume": False}
    assert cli.main(["run", "landscape", "--resume"]) == 0
    call, names, kwargs = fake.calls[-1]
    kwargs.pop("interrupted")
    assert (names, kwargs) == (["landscape"], {"quick": False, "dataset": None, "data_dir": None,
                                               "out_dir": None, "resume": True})
    assert cli.main(["report", "--out", "o"]) == 0
    assert fake.calls[-1] == ("report", "o") and "o/README.md" in capsys.readouterr().out
    assert "unknown experiment 'bogus'" in _fail(capsys, ["run", "bogus"])
    assert "required" in _fail(capsys, ["run"])


def test_interrupt_exits_130_with_the_resume_hint_of_its_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "experiments", _FakeExperiments())
    assert cli.main(["run", "slow"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        "fflab: interrupted; `fflab run ... --resume` skips the experiments that already finished"
    )

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_train", interrupt)  # the parser binds the module's _train when built
    assert cli.main(["train", "--dataset", "digits", "--out", "o"]) == 130
    assert "nothing to resume: run the same command again" in capsys.readouterr().err
