"""The ``fflab`` command line.

``fflab train`` trains an MLP classifier and writes ``RUN_DIR/metrics.json`` and ``RUN_DIR/checkpoint.npz``;
``fflab list``, ``fflab run`` and ``fflab report`` drive the lecture's experiments (:mod:`experiments`).
Bad arguments or data print one line on stderr and exit with status 2, without a traceback.

Examples::

    fflab train --dataset fashion-mnist --out runs/fmnist            # the lecture's net and default recipe
    fflab train --dataset digits --optimizer adam --lr 1e-3 --schedule constant --out runs/adam
    fflab train --dataset digits --out runs/adam --resume                 # continue an interrupted run
    fflab run all --quick
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

__all__ = ["DATASET_DEFAULTS", "DEFAULTS", "build_parser", "main"]

# The default recipe: the lecture's 225-144 relu net, momentum SGD (0.9) with a cosine-annealed learning rate
# and a little weight decay, 50 epochs. Measured: 10.0% test error on fashion-mnist.
DEFAULTS = {
    "hidden": (225, 144),
    "activation": "relu",
    "init": "glorot_relu",
    "optimizer": "momentum",
    "lr": 0.05,
    "schedule": "cosine",
    "momentum": 0.9,
    "batch_size": 100,
    "epochs": 50,
    "weight_decay": 5e-4,
    "clip": None,
    "seed": 0,
    "validation": 0,
    "norm": None,
}
# Per data set changes to the recipe. digits has only 1,437 training images, 14 steps of 100 per epoch: it
# needs more epochs, and a larger step and decay to regularise as much in 1,400 steps as fashion-mnist gets
# in 30,000 (with lr 0.05 and decay 5e-4 it stays at 2.2-2.8% even after 500 epochs; this gives 1.9-2.2%).
DATASET_DEFAULTS = {"digits": {"epochs": 100, "lr": 0.1, "weight_decay": 1e-3}}
CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
# Settings that may differ when resuming: where the data live.
_RESUME_FREE = ("data_dir",)


class UsageError(Exception):
    """A one-line user-facing error; ``main`` prints it and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (no usage dump) with exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _int_at_least(low: int):
    """An argparse type: an integer ``>= low``, with a one-line message otherwise."""
    what = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = "positive integer" if low == 1 else f"integer >= {low}"
    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _hidden(text: str) -> tuple[int, ...]:
    """``"225,144"`` -> ``(225, 144)``; ``""`` or ``"none"`` -> no hidden layer (softmax regression)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive widths such as 225,144, got {text!r}"
        ) from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"hidden widths must be positive, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The ``fflab`` argument parser with its subcommands."""
    from fflab import init, mlp, train

    parser = _Parser(
        prog="fflab", description="Train feed-forward networks and reproduce the lecture's figures."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train an MLP classifier",
        description="Train an MLP; write RUN_DIR/metrics.json and RUN_DIR/checkpoint.npz. Options left out "
        "take the default recipe (the lecture's 225-144 relu net, momentum 0.9, lr 0.05, cosine schedule, "
        "weight decay 5e-4, batch 100, 50 epochs; on digits lr 0.1, weight decay 1e-3, 100 epochs), or, "
        "with --resume, the checkpoint's settings.",
    )
    t.add_argument("--dataset", required=True, help="digits, mnist, fashion-mnist or synthetic")
    t.add_argument("--data-dir", help="folder holding the IDX files of mnist / fashion-mnist")
    t.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="folder for metrics.json and the checkpoint"
    )
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR's checkpoint")
    t.add_argument("--hidden", type=_hidden, help="hidden widths, e.g. 225,144 (default)")
    t.add_argument("--activation", choices=tuple(mlp.ACTIVATIONS), help="hidden non-linearity (relu)")
    t.add_argument("--init", choices=tuple(init.SCHEMES), help="weight initialisation (glorot_relu)")
    t.add_argument("--optimizer", help=f"one of {', '.join(train.OPTIMIZERS)} (momentum)")
    t.add_argument("--lr", type=_finite_float, help="peak learning rate (0.05; 0.1 on digits)")
    t.add_argument("--schedule", help=f"one of {', '.join(train.SCHEDULES)} (cosine)")
    t.add_argument("--momentum", type=_finite_float, help="momentum of momentum/nesterov (0.9)")
    t.add_argument("--batch-size", type=_positive_int, help="mini-batch size (100)")
    t.add_argument("--epochs", type=_positive_int, help="epochs (50; 100 on digits)")
    t.add_argument(
        "--weight-decay", type=_finite_float, help="L2 coefficient on weight matrices (5e-4; 1e-3 on digits)"
    )
    t.add_argument("--clip", type=_finite_float, help="clip gradients to this global norm (off)")
    t.add_argument("--seed", type=_nonnegative_int, help="seed of initialisation and shuffling (0)")
    t.add_argument("--validation", type=_nonnegative_int, help="hold out N training samples (0)")
    norm = t.add_mutually_exclusive_group()
    norm.add_argument(
        "--batchnorm", dest="norm", action="store_const", const="batchnorm",
        help="batch normalisation on every hidden layer (Ioffe & Szegedy 2015)",
    )
    norm.add_argument(
        "--transform", dest="norm", action="store_const", const="transform",
        help="Raiko-Valpola-LeCun transformations with shortcut connections, re-estimated every step",
    )
    t.add_argument(
        "--devices", type=_positive_int,
        help="data-parallel over this many local devices (default: all that divide the batch size)",
    )
    t.add_argument("--checkpoint-every", type=_positive_int, default=1, help="epochs between checkpoints (1)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--no-grad-norm", action="store_true",
        help="skip the per-step gradient norms (about 15%% faster; grad_norm is null in metrics.json)",
    )
    t.set_defaults(
        handler=_train, interrupted="`fflab train ... --resume` continues from the last checkpoint"
    )

    ls = sub.add_parser("list", help="list the experiments", description="List the lecture's experiments.")
    ls.set_defaults(handler=_list)

    r = sub.add_parser("run", help="run experiments", description="Run experiments by name, or all of them.")
    r.add_argument("names", nargs="+", metavar="NAME", help="experiment names (see `fflab list`) or all")
    r.add_argument("--quick", action="store_true", help="small offline configs that run in seconds")
    r.add_argument("--dataset", help="override the data set of experiments that load one")
    r.add_argument("--data-dir", help="folder holding the IDX files")
    r.add_argument("--out", help="output folder (default figures/, or figures/quick/ with --quick)")
    r.add_argument(
        "--resume", action="store_true",
        help="skip the experiments that already finished into the output folder with the same config",
    )
    r.set_defaults(
        handler=_run, interrupted="`fflab run ... --resume` skips the experiments that already finished"
    )

    rep = sub.add_parser(
        "report", help="write the gallery", description="Write OUT/README.md from saved results."
    )
    rep.add_argument("--out", help="results folder (default figures/)")
    rep.set_defaults(handler=_report)
    return parser


