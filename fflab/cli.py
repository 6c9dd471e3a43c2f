"""The ``fflab`` command line.

``fflab train`` trains an MLP classifier and writes ``RUN_DIR/metrics.json`` and ``RUN_DIR/checkpoint.npz``;
``fflab list``, ``fflab run`` and ``fflab report`` drive the lecture's experiments through their lazy
registry (:mod:`experiments`). Bad arguments or data print one line on stderr and exit with status 2,
without a traceback; Ctrl-C exits with status 130 and says what can be resumed. Help, ``list`` and argument
errors answer without loading JAX.

Examples::

    fflab train --dataset fashion-mnist --out runs/fmnist            # the lecture's net and default recipe
    fflab train --dataset digits --optimizer adam --lr 1e-3 --schedule constant --out runs/adam
    fflab train --dataset digits --out runs/adam --resume                 # continue an interrupted run
    fflab run all --quick
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import sys
import time
from pathlib import Path

from fflab import options
from fflab.errors import USER_ERRORS, UsageError, one_line
from fflab.runs import CHECKPOINT, DATASET_DEFAULTS, DEFAULTS, METRICS

__all__ = ["build_parser", "main"]

# Settings that may differ when resuming: where the data live, how often to evaluate.
_RESUME_FREE = ("data_dir", "eval_every", "track_sharpness", "sharpness_samples")
_MAX_SEED = 2**32 - 1
_MAX_WIDTH = 2**24
_FLOAT32_MAX = 3.4028234663852886e38


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (no usage dump) with exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _int_in(low: int, high: int | None = None):
    """An argparse type: an integer in ``[low, high]``, with a one-line message otherwise."""
    what = "a positive integer" if low == 1 else f"an integer >= {low}"
    if high is not None:
        what += f" up to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


def _finite_float(text: str) -> float:
    """A number that stays finite in float32, where training runs."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"expected a finite float32 number, got {text!r}")
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
    if min(sizes) < 1 or max(sizes) > _MAX_WIDTH:
        raise argparse.ArgumentTypeError(f"hidden widths must lie in 1..{_MAX_WIDTH}, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The ``fflab`` argument parser with its subcommands."""
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
    t.add_argument("--dataset", required=True, help=", ".join(options.DATASETS))
    t.add_argument("--data-dir", help="folder holding the IDX files of mnist / fashion-mnist")
    t.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="folder for metrics.json and the checkpoint"
    )
    t.add_argument(
        "--resume", action="store_true",
        help="continue from RUN_DIR's checkpoint (with a constant schedule, --epochs may extend a finished run)",
    )
    t.add_argument("--hidden", type=_hidden, help="hidden widths, e.g. 225,144 (default)")
    t.add_argument("--activation", choices=options.ACTIVATIONS, help="hidden non-linearity (relu)")
    t.add_argument("--init", choices=options.INIT_SCHEMES, help="weight initialisation (glorot_relu)")
    t.add_argument("--optimizer", help=f"one of {', '.join(options.OPTIMIZERS)} (momentum)")
    t.add_argument("--lr", type=_finite_float, help="peak learning rate (0.05; 0.1 on digits)")
    t.add_argument("--schedule", help=f"one of {', '.join(options.SCHEDULES)} (cosine)")
    t.add_argument("--momentum", type=_finite_float, help="momentum of momentum/nesterov (0.9)")
    t.add_argument("--batch-size", type=_int_in(1, 2**31 - 1), help="mini-batch size (100)")
    t.add_argument("--epochs", type=_int_in(1, 10**7), help="epochs (50; 100 on digits)")
    t.add_argument(
        "--weight-decay", type=_finite_float, help="L2 coefficient on weight matrices (5e-4; 1e-3 on digits)"
    )
    t.add_argument("--clip", type=_finite_float, help="clip gradients to this global norm (off)")
    t.add_argument("--seed", type=_int_in(0, _MAX_SEED), help="seed of initialisation and shuffling (0)")
    t.add_argument("--validation", type=_int_in(0, 2**31 - 1), help="hold out N training samples (0)")
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
        "--devices", type=_int_in(1, 2**16),
        help="data-parallel over this many local devices (default: all that divide the batch size)",
    )
    t.add_argument("--checkpoint-every", type=_int_in(1), default=1, help="epochs between checkpoints (1)")
    t.add_argument(
        "--eval-every", type=_int_in(1), default=1,
        help="evaluate the training and test sets every N epochs and after the last (1: the learning curves)",
    )
    t.add_argument(
        "--track-sharpness", type=_int_in(1), metavar="K",
        help="record the Hessian's largest eigenvalue every K steps, warm-started (Adam: also the preconditioned "
        "one); into metrics.json's history (off)",
    )
    t.add_argument(
        "--sharpness-samples", type=_int_in(1, 2**31 - 1), metavar="N",
        help="training samples the sharpness is measured on, the first N (1000)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--no-grad-norm", action="store_true",
        help="skip the per-step gradient norms (about 15%% faster; grad_norm is null in metrics.json)",
    )
    t.set_defaults(handler=_train, interrupted=_train_interrupted)

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
        handler=_run, interrupted=lambda args: "`fflab run ... --resume` skips the experiments that already finished"
    )

    rep = sub.add_parser(
        "report", help="write the gallery", description="Write OUT/README.md from saved results."
    )
    rep.add_argument("--out", help="results folder (default figures/)")
    rep.set_defaults(handler=_report)
    return parser


