"""Curvature at scale: how one Hessian-vector product grows with samples and parameters, and the spectral
density of a million-parameter MLP over all 60,000 Fashion-MNIST training images.

Run from the repository root::

    python -m benchmarks.scale_bench                      # both parts, CPU-sized density (10 steps x 1 probe)
    python -m benchmarks.scale_bench --quick              # smoke run: small models, 2,000 samples
    python -m benchmarks.scale_bench --density-only --steps 90 --probes 10   # the full density (GPU)
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m benchmarks.scale_bench --devices 4 --quick

Part 1 times one product ``H v`` (median of ``--repeats``) of a relu MLP with softmax cross-entropy,
(a) against the number of samples at a fixed ~100k-parameter network, (b) against the number of parameters
(784-h-h-10 with h chosen for ~10k, ~100k, ~1M) at fixed samples, and fits the log-log slopes: the time of
one product should be linear in both (exponent ~1).

Part 2 runs :func:`analysis.spectral_density` of a 784-680-680-10 MLP (1,003,690 parameters) over all 60,000
training images, the product chunked with ``batch_size``; it reports compile and run seconds, the process's
peak RSS and XLA's memory analysis of one product and of the whole compiled density program. Nothing of
size ``P^2`` (4 TB in float32) is ever formed: the product keeps ``O(batch_size x width)`` activations and
Lanczos keeps ``num_probes x (num_steps + 1)`` vectors of ``P``. When ``steps x probes`` is below the
paper's 90 x 10, the time of 90 x 10 is extrapolated from the measured seconds per product and printed as
such.

The density loop runs with ``--devices`` devices (``analysis.data_mesh``); with several, the data are
sharded over them (``hessian_operator(..., mesh=...)``).
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import analysis
from benchmarks._timing import block, median_time, peak_rss_bytes, print_table
from fflab import data, losses, mlp
from fflab.files import write_json

FULL_STEPS, FULL_PROBES = 90, 10
DENSITY_HIDDEN = (680, 680)  # 784-680-680-10: 1,003,690 parameters
# 784-h-h-10 widths for ~10k, ~100k and ~1M parameters.
PARAM_HIDDEN = ((12, 12), (112, 112), (680, 680))
SAMPLE_HIDDEN = (112, 112)  # 101,706 parameters
SAMPLES = (1_000, 10_000, 60_000)
PARAM_SAMPLES = 10_000


def loss_fn(params, x, y):
    """Mean softmax cross-entropy of a relu MLP (the lecture's network family)."""
    return losses.cross_entropy(mlp.apply(params, x, activation="relu"), y)


def _mib(num_bytes: float) -> float:
    return num_bytes / 2**20


def _model(hidden, key=0):
    return mlp.init(jax.random.PRNGKey(key), [784, *hidden, 10], init="glorot_relu", dtype=jnp.float32)


@functools.cache
def _fashion_train():
    ds = data.load("fashion-mnist", download=False)
    return ds.x_train, ds.y_train


def _fashion(num_samples: int):
    x, y = _fashion_train()
    if not 1 <= num_samples <= x.shape[0]:
        raise ValueError(f"fashion-mnist has {x.shape[0]} training images, asked for {num_samples}")
    return jnp.asarray(x[:num_samples]), jnp.asarray(y[:num_samples])


def _operator(hidden, num_samples, batch_size, mesh):
    params = _model(hidden)
    x, y = _fashion(num_samples)
    chunk = batch_size if batch_size < num_samples else None
    matvec, dim = analysis.hessian_operator(loss_fn, params, x, y, batch_size=chunk, mesh=mesh)
    return matvec, dim


@jax.jit
def _apply(op, v):
    return op(v)


def _time_hvp(hidden, num_samples, batch_size, mesh, repeats):
    matvec, dim = _operator(hidden, num_samples, batch_size, mesh)
    v = jax.random.normal(jax.random.PRNGKey(1), (dim,), jnp.float32)
    seconds, times = median_time(lambda: _apply(matvec, v), repeats=repeats, warmup=1)
    return dim, seconds, times


def _slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def hvp_scaling(samples, param_hidden, sample_hidden, param_samples, batch_size, mesh, repeats):
    """Part 1: seconds of one HVP against samples and against parameters, with log-log slopes."""
    rows = []
    for n in samples:
        dim, sec, times = _time_hvp(sample_hidden, n, batch_size, mesh, repeats)
        rows.append(dict(sweep="samples", samples=n, params=dim, seconds=sec, runs=_runs(times)))
    for hidden in param_hidden:
        dim, sec, times = _time_hvp(hidden, param_samples, batch_size, mesh, repeats)
        width = "784-" + "-".join(map(str, hidden)) + "-10"
        rows.append(
            dict(sweep="params", net=width, samples=param_samples, params=dim, seconds=sec, runs=_runs(times))
        )
    by_n = [r for r in rows if r["sweep"] == "samples"]
    by_p = [r for r in rows if r["sweep"] == "params"]
    exponents = {
        "samples": _slope([r["samples"] for r in by_n], [r["seconds"] for r in by_n]),
        "params": _slope([r["params"] for r in by_p], [r["seconds"] for r in by_p]),
        # Between neighbouring settings: fixed overheads flatten the small end.
        "samples_steps": _steps([r["samples"] for r in by_n], [r["seconds"] for r in by_n]),
        "params_steps": _steps([r["params"] for r in by_p], [r["seconds"] for r in by_p]),
    }
    return rows, exponents


def _steps(xs, ys) -> list[float]:
    return [_slope(xs[i : i + 2], ys[i : i + 2]) for i in range(len(xs) - 1)]


def _runs(times):
    return " ".join(f"{t:.3g}" for t in times)


def density_at_scale(hidden, num_samples, batch_size, steps, probes, mesh, seed=0):
    """Part 2: the spectral density of a large MLP over many samples; seconds and memory."""
    matvec, dim = _operator(hidden, num_samples, batch_size, mesh)
    v = jax.random.normal(jax.random.PRNGKey(1), (dim,), jnp.float32)
    tic = time.perf_counter()
    one = jax.jit(lambda op, v: op(v)).lower(matvec, v).compile()
    compile_hvp = time.perf_counter() - tic
    hvp_memory = one.memory_analysis()
    hvp_seconds, _ = median_time(lambda: one(matvec, v), repeats=1, warmup=1)

    probes_ = jax.random.rademacher(jax.random.PRNGKey(seed), (probes, dim), jnp.float32)
    # The public call twice: the first compiles and runs, the second only runs (the compiled program is cached).
    tic = time.perf_counter()
    block(analysis.spectral_density(matvec, dim, num_steps=steps, probes=probes_))
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    density = block(analysis.spectral_density(matvec, dim, num_steps=steps, probes=probes_))
    run_seconds = time.perf_counter() - tic
    compile_density = max(first - run_seconds, 0.0)
    nodes, weights = density.nodes, density.weights
    per_product = run_seconds / (steps * probes)
    result = dict(
        params=dim,
        samples=num_samples,
        batch_size=batch_size,
        steps=steps,
        probes=probes,
        devices=1 if mesh is None else mesh.devices.size,
        hvp_compile_seconds=compile_hvp,
        hvp_seconds=hvp_seconds,
        density_compile_seconds=compile_density,
        density_seconds=run_seconds,
        seconds_per_product=per_product,
        extrapolated_full_seconds=per_product * FULL_STEPS * FULL_PROBES,
        peak_rss_mib=_mib(peak_rss_bytes()),
        device_peak_mib=_device_peak_mib(),
        hvp_temp_mib=_mib(hvp_memory.temp_size_in_bytes) if hvp_memory else float("nan"),
        hvp_argument_mib=_mib(hvp_memory.argument_size_in_bytes) if hvp_memory else float("nan"),
        lanczos_basis_mib=_mib(probes * (steps + 1) * dim * 4),
        p_squared_mib=_mib(dim * dim * 4),
        min_node=float(jnp.min(nodes)),
        max_node=float(jnp.max(nodes)),
        weights_sum=float(jnp.mean(jnp.sum(weights, axis=1))),
    )
    return result, (matvec, dim, probes_, nodes, weights)


def _device_peak_mib() -> float:
    # GPU/TPU runtimes report their allocator's peak; the CPU client reports nothing (None).
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return _mib(peak) if peak is not None else float("nan")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small models and sample counts")
    p.add_argument("--density-only", action="store_true", help="skip the HVP scaling sweep")
    p.add_argument("--scaling-only", action="store_true", help="skip the large density")
    p.add_argument(
        "--steps", type=int, help=f"Lanczos steps of the density (10 on CPU, {FULL_STEPS} on GPU/TPU)"
    )
    p.add_argument("--probes", type=int, help=f"probes of the density (1 on CPU, {FULL_PROBES} on GPU/TPU)")
    p.add_argument("--samples", type=int, help="training images in the density (60000)")
    p.add_argument("--batch-size", type=int, default=6000, help="samples per chunk of the product (6000)")
    p.add_argument("--devices", type=int, help="devices of the data mesh (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per HVP setting (3)")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    accelerator = jax.default_backend() != "cpu"
    mesh = analysis.data_mesh(args.devices)
    mesh = mesh if mesh.devices.size > 1 else None
    if args.quick:
        samples, param_hidden, sample_hidden, param_samples = (
            (500, 1000, 2000),
            ((8,), (32,), (128,)),
            (32,),
            1000,
        )
        density_hidden, num_samples, batch_size = (64, 64), 2000, min(args.batch_size, 1000)
        steps, probes = 6, 2
    else:
        samples, param_hidden, sample_hidden, param_samples = (
            SAMPLES,
            PARAM_HIDDEN,
            SAMPLE_HIDDEN,
            PARAM_SAMPLES,
        )
        density_hidden, num_samples, batch_size = DENSITY_HIDDEN, 60_000, args.batch_size
        steps, probes = (FULL_STEPS, FULL_PROBES) if accelerator else (10, 1)
    steps = args.steps if args.steps is not None else steps
    probes = args.probes if args.probes is not None else probes
    num_samples = args.samples if args.samples is not None else num_samples

    print(
        f"# {platform.node()} jax {jax.__version__} devices {jax.devices()} mesh {mesh and dict(mesh.shape)}"
    )
    out = {"argv": sys.argv[1:], "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
    if not args.density_only:
        rows, exponents = hvp_scaling(
            samples, param_hidden, sample_hidden, param_samples, batch_size, mesh, args.repeats
        )
        print(
            f"\n## one HVP, median of {args.repeats} "
            f"(float32, relu MLP, cross-entropy, batch_size {batch_size})"
        )
        print_table(rows, ["sweep", "net", "samples", "params", "seconds", "runs"])
        print(
            f"\nlog-log exponent of HVP time: samples {exponents['samples']:.2f}, "
            f"params {exponents['params']:.2f} (least-squares fit over all points; target ~1 for both)"
        )
        print(
            "between neighbouring settings: samples "
            + ", ".join(f"{e:.2f}" for e in exponents["samples_steps"])
            + "; params "
            + ", ".join(f"{e:.2f}" for e in exponents["params_steps"])
        )
        out.update(hvp_rows=rows, exponents=exponents)
    if not args.scaling_only:
        res, _ = density_at_scale(density_hidden, num_samples, batch_size, steps, probes, mesh)
        full = steps * probes == FULL_STEPS * FULL_PROBES
        print(
            f"\n## spectral density, {res['params']:,} params, {res['samples']:,} samples, "
            f"{steps} steps x {probes} probes, batch_size {batch_size}, {res['devices']} device(s)"
        )
        rows = [
            ("compile one HVP (s)", res["hvp_compile_seconds"]),
            ("one HVP (s)", res["hvp_seconds"]),
            ("compile density (s)", res["density_compile_seconds"]),
            (f"density run, {steps}x{probes} (s)", res["density_seconds"]),
            ("seconds per product in the density", res["seconds_per_product"]),
            (
                f"{FULL_STEPS}x{FULL_PROBES} density (s)" + ("" if full else ", EXTRAPOLATED"),
                res["density_seconds"] if full else res["extrapolated_full_seconds"],
            ),
            ("process peak RSS (MiB)", res["peak_rss_mib"]),
            ("device 0 peak memory in use (MiB; nan on CPU)", res["device_peak_mib"]),
            ("XLA temp of one HVP (MiB)", res["hvp_temp_mib"]),
            ("XLA arguments of one HVP (MiB)", res["hvp_argument_mib"]),
            ("Lanczos vectors probes x (steps+1) x P (MiB)", res["lanczos_basis_mib"]),
            ("P^2 float32, never formed (MiB)", res["p_squared_mib"]),
            ("Ritz values min / max", f"{res['min_node']:.4g} / {res['max_node']:.4g}"),
        ]
        print_table([{"quantity": k, "value": v} for k, v in rows], ["quantity", "value"])
        out["density"] = res
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