# --- train ---

_TRAIN_KEYS = (
    "hidden",
    "activation",
    "init",
    "optimizer",
    "lr",
    "schedule",
    "momentum",
    "batch_size",
    "epochs",
    "weight_decay",
    "clip",
    "seed",
    "validation",
    "norm",
)


def _config(args) -> dict:
    """The run's settings: the checkpoint's with --resume, else the defaults; explicit options on top."""
    given = {k: getattr(args, k) for k in _TRAIN_KEYS if getattr(args, k) is not None}
    out = Path(args.out)
    ckpt = out / CHECKPOINT
    if args.resume:
        from fflab import checkpoint

        if not ckpt.exists():
            raise UsageError(f"--resume: no checkpoint at {ckpt}")
        saved = checkpoint.load_metadata(ckpt).get("config") or {}
        if "hidden" in saved:
            saved["hidden"] = tuple(saved["hidden"])
        for key, value in {"dataset": args.dataset, **given}.items():
            if key in saved and saved[key] != value:
                flag = "--" + key.replace("_", "-")
                if key == "norm":  # --batchnorm / --transform, or neither
                    flag, value = "--batchnorm/--transform", value or "none"
                raise UsageError(
                    f"--resume: {flag} {value} differs from the checkpoint's {saved[key]}; drop {flag} "
                    f"or train into a new --out folder"
                )
        return {**saved, "data_dir": args.data_dir}
    if ckpt.exists():
        raise UsageError(
            f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out"
        )
    config = {"dataset": args.dataset, "data_dir": args.data_dir, **DEFAULTS}
    config.update(DATASET_DEFAULTS.get(args.dataset, {}))
    config.update(given)
    return config


