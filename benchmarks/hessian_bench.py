"""Curvature tools against jax.hessian, PyTorch, PyHessian and matfree, on the same model, data and dtype.

Sections (``--only a,b,c,d``):

(a) dense Hessian of a 64-30-20-10 tanh MLP on 1,000 ``digits`` samples: :func:`analysis.hessian` vs
    ``jax.hessian`` vs ``torch.autograd.functional.hessian(..., vectorize=True)``, plus the compiled peak
    memory of each JAX program (XLA's memory analysis) against ``P^2 x itemsize``.
(b) top-5 Hessian eigenvalues of a trained 784-225-144-10 relu MLP (3 epochs of momentum SGD on
    Fashion-MNIST, trained at the start of the run, about 10 s) on 1,000 Fashion-MNIST images:
    :func:`analysis.eigsh` vs PyHessian's power iteration, both against a float64 reference from
    :func:`analysis.eigsh` at ``tol=1e-8``.
(c) stochastic Lanczos quadrature, 90 steps x 10 probes, on the operator of (b):
    :func:`analysis.spectral_density` vs matfree's ``decomp.tridiag_sym`` (full re-orthogonalisation) on the
    same probes; PyHessian's ``density()`` with its removed ``torch.eig`` replaced by ``torch.linalg.eigh``.
(d) one Hessian-vector product over one gradient, jitted, on both models.

Every competitor in a section gets the same weights and data (JAX arrays copied into torch tensors) and the
same dtype; the torch model computes the identical function, checked by comparing losses before timing.
Times are medians of ``--repeats`` runs after one untimed warm-up (compilation) run.

Run from the repository root: ``python -m benchmarks.hessian_bench [--only a,b] [--repeats 3]
[--dtype float64|float32] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

import analysis  # noqa: E402
from benchmarks._timing import block, median_time, peak_rss_bytes, print_table  # noqa: E402
from fflab import data, losses, mlp, train  # noqa: E402
from fflab.files import write_json  # noqa: E402

SECTIONS = ("a", "b", "c", "d")
DTYPES = ("float64", "float32")
# Per-section dtype unless --dtype is given: float64, except (b) in float32, the dtype the Fashion-MNIST
# weights were trained in and PyHessian's native one. (c) on the large model: pass --dtype float32.
DEFAULT_DTYPES = {"a": "float64", "b": "float32", "c": "float64", "d": "float64"}
SMALL_SIZES = (64, 30, 20, 10)
LARGE_SIZES = (784, 225, 144, 10)
RESIDUAL_TARGET = 1e-3


# --------------------------------------------------------------------------------------------------
# models (module-level losses: analysis takes loss_fn as a static argument)


def tanh_loss(params, x, y):
    """Mean softmax cross-entropy of a tanh MLP."""
    return losses.cross_entropy(mlp.apply(params, x, activation="tanh"), y)


def relu_loss(params, x, y):
    """Mean softmax cross-entropy of a relu MLP."""
    return losses.cross_entropy(mlp.apply(params, x, activation="relu"), y)


LOSSES = {"tanh": tanh_loss, "relu": relu_loss}


def digits_problem(num_samples: int = 1000, *, sizes=SMALL_SIZES, dtype="float64", seed: int = 0):
    """``(params, x, y)``: a random MLP with non-zero biases on the first ``num_samples`` digits."""
    ds = data.load("digits")
    key_w, key_b = jax.random.split(jax.random.key(seed))
    params = mlp.init(key_w, list(sizes), init="glorot_relu", dtype=dtype)
    params = [
        dict(layer, b=0.1 * jax.random.normal(k, layer["b"].shape, dtype))
        for layer, k in zip(params, jax.random.split(key_b, len(params)), strict=True)
    ]
    x = np.concatenate([ds.x_train, ds.x_test])[:num_samples]
    y = np.concatenate([ds.y_train, ds.y_test])[:num_samples]
    return params, jnp.asarray(x, dtype), jnp.asarray(y)


def fashion_problem(num_samples: int = 1000, *, dtype="float32"):
    """``(params, x, y)``: the 784-225-144-10 relu MLP after 3 epochs of momentum SGD (lr 0.05, batch 100, seed
    0) on Fashion-MNIST, and the first ``num_samples`` training images."""
    ds = data.load("fashion-mnist")
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), _fashion_trained())
    return params, jnp.asarray(ds.x_train[:num_samples], dtype), jnp.asarray(ds.y_train[:num_samples])


@functools.cache
def _fashion_trained():
    """The trained float32 weights of :func:`fashion_problem`, trained once per process (sections b-d share them)."""
    ds = data.load("fashion-mnist")
    opt = optax.sgd(0.05, momentum=0.9)
    params = mlp.init(jax.random.key(0), list(LARGE_SIZES), init="glorot_relu", dtype=jnp.float32)
    return train.fit(train.init_state(params, opt, key=1), opt, (ds.x_train, ds.y_train), loss_fn=relu_loss,
                     epochs=3, batch_size=100, progress=False).state.params


def cast(problem, dtype):
    params, x, y = problem
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), params), x.astype(dtype), y


# --------------------------------------------------------------------------------------------------
# torch: the same function on copies of the same arrays


def _torch():
    import torch

    return torch


def _torch_dtype(dtype):
    torch = _torch()
    return {"float64": torch.float64, "float32": torch.float32}[jnp.dtype(dtype).name]


def _torch_forward(leaves, x, activation):
    # leaves in ravel order: W_1, b_1, W_2, b_2, ... with W of shape (n_in, n_out), as fflab.mlp.apply.
    torch = _torch()
    act = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    h = x
    num_layers = len(leaves) // 2
    for i in range(num_layers):
        h = h @ leaves[2 * i] + leaves[2 * i + 1]
        if i < num_layers - 1:
            h = act(h)
    return h


def torch_data(x, y):
    """``x`` and ``y`` as torch tensors (copies; labels as int64, what ``cross_entropy`` expects)."""
    torch = _torch()
    return torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y).astype(np.int64))


def torch_flat_loss(params, x, y, activation: str):
    """``(f, theta)``: the torch loss as a function of one flat vector in ``ravel_pytree`` order."""
    torch = _torch()
    leaves = jax.tree_util.tree_leaves(params)
    shapes = [tuple(leaf.shape) for leaf in leaves]
    sizes = [math.prod(s) for s in shapes]
    tx, ty = torch_data(x, y)

    def f(theta):
        parts = [p.reshape(s) for p, s in zip(torch.split(theta, sizes), shapes, strict=True)]
        return torch.nn.functional.cross_entropy(_torch_forward(parts, tx, activation), ty)

    theta = torch.from_numpy(np.array(ravel_pytree(params)[0]))
    return f, theta


def torch_model(params, activation: str):
    """A ``torch.nn.Module`` holding copies of ``params`` (same layout, same ravel order)."""
    torch = _torch()

    class TorchMLP(torch.nn.Module):
        def __init__(self, arrays):
            super().__init__()
            self.leaves = torch.nn.ParameterList(
                [torch.nn.Parameter(torch.from_numpy(np.array(a))) for a in arrays]
            )

        def forward(self, x):
            return _torch_forward(list(self.leaves), x, activation)

    return TorchMLP(jax.tree_util.tree_leaves(params))


def torch_dense_hessian(params, x, y, activation: str):
    """``torch.autograd.functional.hessian(..., vectorize=True)`` of the flat loss, as a numpy array."""
    torch = _torch()
    f, theta = torch_flat_loss(params, x, y, activation)
    return torch.autograd.functional.hessian(f, theta, vectorize=True).numpy()


def loss_difference(params, x, y, activation: str) -> tuple[float, float]:
    """``(jax_loss, torch_loss - jax_loss)`` for the same weights and data."""
    torch = _torch()
    want = float(LOSSES[activation](params, x, y))
    model = torch_model(params, activation)
    tx, ty = torch_data(x, y)
    with torch.no_grad():
        got = float(torch.nn.functional.cross_entropy(model(tx), ty))
    return want, got - want


@contextlib.contextmanager
def torch_default_dtype(dtype):
    """PyHessian draws its random vectors in torch's default dtype: match the model's."""
    torch = _torch()
    old = torch.get_default_dtype()
    torch.set_default_dtype(_torch_dtype(dtype))
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def torch_eig_shim():
    """Stand in for ``torch.eig`` (removed from torch; PyHessian's ``density()`` calls it) on a symmetric
    matrix: ``torch.linalg.eigh``, with eigenvalues in the old ``(n, 2)`` real/imaginary layout."""
    torch = _torch()
    old = torch.eig

    def eig(matrix, eigenvectors=False):
        values, vectors = torch.linalg.eigh(matrix)
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    torch.eig = eig
    try:
        yield
    finally:
        torch.eig = old


def torch_eig_removed() -> str:
    """What calling ``torch.eig`` does in the installed torch."""
    torch = _torch()
    try:
        torch.eig(torch.eye(2))
    except (RuntimeError, AttributeError) as err:
        first_line = str(err).splitlines()[0]
        return f"torch {torch.__version__}: torch.eig raises {type(err).__name__} ({first_line})"
    return f"torch {torch.__version__}: torch.eig still works"


# --------------------------------------------------------------------------------------------------
# shared JAX pieces


def jax_dense_hessian(loss_fn, params, x, y):
    """``jax.hessian`` flattened to ``(P, P)`` in ravel order (the oracle for dense Hessians)."""
    blocks = _jax_hessian_jit(loss_fn, params, x, y)
    leaves = jax.tree_util.tree_leaves(params)
    flat = jax.tree_util.tree_leaves(blocks)
    n = len(leaves)
    return jnp.block(
        [[flat[i * n + j].reshape(leaves[i].size, leaves[j].size) for j in range(n)] for i in range(n)]
    )


@functools.partial(jax.jit, static_argnums=0)
def _jax_hessian_jit(loss_fn, params, x, y):
    return jax.hessian(loss_fn)(params, x, y)


@functools.partial(jax.jit, static_argnums=0)
def _grad_jit(loss_fn, params, x, y):
    return jax.grad(loss_fn)(params, x, y)


def _hessian_program(loss_fn, chunk_size):
    # A named function per setting, so that .lower() sees the public API and jit caches stay small.
    def program(params, x, y):
        return analysis.hessian(loss_fn, params, x, y, chunk_size=chunk_size)

    return program


def compiled_bytes(fn, *args) -> dict:
    """XLA's compiled memory analysis of ``jax.jit(fn)(*args)``: temporaries and outputs, in bytes."""
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    temp, out = int(stats.temp_size_in_bytes), int(stats.output_size_in_bytes)
    return {"temp": temp, "output": out, "total": temp + out, "arguments": int(stats.argument_size_in_bytes)}


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _sizes(params) -> str:
    return "-".join(str(n) for n in [params[0]["W"].shape[0], *(layer["W"].shape[1] for layer in params)])


def _mib(n: float) -> float:
    return n / 2**20


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _header(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


# --------------------------------------------------------------------------------------------------
# (a) dense Hessian


def section_a(*, repeats: int, dtype: str, num_samples: int = 1000, sizes=SMALL_SIZES, small_chunk: int = 4):
    """Dense Hessian: analysis.hessian vs jax.hessian vs torch, with compiled peak memory."""
    params, x, y = digits_problem(num_samples, sizes=sizes, dtype=dtype)
    dim = mlp.num_params(params)
    itemsize = jnp.dtype(dtype).itemsize
    _header(
        f"(a) dense Hessian: {'-'.join(map(str, sizes))} tanh MLP, {num_samples} digits, P = {dim}, {dtype}"
    )
    loss, diff = loss_difference(params, x, y, "tanh")
    print(f"loss (JAX) = {loss:.10g}; torch - JAX = {diff:.2e}")

    rss0 = peak_rss_bytes()
    ours_fn = _hessian_program(tanh_loss, None)
    ours_jit = jax.jit(ours_fn)
    tic = time.perf_counter()
    h_ours = block(ours_jit(params, x, y))
    first_ours = time.perf_counter() - tic
    rss_ours = peak_rss_bytes() - rss0
    tic = time.perf_counter()
    h_jax = block(jax_dense_hessian(tanh_loss, params, x, y))
    first_jax = time.perf_counter() - tic
    f, theta = torch_flat_loss(params, x, y, "tanh")
    torch = _torch()
    tic = time.perf_counter()
    h_torch = torch.autograd.functional.hessian(f, theta, vectorize=True).numpy()
    first_torch = time.perf_counter() - tic

    t_ours, _ = median_time(lambda: ours_jit(params, x, y), repeats=repeats)
    t_jax, _ = median_time(lambda: _jax_hessian_jit(tanh_loss, params, x, y), repeats=repeats)
    t_torch, _ = median_time(
        lambda: torch.autograd.functional.hessian(f, theta, vectorize=True), repeats=repeats, warmup=0
    )
    rows = [
        {
            "method": "analysis.hessian (chunk 16)",
            "median s": t_ours,
            "x ours": 1.0,
            "first call s": first_ours,
            "rel err vs jax.hessian": relative_error(h_ours, h_jax),
        },
        {
            "method": "jax.hessian (jit, pytree of blocks)",
            "median s": t_jax,
            "x ours": t_jax / t_ours,
            "first call s": first_jax,
            "rel err vs jax.hessian": 0.0,
        },
        {
            "method": "torch hessian(vectorize=True)",
            "median s": t_torch,
            "x ours": t_torch / t_ours,
            "first call s": first_torch,
            "rel err vs jax.hessian": relative_error(h_torch, h_jax),
        },
    ]
    print_table(rows, ["method", "median s", "x ours", "first call s", "rel err vs jax.hessian"])
    print(
        "(x ours = median time / analysis.hessian's median; rel err = max|H - H_jax| / max|H_jax|;"
        " first call includes compilation)"
    )

    p2 = dim * dim * itemsize
    mem_rows = []
    for name, fn in [
        ("analysis.hessian (chunk 16)", ours_fn),
        (f"analysis.hessian (chunk {small_chunk})", _hessian_program(tanh_loss, small_chunk)),
        ("jax.hessian", functools.partial(jax.hessian(tanh_loss))),
    ]:
        stats = compiled_bytes(fn, params, x, y)
        mem_rows.append(
            {
                "program": name,
                "temp MiB": _mib(stats["temp"]),
                "output MiB": _mib(stats["output"]),
                "temp+output MiB": _mib(stats["total"]),
                "/ P^2 itemsize": stats["total"] / p2,
            }
        )
    print(
        f"\ncompiled memory (XLA memory_analysis; arguments = data and weights excluded), "
        f"P^2 x itemsize = {_mib(p2):.1f} MiB:"
    )
    print_table(mem_rows, ["program", "temp MiB", "output MiB", "temp+output MiB", "/ P^2 itemsize"])
    print(
        f"process peak RSS grew by {_mib(rss_ours):.1f} MiB during analysis.hessian's first call "
        f"(compilation included; a lifetime peak, so only meaningful when (a) runs first)"
    )
    ratio = t_jax / t_ours
    mem_ratio = mem_rows[0]["/ P^2 itemsize"]
    print(f"target met (>= 2x faster than jax.hessian): {_yes(ratio >= 2)} ({ratio:.2f}x)")
    print(
        f"target met (peak <= 1.5 x P^2 x itemsize beyond the data): {_yes(mem_ratio <= 1.5)} "
        f"({mem_ratio:.2f}x with the default chunk)"
    )
    return {
        "dtype": dtype,
        "dim": dim,
        "loss": loss,
        "torch_loss_diff": diff,
        "timings": rows,
        "memory": mem_rows,
        "rss_delta_bytes": rss_ours,
        "speedup_vs_jax": ratio,
        "target_speed_met": ratio >= 2,
        "target_memory_met": mem_ratio <= 1.5,
    }


# --------------------------------------------------------------------------------------------------
# (b) top-5 eigenvalues


def residual_norms(matvec, vectors, values) -> np.ndarray:
    """``||A v - lambda v|| / |lambda|`` for unit columns of ``vectors (dim, k)``."""
    vectors = jnp.asarray(vectors)
    vectors = vectors / jnp.linalg.norm(vectors, axis=0)
    av = jax.vmap(matvec, in_axes=1, out_axes=1)(vectors)
    values = jnp.asarray(values, vectors.dtype)
    return np.asarray(jnp.linalg.norm(av - values * vectors, axis=0) / jnp.abs(values))


_MATVECS = [0]


def _tick(_v):
    _MATVECS[0] += 1


def _counted(op, v):
    # The callback takes v, so under vmap it runs once per batched product. The product refuses to be
    # differentiated, so analysis.krylov cannot linearise it (which would run the callback once, in the
    # hoisted part): every product then runs, and is counted, as a whole.
    @jax.custom_jvp
    def apply(v):
        jax.debug.callback(_tick, v)
        return op(v)

    @apply.defjvp
    def _no_jvp(primals, tangents):
        raise TypeError("the counting operator is not differentiable")

    return apply(v)


def count_matvecs(fn, op) -> int:
    """How many times ``fn(counted_op)`` applies the operator (a host callback per product; not timed)."""
    _MATVECS[0] = 0
    block(fn(jax.tree_util.Partial(_counted, op)))
    jax.effects_barrier()
    return _MATVECS[0]


@contextlib.contextmanager
def count_pyhessian_hvps():
    """Count PyHessian's Hessian-vector products (its module-level ``hessian_vector_product``)."""
    import importlib

    module = importlib.import_module("pyhessian.hessian")  # the module; `pyhessian.hessian` is the class

    original, counter = module.hessian_vector_product, [0]

    def counted(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    module.hessian_vector_product = counted
    try:
        yield counter
    finally:
        module.hessian_vector_product = original


def pyhessian_eigenvalues(model, x, y, *, dtype, top_n: int = 5, seed: int = 0, **options):
    """PyHessian's top eigenpairs: ``(values, vectors (dim, top_n) as numpy)``."""
    torch = _torch()
    from pyhessian import hessian as pyhessian_hessian

    with torch_default_dtype(dtype):
        torch.manual_seed(seed)
        model.zero_grad()
        comp = pyhessian_hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        values, vectors = comp.eigenvalues(top_n=top_n, **options)
    flat = np.stack([torch.cat([t.reshape(-1) for t in v]).detach().numpy() for v in vectors], axis=1)
    return np.asarray(values), flat


def section_b(
    *,
    repeats: int,
    dtype: str,
    problem=None,
    k: int = 5,
    tol: float = 1e-4,
    pyhessian_tols=(1e-5, 1e-6, 1e-7),
    pyhessian_max_iter: int = 1000,
):
    """Top-k eigenvalues: analysis.eigsh vs PyHessian, both against a tight float64 reference."""
    problem = fashion_problem(dtype="float32") if problem is None else problem
    params, x, y = cast(problem, dtype)
    ref_params, ref_x, ref_y = cast(problem, "float64")
    op, dim = analysis.hessian_operator(relu_loss, params, x, y)
    ref_op, _ = analysis.hessian_operator(relu_loss, ref_params, ref_x, ref_y)
    _header(f"(b) top-{k} eigenvalues: {_sizes(params)} relu MLP, {x.shape[0]} samples, P = {dim}, {dtype}")
    loss, diff = loss_difference(params, x, y, "relu")
    print(f"loss (JAX) = {loss:.10g}; torch - JAX = {diff:.2e}")

    tic = time.perf_counter()
    ref = analysis.eigsh(
        ref_op, dim, k, num_steps=4 * k + 20, tol=1e-8, max_restarts=2000, key=jax.random.key(1)
    )
    ref_values = np.asarray(ref.eigenvalues)
    ref_res = np.asarray(ref.residuals) / np.abs(ref_values)
    low = analysis.eigsh(ref_op, dim, 1, which="SA", tol=1e-6, key=jax.random.key(2)).eigenvalues
    print(
        f"reference (analysis.eigsh float64, tol 1e-8, {time.perf_counter() - tic:.1f} s): "
        f"{np.array2string(ref_values, precision=8)}, max relative residual {ref_res.max():.1e}; "
        f"most negative eigenvalue {float(low[0]):.4g}"
    )

    def ours(matvec=op):
        return analysis.eigsh(matvec, dim, k, tol=tol, key=jax.random.key(0))

    t_ours, r = _timed(ours, repeats=repeats)
    hvps_ours = count_matvecs(ours, op)
    rows = [
        _eig_row(
            f"analysis.eigsh (tol {tol:g})", t_ours, t_ours, r.eigenvalues, r.eigenvectors, ref_values, ref_op
        )
    ]
    rows[0]["runs"], rows[0]["HVPs"] = repeats, hvps_ours

    model = torch_model(params, "relu")
    tx, ty = torch_data(x, y)
    pyhessian_eigenvalues(model, tx, ty, dtype=dtype, top_n=1, maxIter=2)  # warm-up: torch's first-call costs
    settings = [("default: maxIter 100, tol 1e-3", {})]
    settings += [
        (f"maxIter {pyhessian_max_iter}, tol {t:g}", {"maxIter": pyhessian_max_iter, "tol": t})
        for t in pyhessian_tols
    ]
    met_setting = None
    for index, (name, options) in enumerate(settings):

        def run(o=options):
            with count_pyhessian_hvps() as counter:
                tic = time.perf_counter()
                result = pyhessian_eigenvalues(model, tx, ty, dtype=dtype, top_n=k, **o)
                seconds = time.perf_counter() - tic
            return seconds, result, counter[0]

        # Eager torch: nothing to compile, so no warm-up. A setting that misses the residual target is
        # run once (it only shows what the default or a looser tolerance gives); the default and the
        # setting that meets the target get the full `repeats`.
        first, (values, vectors), hvps = run()
        times = [first]
        row = _eig_row(f"PyHessian {name}", first, t_ours, values, vectors, ref_values, ref_op)
        if index == 0 or row["max rel residual"] < RESIDUAL_TARGET:
            times += [run()[0] for _ in range(repeats - 1)]
            row = _eig_row(
                f"PyHessian {name}", statistics.median(times), t_ours, values, vectors, ref_values, ref_op
            )
        row["runs"], row["HVPs"] = len(times), hvps
        rows.append(row)
        if row["max rel residual"] < RESIDUAL_TARGET:
            met_setting = row
            break
    print_table(
        rows,
        [
            "method",
            "runs",
            "median s",
            "x ours",
            "HVPs",
            "max rel eig err",
            "max rel residual",
            "eigenvalues",
        ],
    )
    print(
        "(x ours = median time / analysis.eigsh's; rel eig err = max_i |lambda_i - ref_i| / |ref_i| over "
        f"the top {k} sorted descending; rel residual = ||H v - lambda v|| / |lambda| with the float64 HVP)"
    )
    ours_row = rows[0]
    ok_res = ours_row["max rel residual"] < RESIDUAL_TARGET
    if met_setting is None:
        print(f"PyHessian reached no relative residual below {RESIDUAL_TARGET:g} in the settings tried")
        ratio = math.inf
        better = True
    else:
        ratio = met_setting["median s"] / t_ours
        better = ours_row["max rel eig err"] < met_setting["max rel eig err"]
    print(f"our residuals below {RESIDUAL_TARGET:g}: {_yes(ok_res)}")
    print(
        f"target met (>= 3x faster than PyHessian at residual < {RESIDUAL_TARGET:g}, and more accurate): "
        f"{_yes(ok_res and ratio >= 3 and better)} ({ratio:.1f}x; more accurate: {_yes(better)})"
    )
    return {
        "dtype": dtype,
        "dim": dim,
        "loss": loss,
        "torch_loss_diff": diff,
        "reference": ref_values.tolist(),
        "reference_residuals": ref_res.tolist(),
        "most_negative": float(low[0]),
        "rows": rows,
        "speedup": ratio,
        "target_met": bool(ok_res and ratio >= 3 and better),
    }


def _eig_row(name, seconds, t_ours, values, vectors, ref_values, ref_op):
    values = np.asarray(values, np.float64)
    order = np.argsort(-values)
    values, vectors = values[order], np.asarray(vectors, np.float64)[:, order]
    res = residual_norms(ref_op, vectors, values)
    err = np.abs(values - ref_values[: values.size]) / np.abs(ref_values[: values.size])
    return {
        "method": name,
        "median s": seconds,
        "x ours": seconds / t_ours,
        "max rel eig err": float(err.max()),
        "max rel residual": float(res.max()),
        "eigenvalues": np.array2string(values, precision=5),
        "rel residuals": res.tolist(),
        "rel eig errs": err.tolist(),
    }


# --------------------------------------------------------------------------------------------------
# (c) stochastic Lanczos quadrature


def matfree_slq(num_steps: int):
    """SLQ nodes and weights from matfree's ``decomp.tridiag_sym`` (full re-orthogonalisation), vmapped over
    probes, followed by ``eigh`` of each tridiagonal matrix: the same output as analysis.spectral_density."""
    from matfree import decomp

    tridiag = decomp.tridiag_sym(num_steps, reortho="full", materialize=True)

    def apply(v, op):
        return op(v)

    @jax.jit
    def run(op, probes):
        def one(v):
            t = tridiag(apply, v, op).J_small
            theta, vectors = jnp.linalg.eigh(t)
            return theta, jnp.square(vectors[0])

        return jax.vmap(one)(probes)

    return run


def _quadrature_moments(nodes, weights):
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    return np.sum(weights * nodes, axis=1), np.sum(weights * nodes**2, axis=1)


def pyhessian_density(model, x, y, *, dtype, num_steps: int, num_probes: int, seed: int = 0):
    """PyHessian's ``density(iter, n_v)`` with ``torch.eig`` shimmed: ``(nodes, weights)`` as arrays."""
    torch = _torch()
    from pyhessian import hessian as pyhessian_hessian

    with torch_default_dtype(dtype), torch_eig_shim():
        torch.manual_seed(seed)
        model.zero_grad()
        comp = pyhessian_hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        nodes, weights = comp.density(iter=num_steps, n_v=num_probes)
    return np.asarray(nodes), np.asarray(weights)


def _timed(fn, *, repeats: int, warmup: int = 1):
    """``(median seconds, result of the last run)``: no extra call just to get the result."""
    out = {}

    def run():
        out["result"] = fn()
        return out["result"]

    seconds, _ = median_time(run, repeats=repeats, warmup=warmup)
    return seconds, out["result"]


C_MODELS = ("small", "large")


def section_c(
    *,
    repeats: int,
    dtype: str,
    model: str = "small",
    problem=None,
    num_steps: int = 90,
    num_probes: int = 10,
    pyhessian: bool = True,
):
    """SLQ: analysis.spectral_density vs matfree (same probes, same matvec) vs PyHessian (shimmed).

    ``model="small"``: the tanh digits MLP of (a); ``"large"``: the trained Fashion-MNIST relu MLP of (b)
    (``problem`` overrides the data of either).
    """
    if model not in C_MODELS:
        raise ValueError(f"unknown model {model!r}; valid names: {', '.join(C_MODELS)}")
    if model == "small":
        activation, what = "tanh", f"{'-'.join(map(str, SMALL_SIZES))} tanh MLP, digits"
        problem = digits_problem(dtype=dtype) if problem is None else problem
    else:
        activation, what = "relu", f"{'-'.join(map(str, LARGE_SIZES))} relu MLP (trained), Fashion-MNIST"
        problem = fashion_problem(dtype="float32") if problem is None else problem
    loss_fn = LOSSES[activation]
    params, x, y = cast(problem, dtype)
    op, dim = analysis.hessian_operator(loss_fn, params, x, y)
    _header(
        f"(c) spectral density, {num_steps} steps x {num_probes} probes: {what}, {x.shape[0]} samples, "
        f"P = {dim}, {dtype}"
    )
    loss, diff = loss_difference(params, x, y, activation)
    print(f"loss (JAX) = {loss:.10g}; torch - JAX = {diff:.2e}")
    print(
        f"PyHessian's density() calls torch.eig: {torch_eig_removed()}; "
        "it is timed below with torch.eig replaced by torch.linalg.eigh (a shim in this script)"
    )
    key = jax.random.key(0)
    probes = jax.random.rademacher(key, (num_probes, dim), dtype)  # what spectral_density draws from key
    # Reference: the Hutchinson quadratic forms of the same probes, which the Gauss rule reproduces
    # exactly for moments 1 and 2 (degree < 2 * num_steps), in float64.
    ref_params, ref_x, ref_y = cast((params, x, y), "float64")
    ref_op, _ = analysis.hessian_operator(loss_fn, ref_params, ref_x, ref_y)
    unit = np.asarray(probes, np.float64) / math.sqrt(dim)
    av = np.asarray(jax.vmap(ref_op)(jnp.asarray(unit)))
    ref_m1, ref_m2 = np.sum(unit * av, axis=1), np.sum(av * av, axis=1)

    def ours():
        return analysis.spectral_density(op, dim, num_steps=num_steps, num_probes=num_probes, key=key)

    mf = matfree_slq(num_steps)
    unit_probes = probes / jnp.linalg.norm(probes, axis=1, keepdims=True)

    def theirs():
        return mf(op, unit_probes)

    t_ours, d_ours = _timed(ours, repeats=repeats)
    t_mf, d_mf = _timed(theirs, repeats=repeats)
    rows = [
        _slq_row("analysis.spectral_density", t_ours, t_ours, d_ours.nodes, d_ours.weights, ref_m1, ref_m2),
        _slq_row("matfree tridiag_sym(reortho='full') + eigh", t_mf, t_ours, *d_mf, ref_m1, ref_m2),
    ]
    lo, hi = float(np.min(d_ours.nodes)), float(np.max(d_ours.nodes))
    sigma = (hi - lo) / 100
    grid = jnp.asarray(np.linspace(lo - 5 * sigma, hi + 5 * sigma, 400))
    dens_ours = np.asarray(d_ours.density(grid, sigma))
    dens_mf = np.asarray(analysis.density.SpectralDensity(*d_mf).density(grid, sigma))
    rows[0]["density diff"] = 0.0
    rows[1]["density diff"] = float(np.max(np.abs(dens_mf - dens_ours)) / np.max(dens_ours))
    if pyhessian:
        model_t = torch_model(params, activation)
        tx, ty = torch_data(x, y)

        def ph():
            return pyhessian_density(model_t, tx, ty, dtype=dtype, num_steps=num_steps, num_probes=num_probes)

        pyhessian_eigenvalues(model_t, tx, ty, dtype=dtype, top_n=1, maxIter=2)  # warm-up, as in (b)
        t_ph, (nodes, weights) = _timed(ph, repeats=repeats, warmup=0)
        name = "PyHessian density() (torch.eig shimmed; own probes)"
        rows.append(_slq_row(name, t_ph, t_ours, nodes, weights, None, None))
    print_table(
        rows,
        [
            "method",
            "median s",
            "x ours",
            "moment-1 rel err",
            "moment-2 rel err",
            "mean moment 2",
            "density diff",
        ],
    )
    print(
        "(moment-k rel err: max over probes of |sum_i w_i theta_i^k - v^T H^k v| / |v^T H^k v| for the "
        "same unit probes v, in float64; mean moment 2 estimates tr(H^2) / P; density diff: "
        "max |phi - phi_ours| / max phi_ours with a Gaussian kernel of width (spectrum range) / 100. "
        "PyHessian draws its own probes, so it has no same-probe reference)"
    )
    ratio = t_mf / t_ours
    print(f"target met (faster than matfree): {_yes(ratio > 1)} ({ratio:.2f}x)")
    accuracy = slq_accuracy(dtype="float64") if model == "small" else None
    return {
        "accuracy": accuracy,
        "dtype": dtype,
        "model": model,
        "dim": dim,
        "rows": rows,
        "speedup_vs_matfree": ratio,
        "target_met": ratio > 1,
        "torch_eig": torch_eig_removed(),
    }


def adam_steps(loss_fn, params, x, y, *, steps: int = 200, learning_rate: float = 1e-2):
    """``params`` after ``steps`` full-batch Adam steps on ``loss_fn(params, x, y)`` (:func:`fflab.train.fit`
    with one mini-batch of all samples per epoch)."""
    import optax

    opt = optax.adam(learning_rate)
    state = train.init_state(params, opt, key=0)
    result = train.fit(state, opt, (x, y), loss_fn=loss_fn, epochs=steps, batch_size=len(x), eval_every=steps,
                       progress=False)
    return result.state.params


def slq_accuracy(*, dtype: str = "float64", num_probes: int = 20, num_deflate: int = 20, seeds=range(5)):
    """tr(H)/P and tr(H^2)/P from SLQ against the dense spectrum of the small model, plain and deflated.

    At the random initialisation of (a) and after 200 full-batch Adam steps (learning rate 0.01); the
    issue's targets are 2% and 5% with 20 probes.
    """
    params, x, y = digits_problem(dtype=dtype)
    rows = []
    for point, p in [("initialisation", params), ("200 Adam steps", adam_steps(tanh_loss, params, x, y))]:
        lam = np.linalg.eigvalsh(np.asarray(analysis.hessian(tanh_loss, p, x, y), np.float64))
        m1, m2 = np.mean(lam), np.mean(lam**2)
        op, dim = analysis.hessian_operator(tanh_loss, p, x, y)
        for k in (0, num_deflate):
            err1, err2, times = [], [], []
            for seed in seeds:
                tic = time.perf_counter()
                d = analysis.spectral_density(
                    op, dim, num_steps=90, num_probes=num_probes, key=jax.random.key(seed), num_deflate=k
                )
                got1, got2 = float(d.moment(1)), float(d.moment(2))
                times.append(time.perf_counter() - tic)
                err1.append(abs(got1 / m1 - 1))
                err2.append(abs(got2 / m2 - 1))
            rows.append(
                {
                    "point": point,
                    "deflated": k,
                    "max |err| tr/P": max(err1),
                    "max |err| tr(H^2)/P": max(err2),
                    "median s": statistics.median(times[1:] or times),
                    "tr/P": m1,
                }
            )
    print(f"SLQ moments against the dense spectrum, {num_probes} probes x 90 steps, seeds {list(seeds)}:")
    print_table(rows, ["point", "deflated", "tr/P", "max |err| tr/P", "max |err| tr(H^2)/P", "median s"])
    best = [r for r in rows if r["deflated"]]
    for r in best:
        ok1, ok2 = r["max |err| tr/P"] <= 0.02, r["max |err| tr(H^2)/P"] <= 0.05
        print(
            f"targets at {r['point']} with {num_deflate} deflated: tr/P within 2% {_yes(ok1)}, "
            f"tr(H^2)/P within 5% {_yes(ok2)}"
        )
    return rows


def _slq_row(name, seconds, t_ours, nodes, weights, ref_m1, ref_m2):
    row = {"method": name, "median s": seconds, "x ours": seconds / t_ours}
    m1, m2 = _quadrature_moments(nodes, weights)
    if ref_m1 is not None:
        row["moment-1 rel err"] = float(np.max(np.abs(m1 - ref_m1) / np.abs(ref_m1)))
        row["moment-2 rel err"] = float(np.max(np.abs(m2 - ref_m2) / np.abs(ref_m2)))
    else:
        row["moment-1 rel err"] = row["moment-2 rel err"] = "n/a"
    row["mean moment 1"], row["mean moment 2"] = float(np.mean(m1)), float(np.mean(m2))
    return row


# --------------------------------------------------------------------------------------------------
# (d) HVP over gradient


def hvp_over_grad(loss_fn, params, x, y, *, repeats: int) -> dict:
    """Median seconds of one jitted gradient, one analysis.hvp (pytree) and one operator matvec (flat).

    The three calls run round-robin, ``repeats`` rounds after a warm-up, so that a change of load on
    the shared machine hits all three alike (timing them one after another let drift decide the ratio).
    """
    op, dim = analysis.hessian_operator(loss_fn, params, x, y)
    v_flat = jax.random.normal(jax.random.key(3), (dim,), ravel_pytree(params)[0].dtype)
    v_tree = ravel_pytree(params)[1](v_flat)
    calls = {
        "grad": lambda: _grad_jit(loss_fn, params, x, y),
        "hvp": lambda: analysis.hvp(loss_fn, params, v_tree, x, y),
        "matvec": lambda: op(v_flat),
    }
    times = {name: [] for name in calls}
    for _ in range(3):
        for fn in calls.values():
            block(fn())
    for _ in range(repeats):
        for name, fn in calls.items():
            tic = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - tic)
    t_grad, t_hvp, t_mv = (statistics.median(times[name]) for name in calls)
    return {
        "grad s": t_grad,
        "hvp s": t_hvp,
        "matvec s": t_mv,
        "hvp / grad": t_hvp / t_grad,
        "matvec / grad": t_mv / t_grad,
        "dim": dim,
    }


def section_d(*, repeats: int, dtype: str, problems=None):
    """One HVP against one gradient, on the small and the large model."""
    _header(f"(d) one HVP / one gradient, jitted, {dtype}")
    if problems is None:
        problems = {
            "64-30-20-10 tanh, 1000 digits": (tanh_loss, digits_problem(dtype=dtype)),
            "784-225-144-10 relu, 1000 Fashion-MNIST": (relu_loss, fashion_problem(dtype=dtype)),
        }
    # Each timing is a median of many interleaved calls (one call is milliseconds, below the noise).
    inner = max(repeats, 1) * 50
    rows = []
    for name, (loss_fn, (params, x, y)) in problems.items():
        rows.append({"model": name, **hvp_over_grad(loss_fn, params, x, y, repeats=inner)})
    print_table(rows, ["model", "dim", "grad s", "hvp s", "matvec s", "hvp / grad", "matvec / grad"])
    print(
        f"(medians of {inner} round-robin calls each; hvp = analysis.hvp on pytrees, "
        "matvec = analysis.hessian_operator's)"
    )
    worst = max(max(r["hvp / grad"], r["matvec / grad"]) for r in rows)
    print(f"target met (one HVP <= 2x one gradient): {_yes(worst <= 2)} (worst ratio {worst:.2f})")
    return {"dtype": dtype, "rows": rows, "worst_ratio": worst, "target_met": worst <= 2}


# --------------------------------------------------------------------------------------------------
# command line


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run, e.g. a,b (default all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help=f"one dtype for every section (default per section: {DEFAULT_DTYPES})",
    )
    parser.add_argument(
        "--pyhessian-tols",
        default="1e-5,1e-6,1e-7",
        help="(b): PyHessian tolerances tried after its default, in order, until its residuals meet it",
    )
    parser.add_argument(
        "--c-model",
        choices=C_MODELS,
        default="small",
        help="(c): the digits MLP of (a) (small, default) or the Fashion-MNIST MLP of (b) (large)",
    )
    parser.add_argument("--json", default=None, help="save the numbers to this JSON file")
    parser.add_argument(
        "--no-pyhessian-density", action="store_true", help="skip PyHessian's density() in (c)"
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad or not only:
        parser.error(f"--only takes letters from {', '.join(SECTIONS)}, got {args.only!r}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    dtypes = {s: args.dtype or DEFAULT_DTYPES[s] for s in SECTIONS}
    try:
        pyhessian_tols = tuple(float(t) for t in args.pyhessian_tols.split(",") if t.strip())
    except ValueError:
        parser.error(f"--pyhessian-tols takes comma-separated numbers, got {args.pyhessian_tols!r}")
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), repeats {args.repeats}, dtypes "
        f"{ {s: dtypes[s] for s in only} }, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"
    )
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results = {"argv": sys.argv[1:] if argv is None else list(argv), "dtypes": dtypes, "jax": jax.__version__}
    need_large = "b" in only or ("c" in only and args.c_model == "large")
    large = fashion_problem(dtype="float32") if need_large else None
    for s in only:
        tic = time.perf_counter()
        if s == "a":
            results["a"] = section_a(repeats=args.repeats, dtype=dtypes["a"])
        elif s == "b":
            results["b"] = section_b(
                repeats=args.repeats, dtype=dtypes["b"], problem=large, pyhessian_tols=pyhessian_tols
            )
        elif s == "c":
            results["c"] = section_c(
                model=args.c_model,
                repeats=args.repeats,
                dtype=dtypes["c"],
                problem=large if args.c_model == "large" else None,
                pyhessian=not args.no_pyhessian_density,
            )
        else:
            results["d"] = section_d(repeats=args.repeats, dtype=dtypes["d"])
        print(f"[section ({s}) took {time.perf_counter() - tic:.0f} s]", flush=True)
    results["peak_rss_bytes"] = peak_rss_bytes()
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
