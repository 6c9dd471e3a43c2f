"""Where one training epoch's time goes: the kernels of ``benchmarks.train_throughput``'s fflab epoch.

The epoch is the benchmark's (Fashion-MNIST, 60,000 samples, batch 100, 784-225-144-10 relu MLP, momentum
SGD, float32, :func:`fflab.train.make_train_epoch`; ``record_grad_norm=False`` unless ``--grad-norm``). It is
run under :func:`jax.profiler.trace` and every XLA:CPU kernel's time is summed per epoch. Kernels whose HLO
is a ``dot``, or a fusion that computes one, are the matrix products; their summed time against the epoch's
matrix-product FLOPs (:func:`benchmarks.train_throughput.epoch_flops`) is their overall FLOP rate. The
rest is split into the other kernels and what is left of the traced epoch's wall time (the executor
between kernels). The untraced epoch's time is printed too, as the profiler can slow the epoch.

Run from the repository root::

    python -m benchmarks.train_profile              # the lean epoch, as the throughput target compares it
    python -m benchmarks.train_profile --grad-norm  # the library's default records
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks import train_throughput as tt
from fflab import data, presets, train

__all__ = ["kernel_times", "matmul_kernels", "main"]


def matmul_kernels(hlo_text: str) -> set[str]:
    """Names of the instructions of a compiled module's text that are, or are fusions computing, a ``dot``."""
    with_dot, current = set(), None
    for line in hlo_text.splitlines():
        header = re.match(r"^%(\S+) ", line)
        if header:  # a computation starts
            current = header.group(1)
        elif " dot(" in line and current is not None:
            with_dot.add(current)
    names = set()
    for line in hlo_text.splitlines():
        m = re.match(r"^\s+(?:ROOT )?%(\S+) = .*? (dot|fusion)\(", line)
        if not m:
            continue
        calls = re.search(r"calls=%([\w.\-]+)", line)
        if m.group(2) == "dot" or (calls and calls.group(1) in with_dot):
            names.add(m.group(1))
    return names


def kernel_times(trace_dir: str | Path) -> dict[str, tuple[float, int]]:
    """``{event name: (total microseconds, count)}`` of the complete events in a ``jax.profiler`` trace."""
    files = sorted(Path(trace_dir).rglob("*.trace.json.gz"))
    if not files:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    totals, counts = collections.Counter(), collections.Counter()
    for event in json.load(gzip.open(files[-1]))["traceEvents"]:
        if event.get("ph") == "X":
            totals[event["name"]] += event["dur"]
            counts[event["name"]] += 1
    return {name: (totals[name], counts[name]) for name in totals}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_profile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data-dir", help="folder holding the Fashion-MNIST IDX files")
    parser.add_argument(
        "--grad-norm", action="store_true", help="record per-step gradient norms (the library's default)"
    )
    parser.add_argument("--epochs", type=_positive, default=3, help="epochs traced (their median is used)")
    parser.add_argument("--top", type=_positive, default=20, help="kernels listed")
    args = parser.parse_args(argv)
    try:
        ds = data.load("fashion-mnist", data_dir=args.data_dir, download=False, progress=False)
    except data.DataError as err:
        print(f"error: Fashion-MNIST is needed: {err}", file=sys.stderr)
        return 2

    x, y = jnp.asarray(ds.x_train, jnp.float32), jnp.asarray(ds.y_train)
    _, optimizer, state, _ = tt.fflab_setup(jax.random.key(0))
    epoch = train.make_train_epoch(optimizer, loss_fn=presets.classifier("relu").loss_fn, batch_size=tt.BATCH_SIZE,
                                   record_grad_norm=args.grad_norm)
    steps = x.shape[0] // tt.BATCH_SIZE
    flops = tt.epoch_flops(tt.SIZES, steps * tt.BATCH_SIZE)
    matmuls = matmul_kernels(epoch.lower(state, x, y).compile().as_text())
    jax.block_until_ready(epoch(state, x, y))  # compile and warm up
    untraced = []
    for _ in range(args.epochs):
        tic = time.perf_counter()
        jax.block_until_ready(epoch(state, x, y))
        untraced.append(time.perf_counter() - tic)

    with tempfile.TemporaryDirectory() as trace_dir:
        walls = []
        with jax.profiler.trace(trace_dir):
            for _ in range(args.epochs):
                tic = time.perf_counter()
                jax.block_until_ready(epoch(state, x, y))
                walls.append(time.perf_counter() - tic)
        events = kernel_times(trace_dir)

    # Kernels are the events named after HLO instructions of the compiled module (dot.1, ynn_fusion.6, ...).
    hlo_names = {name for name in events if re.fullmatch(r"[\w.\-]+", name) and "::" not in name}
    per_epoch = {name: events[name][0] / 1e3 / args.epochs for name in hlo_names}  # ms
    mm_ms = sum(ms for name, ms in per_epoch.items() if name in matmuls)
    other_ms = sum(ms for name, ms in per_epoch.items() if name not in matmuls)
    wall_ms = 1e3 * statistics.median(walls)

    print(f"epoch: {steps} steps of {tt.BATCH_SIZE}, record_grad_norm={args.grad_norm}, "
          f"{flops / 1e9:.1f} GFLOP of matrix products")
    print(f"untraced epoch {1e3 * statistics.median(untraced):.0f} ms, traced epoch {wall_ms:.0f} ms "
          f"(medians of {args.epochs})")
    print(f"{'kernel':<34} {'ms/epoch':>9} {'per step':>9}  matmul")
    for name in sorted(per_epoch, key=per_epoch.get, reverse=True)[: args.top]:
        print(f"{name:<34} {per_epoch[name]:9.1f} {events[name][1] / args.epochs / steps:9.2f}  "
              f"{'yes' if name in matmuls else ''}")
    print(f"matrix-product kernels: {mm_ms:.0f} ms/epoch, {flops / (mm_ms / 1e3) / 1e9:.0f} GFLOP/s overall")
    print(f"other kernels: {other_ms:.0f} ms/epoch; the rest of the traced epoch (executor, waits): "
          f"{wall_ms - mm_ms - other_ms:.0f} ms/epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