def _train(args) -> int:
    import jax
    import jax.numpy as jnp

    from fflab import checkpoint, data, mlp, train
    from fflab import norm as fflab_norm

    config = _config(args)
    out = Path(args.out)
    ds = data.load(
        config["dataset"], data_dir=config["data_dir"], validation=config["validation"], seed=config["seed"]
    )
    n, d = ds.x_train.shape
    if config["batch_size"] > n:
        raise UsageError(f"--batch-size {config['batch_size']} exceeds the {n} training samples")
    steps = n // config["batch_size"]
    optimizer = train.make_optimizer(
        config["optimizer"],
        config["lr"],
        schedule=config["schedule"],
        total_steps=config["epochs"] * steps,
        momentum=config["momentum"],
        clip=config["clip"],
        weight_decay=config["weight_decay"],
    )
    init_key, shuffle_key = jax.random.split(jax.random.key(config["seed"]))
    sizes = [d, *config["hidden"], ds.num_classes]
    norm = config.get("norm")
    if norm is None:
        params, model_state = mlp.init(init_key, sizes, init=config["init"], dtype=jnp.float32), ()
    else:
        params, model_state = fflab_norm.init(
            init_key, sizes, norm=norm, init=config["init"], dtype=jnp.float32
        )
    state = train.init_state(params, optimizer, shuffle_key, model_state)
    mesh = _mesh(args.devices, config["batch_size"])
    history = None
    if args.resume:
        state, history, _ = train.restore(out / CHECKPOINT, state)

    saved = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k != "data_dir"}
    val = (ds.x_val, ds.y_val) if ds.x_val.shape[0] else None
    extras = "".join(
        [f" with {norm}" if norm else "", f" on {mesh.shape['data']} devices" if mesh is not None else ""]
    )
    print(
        f"training {'-'.join(map(str, sizes))} {config['activation']} MLP{extras} on {config['dataset']} "
        f"({n} samples, {steps} steps/epoch) for {config['epochs']} epochs into {out}",
        flush=True,
    )
    tic = time.perf_counter()
    error = None
    try:
        result = train.fit(
            state,
            optimizer,
            (ds.x_train, ds.y_train),
            epochs=config["epochs"],
            batch_size=config["batch_size"],
            activation=config["activation"],
            norm=norm,
            mesh=mesh,
            test=(ds.x_test, ds.y_test),
            val=val,
            history=history,
            checkpoint_path=out / CHECKPOINT,
            checkpoint_every=args.checkpoint_every,
            config=saved,
            progress=not args.no_progress,
            record_grad_norm=not args.no_grad_norm,
        )
        history = result.history
    except train.NonFiniteLossError as e:
        error = e
        history = checkpoint.load_metadata(e.checkpoint).get("history", {}) if e.checkpoint else {}
    metrics = {
        "config": saved,
        "num_params": mlp.num_params(params),
        "epochs_completed": len(history.get("epoch", [])),
        "test_error": history["test_error"][-1] if history.get("test_error") else None,
        "train_error": history["train_error"][-1] if history.get("train_error") else None,
        "seconds_per_epoch": _seconds_per_epoch(history.get("seconds", [])),
        "wall_seconds_this_session": time.perf_counter() - tic,
        "checkpoint": CHECKPOINT,
        "history": history,
    }
    if history.get("val_error"):
        metrics["val_error"] = history["val_error"][-1]
    if error is not None:
        metrics["error"] = str(error)
    _write_json(out / METRICS, metrics)
    if error is not None:
        raise error
    val_text = f", validation error {metrics['val_error']:.2f}%" if "val_error" in metrics else ""
    print(
        f"test error {metrics['test_error']:.2f}%{val_text} after {metrics['epochs_completed']} epochs "
        f"({metrics['seconds_per_epoch']:.2f} s/epoch); wrote {out / METRICS}"
    )
    return 0


def _mesh(devices: int | None, batch_size: int):
    """The data-parallel mesh, or ``None`` for one device.

    ``devices=None`` takes the most local devices that divide the batch size; an explicit count must.
    """
    import jax

    from fflab import train

    available = jax.device_count()
    if devices is None:
        devices = max(k for k in range(1, available + 1) if batch_size % k == 0)
    elif devices > available:
        raise UsageError(f"--devices {devices}: only {available} {jax.devices()[0].platform} device(s) here")
    elif batch_size % devices:
        raise UsageError(f"--batch-size {batch_size} must be divisible by --devices {devices}")
    return train.data_mesh(devices) if devices > 1 else None


def _seconds_per_epoch(seconds: list[float]) -> float | None:
    """Mean wall time per epoch, leaving out the first epoch (it also compiles) when there are others."""
    steady = seconds[1:] or seconds
    return sum(steady) / len(steady) if steady else None


def _write_json(path: Path, payload: dict) -> None:
    from fflab import checkpoint

    # NaN / inf are not JSON; a run that diverged says so in "error" instead.
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    text = json.dumps(clean(payload), indent=1)
    checkpoint._atomic_write(path, lambda f: f.write(text.encode()))


# --- experiments ---


def _list(args) -> int:
    import experiments

    rows = experiments.describe()
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def _run(args) -> int:
    import experiments

    experiments.run(
        args.names,
        quick=args.quick,
        dataset=args.dataset,
        data_dir=args.data_dir,
        out_dir=args.out,
        resume=args.resume,
    )
    return 0


def _report(args) -> int:
    import experiments

    path = experiments.report(args.out)
    print(f"wrote {path}")
    return 0


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input or data: a command line reports them with :func:`one_line` and
    exits with status 2, without a traceback (``fflab`` and ``python -m experiments.NAME`` alike)."""
    from fflab import data, train

    # ValueError covers bad names and numbers and fflab.checkpoint.CheckpointError.
    return (UsageError, ValueError, data.DataError, train.NonFiniteLossError, OSError)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a data error lists the places it searched over several)."""
    return " ".join(str(err).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fflab`` console script; returns the exit status (0 ok, 2 bad input, 130 ^C)."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except user_errors() as e:
        print(f"fflab: error: {one_line(e)}", file=sys.stderr)
    except KeyboardInterrupt:
        hint = getattr(args, "interrupted", None)
        print(f"fflab: interrupted; {hint}" if hint else "fflab: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
