"""Data-parallel curvature (``hessian_operator(..., mesh=...)``) against the one-device path.

The main test process has already started JAX with one CPU device, so the sharded checks run in one
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``; it prints its measurements as JSON
and the tests below assert on them. The one-device operator is the oracle (it is checked against
``jax.hessian`` in ``test_curvature.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import analysis
from fflab.compilation import FAST_COMPILE_FLAGS
from tests.analysis import _models as M

ROOT = Path(__file__).resolve().parents[2]
DEVICES = 4

# Runs with 4 CPU devices. 120 digits split 30 per device; batch_size 7 gives 4 full chunks and a
# remainder of 2 on each device. Nearly all of its time is compilation, so it builds each program once:
# the float32 model and vectors are the float64 ones rounded on the host (no second set of random-number
# programs), and one compiled call of the one-device operator gives both the oracle products and the
# dense one-device matrix behind the eigsh, trace and Lanczos oracles.
SCRIPT = r"""
import json, re, sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.tree_util import Partial
import analysis
from analysis import krylov
from fflab import losses
from tests.analysis import _models as M

assert len(jax.devices()) == 4, jax.devices()
mesh = analysis.data_mesh(4)
out = {}
T0 = time.perf_counter()

def tick(what):
    print(f"{what} {time.perf_counter() - T0:.1f}s", file=sys.stderr)

def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

def num_all_reduce(compiled):
    # Instructions only ("all-reduce(" or the async "all-reduce-start("), not computation names.
    return len(re.findall(r"\ball-reduce(?:-start)?\(", compiled.as_text()))

def apply(op, vs):
    return jax.vmap(op)(vs)

def to_float32(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float32)), tree)

params64, x64, y = M.digits_mlp(120, sizes=(64, 6, 10))
rng = np.random.default_rng(0)
dim = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params64))
vs64 = rng.standard_normal((3, dim))
models = {
    "float64": (params64, x64, vs64),
    "float32": (*to_float32((params64, x64)), vs64.astype(np.float32)),
}
for dtype, (params, x, vs_host) in models.items():
    one, dim = analysis.hessian_operator(M.loss_fn, params, x, y)
    vs = jnp.asarray(vs_host)
    if dtype == "float64":
        # The oracle products and the dense one-device matrix (its rows are one(e_i)) in one call.
        rows = np.asarray(jax.vmap(one)(jnp.asarray(np.concatenate([vs_host, np.eye(dim)]))))
        want, H = rows[:3], rows[3:]
    else:
        want = jax.vmap(one)(vs)
    res = {}
    for name, kw in [("plain", {}), ("chunked", {"batch_size": 7})]:
        sharded, _ = analysis.hessian_operator(M.loss_fn, params, x, y, mesh=mesh, **kw)
        res[name + "_data_split"] = sharded.args[1].sharding == NamedSharding(mesh, P("data"))
        # Compiled once, both inspected and run; the operator's arrays are arguments, as in Lanczos.
        many = jax.jit(apply).lower(sharded, vs).compile()
        got = many(sharded, vs)
        res[name], res[name + "_dtype"] = rel(got, want), str(got.dtype)
        res[name + "_all_reduce_vmapped"] = num_all_reduce(many)
        if dtype == "float64":
            v = jnp.asarray(vs_host[0])
            single = jax.jit(lambda op, v: op(v)).lower(sharded, v).compile()
            res[name + "_single"] = rel(single(sharded, v), want[0])
            res[name + "_all_reduce"] = num_all_reduce(single)
    if dtype == "float64":
        chunked = sharded  # batch_size 7: the operator of the eigsh, trace and Lanczos checks below
        ggn_kw = dict(curvature="ggn", output_fn=M.output_fn, loss=losses.cross_entropy)
        ggn_one, _ = analysis.hessian_operator(M.loss_fn, params, x, y, **ggn_kw)
        ggn_sharded, _ = analysis.hessian_operator(M.loss_fn, params, x, y, mesh=mesh, batch_size=7, **ggn_kw)
        res["ggn"] = rel(jax.vmap(ggn_sharded)(vs), jax.vmap(ggn_one)(vs))
    out[dtype] = res
    tick(dtype)

