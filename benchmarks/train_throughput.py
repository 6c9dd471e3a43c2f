"""Training throughput on the CPU: one Fashion-MNIST epoch of fflab against the same loop in PyTorch.

The problem is the lecture's: 60,000 samples, batch 100 (600 steps), a 784-225-144-10 relu MLP, softmax
cross-entropy, momentum SGD (learning rate 0.1, momentum 0.9), float32.

- fflab: the library path, :func:`fflab.classifier` (the MLP preset's loss), :func:`fflab.train.make_optimizer`,
  :func:`fflab.train.init_state` and :func:`fflab.train.make_train_epoch` (one jitted ``lax.scan`` over the
  600 steps, shuffling on device). The first call compiles; it is timed separately and then epochs are timed.
- ``v0``: the epoch as the library built it before training took any ``loss_fn`` (the MLP and its
  cross-entropy wired in; :func:`make_candidate_epoch` with its defaults): the generic epoch must stay within
  5% of it.
- PyTorch: the idiomatic eager loop a PyTorch user writes (``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU``,
  ``F.cross_entropy``, ``torch.optim.SGD(momentum=0.9)``, ``torch.randperm`` per epoch, tensors in memory),
  started from the same initial weights, with the threads of XLA (all CPUs by default). Extra rows: the same
  loop with one thread, and with ``torch.compile`` on the model and the optimiser step (one thread).
- Reference FLOP rate: a jitted float32 square matmul; the largest rate over a few sizes (256 to 2048 by
  default) is used, so the fraction is conservative.

FLOPs counted per epoch are the matrix products that training must do, per sample: the forward
``2 n_in n_out`` per layer, the weight gradient ``2 n_in n_out`` per layer, and the back-propagated gradient
``2 n_in n_out`` per layer except the first (nobody needs the gradient with respect to the pixels):
908,640 per sample, 54.5 GFLOP per epoch. Biases, activations, the loss and the update are left out
(< 1%). The "6 x weights x samples" rule of thumb would count 75.7 GFLOP; it is printed for reference.

Every contender runs in each of ``--repeats`` rounds, in turn, so a change of machine load hits them all
alike (fflab's rows ``--jax-runs`` epochs each per round, interleaved, as they are cheap); each number is the
median over its runs. Next to wall seconds the table gives the process's CPU seconds (all threads): on a
machine shared with other work they measure the work done rather than the share of the cores obtained.

Rows labelled ``candidate:`` are not the library: they are the library's epoch with some of its per-step
work left out (named in the row, see :func:`make_candidate_epoch`), measured to size a possible change of
:mod:`fflab.train`.

Run from the repository root::

    python -m benchmarks.train_throughput                 # full: 60k samples, 3 rounds
    python -m benchmarks.train_throughput --samples 2000 --repeats 1 --no-torch-compile   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._timing import block, peak_rss_bytes, print_table
from fflab import data, mlp, presets, train
from fflab.files import write_json

__all__ = [
    "SIZES",
    "epoch_flops",
    "fflab_setup",
    "make_candidate_epoch",
    "make_matmul",
    "torch_epoch",
    "torch_model",
    "main",
]

SIZES = (784, 225, 144, 10)
LEARNING_RATE = 0.1
MOMENTUM = 0.9
BATCH_SIZE = 100
FFLAB_TARGET = 2.0  # fflab at least this many times faster than eager PyTorch
FRACTION_TARGET = 0.6  # fflab's FLOP rate at least this fraction of the matmul's
FFLAB = "fflab (make_train_epoch)"  # the library's default: records loss, gradient norm, learning rate
# What the PyTorch loop records (the loss; the learning rate is free): the same work as that loop.
FFLAB_LEAN = "fflab (record_grad_norm=False)"
V0 = "v0: the pre-loss_fn epoch (MLP wired in)"


# --- FLOP counting ---


def epoch_flops(sizes: Sequence[int], samples: int) -> int:
    """Matrix-product FLOPs of one training pass over ``samples`` samples (see the module docstring).

    Args:
        sizes: layer widths ``[n_in, h_1, ..., n_out]``.
        samples: samples processed (steps times batch size).

    Returns:
        ``samples * (2 sum_l n_l n_{l+1}  +  2 sum_l n_l n_{l+1}  +  2 sum_{l>1} n_l n_{l+1})``.
    """
    products = [2 * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    forward, weight_grads, input_grads = sum(products), sum(products), sum(products[1:])
    return int(samples) * (forward + weight_grads + input_grads)


def rule_of_thumb_flops(sizes: Sequence[int], samples: int) -> int:
    """``6 x weights x samples``, the usual estimate (it also counts the unneeded gradient of the input)."""
    return 6 * int(samples) * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


# --- fflab ---


def fflab_setup(
    key: jax.Array, sizes: Sequence[int] = SIZES, *, shuffle_seed: int = 1, batch_size: int = BATCH_SIZE
):
    """The library's objects for the benchmark: ``(params, optimizer, state, train_epoch)``, all float32."""
    model = presets.classifier("relu")
    params, _ = model.init(key, sizes, dtype=jnp.float32)
    optimizer = train.make_optimizer("momentum", LEARNING_RATE, momentum=MOMENTUM)
    state = train.init_state(params, optimizer, shuffle_seed)
    train_epoch = train.make_train_epoch(optimizer, loss_fn=model.loss_fn, batch_size=batch_size)
    return params, optimizer, state, train_epoch