# --- interrupts ---

# Ctrl-C is recorded here, and raised as KeyboardInterrupt only where that is safe. Raised inside an import
# (JAX's C extension fails to initialise and Python reports an ImportError) or inside a garbage-collection
# callback (Python prints "Exception ignored" and drops it), it would be lost or turn into a traceback; there
# the flag alone is set, and the command checks it at its next step: after JAX loads, after the data, after
# every epoch and before it reports success.
_interrupted = False


def _unsafe(frame) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib") or "gc_callback" in code.co_name:
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame):
    global _interrupted
    _interrupted = True
    if not _unsafe(frame):
        raise KeyboardInterrupt


def _check_interrupt(*_):
    if _interrupted:
        raise KeyboardInterrupt


# --- train ---

_TRAIN_KEYS = (*DEFAULTS, "eval_every", "track_sharpness", "sharpness_samples")


def _out_dir(text: str) -> Path:
    """The run folder, checked before any work: a folder we can write, or one we can create."""
    if not text.strip():
        raise UsageError("--out must name a folder, got an empty string")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot write to {probe}")
    return out


def _config(args, out: Path) -> tuple[dict, dict]:
    """The run's settings and, on resume, the checkpoint's metadata."""
    given = {k: getattr(args, k) for k in _TRAIN_KEYS if getattr(args, k, None) is not None}
    ckpt = out / CHECKPOINT
    if args.resume:
        from fflab import checkpoint

        if not ckpt.exists():
            raise UsageError(f"--resume: no checkpoint at {ckpt}; run again without --resume")
        meta = checkpoint.load_metadata(ckpt)
        saved = meta.get("config")
        if not isinstance(saved, dict) or {*DEFAULTS, "dataset"} - set(saved):
            raise UsageError(
                f"--resume: {ckpt} holds no fflab train run config (was it written by train.fit directly?); "
                "train into a new --out folder"
            )
        saved = {**saved, "hidden": tuple(saved["hidden"])}
        for key, value in {"dataset": args.dataset, **given}.items():
            if key in _RESUME_FREE or saved.get(key) == value:
                continue
            flag = "--" + key.replace("_", "-")
            if key == "epochs" and _extendable(saved, value, meta):
                continue
            if key == "norm":  # --batchnorm / --transform, or neither
                flag, value = "--batchnorm/--transform", value or "none"
            why = ""
            if key == "epochs":
                why = (f"; a {saved['schedule']} schedule is fixed by its length, so only a constant one can be "
                       "extended" if saved["schedule"] != "constant" else
                       f"; the run already finished {meta.get('epoch')} epochs")
            raise UsageError(
                f"--resume: {flag} {value} differs from the checkpoint's {saved.get(key)}{why}; drop {flag} "
                f"or train into a new --out folder"
            )
        return {**saved, **given, "data_dir": args.data_dir}, meta
    if ckpt.exists():
        raise UsageError(
            f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out"
        )
    config = {"dataset": args.dataset, "data_dir": args.data_dir, **DEFAULTS, "eval_every": 1}
    config.update(DATASET_DEFAULTS.get(args.dataset, {}))
    config.update(given)
    return config, {}