sharded = chunked
key = jax.random.PRNGKey(1)
# The one-device oracles for eigsh and trace come from the dense matrix of one-device products (cheaper
# to compile than a second eigsh, which test_krylov checks against numpy anyway, or a second trace
# program over the product): numpy's top eigenvalue, and the same Hutchinson estimate (same key, so the
# same probes) on the dense matrix.
top = analysis.eigsh(sharded, dim, 1, key=key, tol=1e-10).eigenvalues[0]
out["top"] = [float(np.linalg.eigvalsh(H)[-1]), float(top)]
dense = Partial(jnp.matmul, jnp.asarray(H))
out["trace"] = [float(analysis.trace(op, dim, num_probes=8, key=key).estimate) for op in (dense, sharded)]
tick("eigsh trace")
# The whole compiled Lanczos loop holds one all-reduce (the product's, inside the while loop) and no
# host transfer; run the same executable and check the Lanczos relation against the one-device matrix.
v0 = rng.standard_normal(dim)
v0 = jnp.asarray(v0 / np.linalg.norm(v0))
compiled = krylov._lanczos_jit.lower(sharded, v0, key, 12).compile()
text = compiled.as_text()
out["lanczos_all_reduce"] = num_all_reduce(compiled)
out["lanczos_host_calls"] = len(re.findall(r"custom-call|outfeed|infeed|send\(|recv\(", text))
got = compiled(sharded, v0, key)
Q, T = np.asarray(got.basis), np.diag(got.alphas) + np.diag(got.betas, 1) + np.diag(got.betas, -1)
e_m = np.eye(12)[-1]
out["lanczos_relation"] = rel(Q @ H, T @ Q + np.outer(e_m, np.asarray(got.residual)))
out["lanczos_orthonormal"] = float(np.max(np.abs(Q @ Q.T - np.eye(12))))
tick("lanczos")

try:
    analysis.hessian_operator(M.loss_fn, params64, x64[:118], y[:118], mesh=mesh)
    out["indivisible"] = None
except ValueError as err:
    out["indivisible"] = str(err)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def sharded():
    env = {
        **os.environ,
        # fflab.compilation's fast-compile flags (the tests' own) and the virtual devices. Optimisation level 0
        # applies to LLVM's code generation only: the optimised HLO, whose all-reduces and host calls are
        # counted, is the same (checked by diffing compiled.as_text()).
        "XLA_FLAGS": " ".join([f"--xla_force_host_platform_device_count={DEVICES}", *FAST_COMPILE_FLAGS]),
        "JAX_ENABLE_X64": "1",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize(("dtype", "tol"), [("float64", 1e-12), ("float32", 1e-5)])
def test_sharded_hvp_equals_one_device(sharded, dtype, tol):
    res = sharded[dtype]
    for name in ("plain", "chunked"):
        assert res[name] < tol
        assert res[name + "_dtype"] == dtype
        assert res[name + "_data_split"] is True
        if dtype == "float64":
            assert res[name + "_single"] < tol
    if dtype == "float64":
        assert res["ggn"] < tol


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_all_reduce_per_product(sharded, dtype):
    # Also under vmap (several vectors, as in spectral_density and trace): still one all-reduce.
    for name in ("plain", "chunked"):
        assert sharded[dtype][name + "_all_reduce_vmapped"] == 1
        if dtype == "float64":
            assert sharded[dtype][name + "_all_reduce"] == 1


def test_lanczos_loop_stays_on_device(sharded):
    assert sharded["lanczos_all_reduce"] == 1
    assert sharded["lanczos_host_calls"] == 0
    # Q A = T Q + e_m r^T with the one-device matrix A, and Q orthonormal.
    assert sharded["lanczos_relation"] < 1e-10
    assert sharded["lanczos_orthonormal"] < 1e-12


def test_sharded_eigsh_and_trace_equal_one_device(sharded):
    one, four = sharded["top"]  # numpy.linalg.eigvalsh of the one-device matrix; sharded eigsh
    assert abs(four - one) <= 1e-8 * abs(one)
    one, four = sharded["trace"]
    assert abs(four - one) <= 1e-6 * abs(one)


def test_sample_count_must_divide_by_devices(sharded):
    msg = sharded["indivisible"]
    assert msg is not None and "118 samples" in msg and "4 devices" in msg and "116" in msg


# --------------------------------------------------------------------------------------------------
# in the main process (one device)


def test_one_device_mesh_is_the_plain_path():
    params, x, y = M.small_mlp()
    plain, dim = analysis.hessian_operator(M.loss_fn, params, x, y, batch_size=50)
    meshed, _ = analysis.hessian_operator(M.loss_fn, params, x, y, batch_size=50, mesh=analysis.data_mesh(1))
    assert meshed.func == plain.func  # the same compiled program: no shard_map with one device
    v = jax.random.normal(jax.random.PRNGKey(0), (dim,))
    np.testing.assert_array_equal(meshed(v), plain(v))


def test_bad_mesh_arguments():
    params, x, y = M.small_mlp()
    devices = jax.devices()
    with pytest.raises(ValueError, match="'data' axis"):
        analysis.hessian_operator(
            M.loss_fn, params, x, y, mesh=jax.sharding.Mesh(np.array(devices[:1]), ("batch",))
        )
    with pytest.raises(ValueError, match="jax.sharding.Mesh"):
        analysis.hessian_operator(M.loss_fn, params, x, y, mesh=devices)
    with pytest.raises(ValueError, match="leading sample axis"):
        analysis.hessian_operator(M.loss_fn, params, mesh=analysis.data_mesh(1))
    with pytest.raises(ValueError, match=f"asked for {len(devices) + 1} devices"):
        analysis.data_mesh(len(devices) + 1)
    mesh = analysis.data_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == len(devices)