def _cross_entropy_v0(logits, labels):
    """The mean cross-entropy as fflab.losses computed it for the v0 epoch (no label-range guard)."""
    log_probs = jax.nn.log_softmax(logits, axis=1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0])


def make_candidate_epoch(
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    grad_norm: bool = True,
    learning_rate: bool = True,
    pregather: bool = False,
) -> Callable[[train.TrainState, jax.Array, jax.Array], tuple[train.TrainState, tuple[jax.Array, ...]]]:
    """The v0 library epoch (plain relu MLP wired in, one device), optionally with some of its work left out.

    With the defaults it does what ``make_train_epoch`` did before it took a ``loss_fn``.

    Args:
        optimizer: the optax transformation of the state.
        batch_size: samples per step.
        grad_norm: record the per-step global gradient norm (``optax.tree.norm(grads)``), as the library does.
        learning_rate: record the per-step learning rate (:func:`fflab.train.learning_rate`), as the library
            does.
        pregather: gather the whole shuffled epoch once (``x[perm]``) and scan over its batches, instead of
            one ``jnp.take`` of ``batch_size`` rows per step inside the scan.

    Returns:
        ``epoch(state, x, y) -> (state, (losses, *records))``, same batch order and arithmetic as the library;
        ``records`` are the gradient norms and learning rates asked for, each ``(steps,)``.
    """
    grad_fn = jax.value_and_grad(lambda p, xb, yb: _cross_entropy_v0(mlp.apply(p, xb), yb))

    def update(params, opt_state, xb, yb):
        loss, grads = grad_fn(params, xb, yb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        out = [loss]
        if grad_norm:
            out.append(optax.tree.norm(grads).astype(loss.dtype))
        if learning_rate:
            out.append(train.learning_rate(opt_state).astype(loss.dtype))
        return params, opt_state, tuple(out)

    @jax.jit
    def epoch(state: train.TrainState, x: jax.Array, y: jax.Array):
        idx = data.batch_indices(jax.random.fold_in(state.key, state.epoch), x.shape[0], batch_size)
        if pregather:
            flat = idx.reshape(-1)
            xs = jnp.take(x, flat, axis=0).reshape(*idx.shape, x.shape[1])
            ys = jnp.take(y, flat, axis=0).reshape(idx.shape)

            def step(carry, batch):
                params, opt_state, out = update(*carry, *batch)
                return (params, opt_state), out

            scanned = (xs, ys)
        else:

            def step(carry, batch):
                params, opt_state, out = update(
                    *carry, jnp.take(x, batch, axis=0), jnp.take(y, batch, axis=0)
                )
                return (params, opt_state), out

            scanned = idx
        (params, opt_state), out = jax.lax.scan(step, (state.params, state.opt_state), scanned)
        new = state._replace(
            params=params, opt_state=opt_state, step=state.step + idx.shape[0], epoch=state.epoch + 1
        )
        return new, out

    return epoch


# --- PyTorch ---


def torch_model(params):
    """An ``nn.Sequential`` of ``Linear``/``ReLU`` layers holding a copy of fflab's ``params`` (float32)."""
    import torch

    layers = []
    for i, layer in enumerate(params):
        w, b = np.asarray(layer["W"], np.float32), np.asarray(layer["b"], np.float32)
        linear = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))  # torch keeps (n_out, n_in)
            linear.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(linear)
        if i < len(params) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_params(model) -> list[dict[str, np.ndarray]]:
    """The model's weights back in fflab's layout: ``[{"W": (n_in, n_out), "b": (n_out,)}, ...]``."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return [{"W": m.weight.detach().numpy().T.copy(), "b": m.bias.detach().numpy().copy()} for m in linears]


def torch_epoch(model, optimizer, x, y, batches, *, step_fn: Callable[[], Any] | None = None):
    """One epoch of the eager PyTorch loop over the index batches ``batches`` (``(steps, batch)`` int64).

    Args:
        model: the network (``model(x) -> logits``).
        optimizer: e.g. ``torch.optim.SGD(model.parameters(), lr, momentum=0.9)``.
        x, y: ``(n, d)`` float32 and ``(n,)`` int64 tensors.
        batches: the sample indices of each step, in order.
        step_fn: replaces ``optimizer.step`` (a compiled step); ``None`` for the plain one.

    Returns:
        ``(steps,)`` tensor of the mini-batch losses before each update, as :class:`fflab.train.EpochStats`.
    """
    import torch
    import torch.nn.functional as F

    step = step_fn or optimizer.step
    out = []
    for b in batches:
        xb, yb = x[b], y[b]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        step()
        out.append(loss.detach())
    return torch.stack(out)


def _torch_batches(n: int, batch_size: int):
    import torch

    steps = n // batch_size
    return torch.randperm(n)[: steps * batch_size].view(steps, batch_size)


# --- matmul reference ---


def make_matmul(n: int) -> Callable[[int], tuple[float, float]]:
    """``measure(repeats) -> (GFLOP/s, GFLOP per CPU-second)`` of a jitted float32 ``(n, n) @ (n, n)``.

    Both are medians over ``repeats`` calls; the CPU seconds are this process's, all threads.
    """
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (n, n), jnp.float32)
    b = jax.random.normal(keys[1], (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    block(matmul(a, b))

    def measure(repeats: int) -> tuple[float, float]:
        wall, cpu = [], []
        for _ in range(repeats):
            tic, cpu_tic = time.perf_counter(), time.process_time()
            block(matmul(a, b))
            wall.append(time.perf_counter() - tic)
            cpu.append(time.process_time() - cpu_tic)
        return 2 * n**3 / statistics.median(wall) / 1e9, 2 * n**3 / statistics.median(cpu) / 1e9

    return measure


# --- the benchmark ---


class _Contender:
    """A named epoch runner: ``warmup()`` once (compiles), then ``run()`` per round; keeps every time."""

    def __init__(self, name: str, warmup: Callable[[], Any], run: Callable[[], Any], threads: str):
        self.name, self.warmup_fn, self.run_fn, self.threads = name, warmup, run, threads
        self.first_seconds: float | None = None
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # CPU seconds of this process (all threads): less hit by load
        self.last: Any = None

    def warmup(self) -> None:
        tic = time.perf_counter()
        self.last = block(self.warmup_fn())
        self.first_seconds = time.perf_counter() - tic

    def run(self) -> None:
        tic, cpu = time.perf_counter(), time.process_time()
        self.last = block(self.run_fn())
        self.times.append(time.perf_counter() - tic)
        self.cpu_times.append(time.process_time() - cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _fflab_contender(name, epoch_fn, state, x, y):
    holder = {"state": state}

    def one():
        holder["state"], out = epoch_fn(holder["state"], x, y)
        return holder["state"], out

    return _Contender(name, one, one, "xla")


def _torch_contender(name, params, x, y, batch_size, *, threads: int, compiled: bool):
    import torch

    model = torch_model(params)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    step_fn = None
    if compiled:
        model = torch.compile(model)
        step_fn = torch.compile(optimizer.step)

    def run(steps: int | None = None):
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            batches = _torch_batches(x.shape[0], batch_size)
            return torch_epoch(model, optimizer, x, y, batches[:steps], step_fn=step_fn)
        finally:
            torch.set_num_threads(saved)

    # Eager PyTorch has nothing to compile: its warm-up is a few steps (allocator, thread pool). The compiled
    # one traces and compiles during its first steps, which the warm-up also covers.
    return _Contender(name, lambda: run(20), run, str(threads))


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_throughput",
        description="Seconds per Fashion-MNIST epoch: fflab against the same loop in PyTorch (CPU).",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; every number is their median (3)")
    p.add_argument(
        "--epochs-data",
        choices=("full", "small"),
        default="full",
        help="full: the 60,000 training samples; small: the first 6,000 (quick)",
    )
    p.add_argument("--samples", type=int, default=None, help="use the first N training samples (overrides)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for both libraries (default: each library's default, all CPUs); 1 also "
        "makes XLA single-threaded via XLA_FLAGS",
    )
    p.add_argument(
        "--matmul-sizes",
        type=int,
        nargs="+",
        default=[256, 512, 1024, 2048],
        help="square matmul sizes for the reference rate; the fastest is used (256 512 1024 2048)",
    )
    p.add_argument(
        "--jax-runs",
        type=int,
        default=3,
        help="epochs of each fflab row per round, interleaved (3): the candidates' gains are small against "
        "the noise of a loaded machine, and fflab's epochs are cheap",
    )
    p.add_argument("--no-candidates", action="store_true", help="skip the candidate rows")
    p.add_argument("--no-torch-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--no-torch-single", action="store_true", help="skip the one-thread eager PyTorch row")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--json", default=None, help="write the numbers to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.jax_runs < 1:
        p.error(f"--jax-runs must be >= 1, got {args.jax_runs}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.samples is not None and args.samples < BATCH_SIZE:
        p.error(f"--samples must be at least the batch size {BATCH_SIZE}, got {args.samples}")
    return args


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    cpus = _cpus()
    if args.threads == 1:
        # Read when the CPU backend starts, i.e. at the first array below, not at import.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    try:
        import torch
    except ImportError:
        torch = None
    threads = args.threads or (torch.get_num_threads() if torch is not None else cpus)
    xla_threads = 1 if args.threads == 1 else cpus
    if args.threads not in (None, 1, cpus):
        print(f"note: XLA cannot be limited to {args.threads} threads here; it uses all {cpus} CPUs")

    try:
        ds = data.load("fashion-mnist", data_dir=args.data_dir, download=False, progress=False)
    except data.DataError as err:
        print(f"error: Fashion-MNIST is needed: {err}", file=sys.stderr)
        return 2
    n = args.samples or (60_000 if args.epochs_data == "full" else 6_000)
    n = min(n, ds.x_train.shape[0])
    steps = n // BATCH_SIZE
    samples = steps * BATCH_SIZE
    flops = epoch_flops(SIZES, samples)

    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {cpus} CPUs")
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), XLA threads: {xla_threads} "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})"
    )
    if torch is not None:
        print(
            f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
            f"eager loop run with {threads}"
        )
    else:
        print("torch is not installed: the PyTorch rows are skipped")
    print(
        f"problem: {samples} samples, batch {BATCH_SIZE}, {steps} steps, sizes {'-'.join(map(str, SIZES))}, "
        f"momentum SGD lr {LEARNING_RATE} m {MOMENTUM}, float32"
    )
    print(
        f"FLOPs per epoch counted: {flops / 1e9:.2f} G (6 x weights x samples would be "
        f"{rule_of_thumb_flops(SIZES, samples) / 1e9:.2f} G)"
    )

    x_np, y_np = ds.x_train[:n], ds.y_train[:n]
    x, y = jnp.asarray(x_np, jnp.float32), jnp.asarray(y_np, jnp.int32)
    params, optimizer, state, train_epoch = fflab_setup(jax.random.key(0))

    lean_epoch = train.make_train_epoch(
        optimizer, loss_fn=presets.classifier("relu").loss_fn, batch_size=BATCH_SIZE, record_grad_norm=False
    )
    contenders = [
        _fflab_contender(FFLAB, train_epoch, state, x, y),
        _fflab_contender(FFLAB_LEAN, lean_epoch, state, x, y),
        _fflab_contender(V0, make_candidate_epoch(optimizer, batch_size=BATCH_SIZE), state, x, y),
    ]
    if not args.no_candidates:
        for label, options in (
            ("candidate: no learning-rate record", {"learning_rate": False}),
            ("candidate: loss record only", {"grad_norm": False, "learning_rate": False}),
            (
                "candidate: loss only + one gather per epoch",
                {"grad_norm": False, "learning_rate": False, "pregather": True},
            ),
        ):
            epoch = make_candidate_epoch(optimizer, batch_size=BATCH_SIZE, **options)
            contenders.append(_fflab_contender(label, epoch, state, x, y))
    torch_rows = []
    if torch is not None:
        xt, yt = (
            torch.from_numpy(np.ascontiguousarray(x_np, np.float32)),
            torch.from_numpy(y_np.astype(np.int64)),
        )
        torch_rows.append(
            _torch_contender("torch eager", params, xt, yt, BATCH_SIZE, threads=threads, compiled=False)
        )
        if threads != 1 and not args.no_torch_single:
            torch_rows.append(
                _torch_contender(
                    "torch eager, 1 thread", params, xt, yt, BATCH_SIZE, threads=1, compiled=False
                )
            )
        if not args.no_torch_compile:
            # One thread: that is where eager PyTorch is fastest under load (the two-thread OpenMP loops stall
            # while other processes hold the cores); this row shows the best PyTorch does here.
            torch_rows.append(
                _torch_contender("torch.compile", params, xt, yt, BATCH_SIZE, threads=1, compiled=True)
            )
    contenders += torch_rows

    failed = {}
    for c in list(contenders):
        try:
            c.warmup()
        except Exception as err:  # noqa: BLE001 - torch.compile may lack a compiler: report, do not crash
            if not c.name.startswith("torch.compile"):
                raise
            failed[c.name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            contenders.remove(c)
            print(f"{c.name} does not work here: {failed[c.name]}")
    matmuls = {size: make_matmul(size) for size in args.matmul_sizes}
    matmul_runs: dict[int, list[tuple[float, float]]] = {size: [] for size in matmuls}
    jax_rows = [c for c in contenders if c.threads == "xla"]
    for r in range(args.repeats):
        for _ in range(args.jax_runs):
            for c in jax_rows:
                c.run()
        for c in contenders:
            if c not in jax_rows:
                c.run()
        for size, measure in matmuls.items():
            matmul_runs[size].append(measure(3))
        print(
            f"round {r + 1}/{args.repeats}: " + ", ".join(f"{c.name} {c.times[-1]:.3f}s" for c in contenders),
            flush=True,
        )

    matmul = {size: statistics.median(r[0] for r in runs) for size, runs in matmul_runs.items()}
    matmul_cpu = {size: statistics.median(r[1] for r in runs) for size, runs in matmul_runs.items()}
    best_size = max(matmul, key=matmul.get)
    matmul_rate = matmul[best_size]
    matmul_cpu_rate = max(matmul_cpu.values())

    eager = next((c for c in contenders if c.name == "torch eager"), None)
    eagers = [c for c in contenders if c.name.startswith("torch eager")]
    fastest = min(eagers, key=lambda c: c.median) if eagers else None
    rows = []
    for c in contenders:
        rate = flops / c.median / 1e9
        rows.append(
            {
                "run": c.name,
                "threads": c.threads if c.threads != "xla" else str(xla_threads),
                "s/epoch": c.median,
                "runs": len(c.times),
                "cpu s/epoch": statistics.median(c.cpu_times),
                "GFLOP/cpu-s": flops / statistics.median(c.cpu_times) / 1e9,
                "first call s": c.first_seconds if c.threads == "xla" else "",
                "GFLOP/s": rate,
                "torch eager / this": eager.median / c.median if eager is not None else "",
                "of matmul": rate / matmul_rate,
            }
        )
    for size, rate in matmul.items():
        rows.append(
            {
                "run": f"jit matmul {size}x{size}" + (" (reference)" if size == best_size else ""),
                "threads": str(xla_threads),
                "s/epoch": "",
                "runs": len(matmul_runs[size]),
                "GFLOP/cpu-s": matmul_cpu[size],
                "GFLOP/s": rate,
                "of matmul": rate / matmul_rate,
            }
        )
    print()
    print_table(
        rows,
        [
            "run",
            "threads",
            "runs",
            "s/epoch",
            "cpu s/epoch",
            "first call s",
            "GFLOP/s",
            "GFLOP/cpu-s",
            "torch eager / this",
            "of matmul",
        ],
    )
    print()
    summary = [{"quantity": f"matmul GFLOP/s ({best_size}x{best_size})", "value": matmul_rate}]
    summary.append({"quantity": "fflab / v0 epoch time (generic loss_fn against the MLP wired in)",
                    "value": contenders[0].median / contenders[2].median})
    for fflab in contenders[:2]:
        summary += _summary(fflab, flops, eager, fastest, matmul_rate, matmul_cpu_rate)
    print_table(summary, ["quantity", "value"])
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load after: {load}; peak RSS {peak_rss_bytes() / 2**20:.0f} MiB")

    if args.json:
        write_json(
            args.json,
            {
                "config": {
                    **vars(args),
                    "samples": samples,
                    "steps": steps,
                    "sizes": SIZES,
                    "learning_rate": LEARNING_RATE,
                    "momentum": MOMENTUM,
                    "batch_size": BATCH_SIZE,
                    "xla_threads": xla_threads,
                    "torch_threads": threads,
                },
                "flops_per_epoch": flops,
                "rows": rows,
                "summary": {r["quantity"]: r["value"] for r in summary},
                "times": {c.name: c.times for c in contenders},
                "cpu_times": {c.name: c.cpu_times for c in contenders},
                "matmul_gflops_wall_cpu": {str(size): runs for size, runs in matmul_runs.items()},
                "failed": failed,
            },
        )
    return 0


def _summary(fflab, flops, eager, fastest, matmul_rate, matmul_cpu_rate) -> list[dict]:
    """The issue's two targets for one fflab row: speed against PyTorch, FLOP rate against a matmul."""
    tag = "fflab" if fflab.name == FFLAB else "fflab lean"
    rate = flops / fflab.median / 1e9
    cpu_rate = flops / statistics.median(fflab.cpu_times) / 1e9
    ratio = eager.median / fflab.median if eager is not None else None
    best_ratio = fastest.median / fflab.median if fastest is not None else None
    fraction = rate / matmul_rate

    def met(value, target):
        return "n/a (no torch)" if value is None else ("yes" if value >= target else "no")

    return [
        {"quantity": f"{fflab.name}: s/epoch (median)", "value": fflab.median},
        {"quantity": f"{tag}: ratio torch eager/fflab", "value": ratio if ratio is not None else "n/a"},
        {
            "quantity": f"{tag}: ratio fastest torch eager/fflab" + (f" ({fastest.name})" if fastest else ""),
            "value": best_ratio if best_ratio is not None else "n/a",
        },
        {"quantity": f"{tag}: GFLOP/s", "value": rate},
        {"quantity": f"{tag}: fraction of matmul rate", "value": fraction},
        {"quantity": f"{tag}: fraction in CPU time (less hit by load)", "value": cpu_rate / matmul_cpu_rate},
        {"quantity": f"{tag}: target >= {FFLAB_TARGET:g}x torch eager", "value": met(ratio, FFLAB_TARGET)},
        {
            "quantity": f"{tag}: target >= {FFLAB_TARGET:g}x fastest torch eager",
            "value": met(best_ratio, FFLAB_TARGET),
        },
        {
            "quantity": f"{tag}: target >= {FRACTION_TARGET:.0%} of matmul rate",
            "value": "yes" if fraction >= FRACTION_TARGET else "no",
        },
    ]


if __name__ == "__main__":
    sys.exit(main())