def _extendable(saved: dict, epochs: int, meta: dict) -> bool:
    """A constant learning rate does not depend on the run's length, so more epochs continue the same run."""
    return saved["schedule"] == "constant" and epochs >= int(meta.get("epoch", 0))


def _check_memory(sizes: list[int], batch_size: int, num_samples: int, norm: str | None) -> None:
    """Refuse a network whose float32 training state cannot fit in this machine's memory, before allocating."""
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    if norm == "transform":  # shortcuts from every layer to every layer above
        weights += sum(sizes[j] * sizes[k] for k in range(2, len(sizes)) for j in range(k - 1))
    # params, gradient, optimiser state, update and the host copy of a checkpoint; activations of a batch.
    need = 4 * (6 * weights + 4 * batch_size * sum(sizes) + num_samples * sizes[0])
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return
    if need > have:
        raise UsageError(
            f"a {'-'.join(map(str, sizes))} network has {weights:,} weights and needs about "
            f"{need / 2**30:.1f} GiB to train, more than this machine's {have / 2**30:.1f} GiB; "
            "choose smaller --hidden widths"
        )


def _train(args) -> int:
    from fflab.files import FolderLock, remove_stale_temporaries

    out = _out_dir(args.out)
    with FolderLock(out):
        for name in (CHECKPOINT, METRICS):
            remove_stale_temporaries(out / name)  # left by a run killed while writing them
        return _train_locked(args, out)


def _train_locked(args, out: Path) -> int:
    config, meta = _config(args, out)
    import jax  # noqa: F401  (loads here, under the interrupt handler)

    from fflab import checkpoint, data, mlp, runs, train

    _check_interrupt()
    ds = data.load(
        config["dataset"], data_dir=config["data_dir"], validation=config["validation"], seed=config["seed"]
    )
    _check_interrupt()
    n, d = ds.x_train.shape
    if config["batch_size"] > n:
        raise UsageError(f"--batch-size {config['batch_size']} exceeds the {n} training samples")
    norm = config.get("norm")
    if norm and not config["hidden"]:
        raise UsageError(f"--{norm} needs at least one hidden layer (--hidden)")
    record = {"features": d, "classes": ds.num_classes, "train_samples": n,
              "fingerprint": data.fingerprint(ds.x_train, ds.y_train), "source": ds.source}
    if meta and meta.get("data", {}).get("fingerprint") not in (None, record["fingerprint"]):
        before = meta["data"]
        raise UsageError(
            f"--resume: the training data differ from the run's ({before.get('train_samples')} samples from "
            f"{before.get('source')}, now {n} from {ds.source}); resume with the same data or train into a "
            "new --out folder"
        )
    sizes = [d, *config["hidden"], ds.num_classes]
    _check_memory(sizes, config["batch_size"], n, norm)
    model, optimizer, state = runs.build(config, features=d, classes=ds.num_classes, train_samples=n)
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
        f"from {ds.source} ({n} samples, {n // config['batch_size']} steps/epoch) for {config['epochs']} "
        f"epochs into {out}",
        flush=True,
    )
    monitor = _sharpness_tracker(config, model, (ds.x_train, ds.y_train))
    tic = time.perf_counter()
    error = None
    try:
        result = train.fit(
            state,
            optimizer,
            (ds.x_train, ds.y_train),
            loss_fn=model.loss_fn,
            metrics_fn=model.metrics_fn,
            epochs=config["epochs"],
            batch_size=config["batch_size"],
            eval_every=config["eval_every"],
            mesh=mesh,
            test=(ds.x_test, ds.y_test),
            val=val,
            history=history,
            callback=_check_interrupt,
            checkpoint_path=out / CHECKPOINT,
            checkpoint_every=args.checkpoint_every,
            config=saved,
            metadata={"data": record},
            progress=not args.no_progress,
            record_grad_norm=not args.no_grad_norm,
            monitor=monitor,
        )
        history = result.history
    except train.NonFiniteLossError as e:
        error = e
        history = checkpoint.load_metadata(e.checkpoint).get("history", {}) if e.checkpoint else {}
    metrics = {
        "config": saved,
        "data": record,
        "num_params": mlp.num_params(state.params),
        "epochs_completed": len(history.get("epoch", [])),
        "test_error": history["test_error"][-1] if history.get("test_error") else None,
        "train_error": history["train_error"][-1] if history.get("train_error") else None,
        "seconds_per_epoch": _seconds_per_epoch(history.get("train_seconds", [])),
        "wall_seconds_this_session": time.perf_counter() - tic,
        "checkpoint": CHECKPOINT,
        "history": history,
    }
    if history.get("val_error"):
        metrics["val_error"] = history["val_error"][-1]
    if error is not None:
        metrics["error"] = str(error)
    from fflab.files import write_json

    write_json(out / METRICS, metrics)
    if error is not None:
        raise error
    _check_interrupt()
    val_text = f", validation error {metrics['val_error']:.2f}%" if "val_error" in metrics else ""
    print(
        f"test error {metrics['test_error']:.2f}%{val_text} after {metrics['epochs_completed']} epochs "
        f"({metrics['seconds_per_epoch']:.2f} s/epoch of training); wrote {out / METRICS}"
    )
    return 0


def _sharpness_tracker(config: dict, model, train_data):
    """``--track-sharpness K``: the sharpness tracker on the first ``--sharpness-samples`` training samples."""
    every = config.get("track_sharpness")
    if not every:
        return None
    import jax

    from analysis import sharpness
    from fflab import train

    n = min(config.get("sharpness_samples") or 1000, train_data[0].shape[0])
    loss_fn = train.freeze(model.loss_fn) if model.stateful else model.loss_fn
    return sharpness.tracker(
        loss_fn, tuple(a[:n] for a in train_data), every=every, key=jax.random.key(config["seed"]),
        preconditioner="adam" if config["optimizer"] == "adam" else None,
    )


def _mesh(devices: int | None, batch_size: int):
    """The data-parallel mesh, or ``None`` for one device.

    ``devices=None`` takes the most local devices that divide the batch size; an explicit count must.
    """
    import jax

    available = jax.device_count()
    if devices is None:
        devices = max(k for k in range(1, available + 1) if batch_size % k == 0)
    elif devices > available:
        raise UsageError(f"--devices {devices}: only {available} {jax.devices()[0].platform} device(s) here")
    elif batch_size % devices:
        raise UsageError(f"--batch-size {batch_size} must be divisible by --devices {devices}")
    if devices == 1:
        return None
    import numpy as np

    return jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",))


def _seconds_per_epoch(seconds: list[float]) -> float | None:
    """Mean training time per epoch, leaving out the first epoch (it also compiles) when there are others."""
    steady = seconds[1:] or seconds
    return sum(steady) / len(steady) if steady else None


def _train_interrupted(args) -> str:
    ckpt = Path(args.out) / CHECKPOINT if args.out.strip() else None
    if ckpt is not None and ckpt.exists():
        return f"`fflab train ... --out {args.out} --resume` continues from the last checkpoint"
    return "no checkpoint was written yet, so there is nothing to resume: run the same command again"


# --- experiments (reached only through their lazy registry) ---


def _experiments():
    return importlib.import_module("experiments")


def _list(args) -> int:
    rows = _experiments().describe()
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def _run(args) -> int:
    _experiments().run(
        args.names,
        quick=args.quick,
        dataset=args.dataset,
        data_dir=args.data_dir,
        out_dir=args.out,
        resume=args.resume,
        interrupted=_check_interrupt,
    )
    return 0


def _report(args) -> int:
    path = _experiments().report(args.out)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None, *, interrupted=None) -> int:
    """The command line; returns the exit status (0 ok, 2 bad input, 130 ^C).

    Args:
        argv: the arguments (default: the process's).
        interrupted: a function that says whether a Ctrl-C came before this call (``fflab.__main__`` records
            those that arrive while the command line is imported).
    """
    global _interrupted
    _interrupted = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    if interrupted is not None and interrupted():  # after the handler is in place, so that none is lost
        _interrupted = True
    args = None
    try:
        args = build_parser().parse_args(argv)
        _check_interrupt()
        status = args.handler(args)
        _check_interrupt()
        return status
    except KeyboardInterrupt:
        hint = getattr(args, "interrupted", None)
        print(f"fflab: interrupted; {hint(args)}" if hint else "fflab: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"fflab: error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
