"""Backpropagation as dynamic programming, against autodiff, finite differences and the sum over paths.

The lecture writes each gradient as a sum over the paths from a weight to the outputs, e.g.
``dC/dW1_kl = sum_j sum_i dC/dh3_i dh3_i/dh2_j dh2_j/dh1_k dh1_k/dW1_kl``, and asks how many paths there are
as a function of depth. Through hidden widths ``n_1 .. n_d`` an input reaches an output along
``n_1 * ... * n_d`` paths: exponential in depth. Backpropagation (Linnainmaa 1970; Rumelhart, Hinton &
Williams 1986) never enumerates them. It stores the forward pass and computes, layer by layer from the top,
``dC/dh_j^(l) = sum_i dC/dh_i^(l+1) dh_i^(l+1)/dh_j^(l)``, after which ``dC/dW^(l)`` is one outer product per
layer. Each step costs one matrix product, so the whole gradient costs about three forward passes: linear in
depth.

This module writes that reverse pass by hand (:func:`backward`), checks it against ``jax.grad`` and central
finite differences, checks the sum over explicitly enumerated paths (:func:`path_sum_jacobian`) against
``jax.jacobian``, and counts both costs against depth: paths exactly with Python integers, backprop's
multiply-adds analytically (:func:`backprop_macs`) and as XLA's own FLOP count of the compiled reverse pass.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments import _common
from fflab import init, losses, mlp

NAME = "backprop"
DESCRIPTION = "Hand-written backprop equals jax.grad; paths grow exponentially with depth, its cost linearly"
SLIDE = "Backpropagation: how many paths, for two hidden layers, as a function of depth?"

# f'(z) written with the stored output h = f(z): backprop keeps h from the forward pass, not z.
_DERIVATIVE_FROM_OUTPUT = {
    "relu": lambda h: (h > 0).astype(h.dtype),
    "tanh": lambda h: 1 - h**2,
    "sigmoid": lambda h: h * (1 - h),
    "identity": lambda h: jnp.ones_like(h),
}


@dataclass(frozen=True)
class Config:
    check_sizes: tuple = (6, 8, 7, 5, 4)  # the net whose gradients are checked
    check_batch: int = 9
    activations: tuple = ("relu", "tanh", "sigmoid")
    fd_coords: int = 60  # parameters checked by finite differences
    path_sizes: tuple = (3, 4, 5, 4, 2)  # the net whose paths are enumerated
    n_in: int = 784  # the lecture's MNIST net, for counting against depth
    width: int = 225
    n_out: int = 10
    depths: tuple = tuple(range(1, 21))  # numbers of hidden layers
    count_batch: int = 100
    timing_width: int = 3  # small enough that every path can be enumerated
    timing_depths: tuple = tuple(range(1, 11))
    repeats: int = 5
    seed: int = 0


# Every timing depth compiles its own reverse pass; four points show the path sum's exponential growth.
QUICK = Config(check_batch=5, fd_coords=30, depths=(1, 2, 3, 5, 8), timing_depths=(1, 3, 5, 7), repeats=3)
FULL = Config()


def forward(params, x: jax.Array, *, activation: str = "relu") -> list[jax.Array]:
    """The forward pass, keeping what backprop needs.

    Args:
        params: MLP layers ``[{"W": (n_in, n_out), "b": (n_out,)}, ...]``, ``L`` of them.
        x: inputs ``(batch, n_0)``.
        activation: hidden non-linearity (a name from :data:`fflab.mlp.ACTIVATIONS`).

    Returns:
        ``[h_0 = x, h_1, ..., h_{L-1}, z_L]``: the inputs, each hidden layer's activations and the logits.
    """
    f = mlp.activation_fn(activation)
    hs = [x]
    for layer in params[:-1]:
        hs.append(f(hs[-1] @ layer["W"] + layer["b"]))
    hs.append(hs[-1] @ params[-1]["W"] + params[-1]["b"])
    return hs


def backward(params, hs: Sequence[jax.Array], delta: jax.Array, *, activation: str = "relu"):
    """The reverse pass by hand: dynamic programming over layers from the output down.

    With ``delta_l = dC/dz_l`` (``z_l = h_{l-1} W_l + b_l``): ``dC/dW_l = h_{l-1}^T delta_l``,
    ``dC/db_l = sum_batch delta_l``, ``dC/dh_{l-1} = delta_l W_l^T`` (the slide's
    ``sum_i dC/dh_i^(l+1) dh_i^(l+1)/dh_j^(l)``) and ``delta_{l-1} = dC/dh_{l-1} * f'(z_{l-1})``.

    Args:
        params: MLP layers, ``L`` of them.
        hs: the stored forward pass from :func:`forward`.
        delta: ``dC/dz_L``, the cost's gradient with respect to the logits, ``(batch, n_L)``.
        activation: the hidden non-linearity the forward pass used.

    Returns:
        ``(grads, dC/dx)``: ``grads`` has the structure of ``params``; ``dC/dx`` has the shape of ``x``.
    """
    if activation not in _DERIVATIVE_FROM_OUTPUT:
        valid = ", ".join(_DERIVATIVE_FROM_OUTPUT)
        raise ValueError(f"unknown activation {activation!r}; valid names: {valid}")
    if delta.shape != hs[-1].shape:
        raise ValueError(f"delta must have the logits' shape {hs[-1].shape}, got {delta.shape}")
    fprime = _DERIVATIVE_FROM_OUTPUT[activation]
    grads = [None] * len(params)
    for i in range(len(params) - 1, -1, -1):  # params[i] is layer i + 1; hs[i] is its input
        grads[i] = {"W": hs[i].T @ delta, "b": jnp.sum(delta, axis=0)}
        g_h = delta @ params[i]["W"].T
        if i > 0:
            delta = g_h * fprime(hs[i])
    return grads, g_h


def cross_entropy_delta(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``dC/dz_L`` of the batch-mean softmax cross-entropy: ``(softmax(z) - onehot(y)) / batch``."""
    onehot = jax.nn.one_hot(labels, logits.shape[1], dtype=logits.dtype)
    return (jax.nn.softmax(logits, axis=1) - onehot) / logits.shape[0]


def grad(params, x: jax.Array, y: jax.Array, *, activation: str = "relu"):
    """Gradient of :func:`fflab.losses.cross_entropy` of :func:`fflab.mlp.apply` by :func:`backward`."""
    hs = forward(params, x, activation=activation)
    return backward(params, hs, cross_entropy_delta(hs[-1], y), activation=activation)[0]


def backprop_jacobian(params, x: jax.Array, *, activation: str = "relu") -> jax.Array:
    """``dz_L/dx`` of one input ``x: (n_0,)`` by one reverse pass per output: ``(n_L, n_0)``."""
    n_out = params[-1]["W"].shape[1]
    hs = forward(params, jnp.broadcast_to(x, (n_out, x.shape[0])), activation=activation)
    return backward(params, hs, jnp.eye(n_out, dtype=hs[-1].dtype), activation=activation)[1]


def path_sum_jacobian(params, x, *, activation: str = "relu") -> tuple[np.ndarray, int]:
    """``dz_L/dx`` of one input as the slide's explicit sum over every input-to-output path.

    ``dy_i/dx_l = sum over (l, k, j, ..., i) of W1_lk f'(z1_k) W2_kj f'(z2_j) ... WL_.i``: all paths are
    enumerated at once with numpy (memory grows with their number, so keep the net small).

    Args:
        params: MLP layers with widths ``n_0 .. n_L``.
        x: one input, ``(n_0,)``.
        activation: hidden non-linearity.

    Returns:
        ``(jacobian, paths)``: the ``(n_L, n_0)`` Jacobian in float64 and the number of paths summed.
    """
    hs = forward(params, jnp.asarray(x)[None, :], activation=activation)
    fprime = _DERIVATIVE_FROM_OUTPUT[activation]
    Ws = [np.asarray(layer["W"], np.float64) for layer in params]
    gates = [np.asarray(fprime(h)[0], np.float64) for h in hs[1:-1]]  # f'(z_l) of each hidden layer
    sizes = [Ws[0].shape[0]] + [W.shape[1] for W in Ws]
    idx = np.indices(sizes).reshape(len(sizes), -1)  # one column (i_0, ..., i_L) per path
    prod = np.ones(idx.shape[1])
    for i, W in enumerate(Ws):
        prod *= W[idx[i], idx[i + 1]]
        if i < len(gates):
            prod *= gates[i][idx[i + 1]]
    jac = np.zeros((sizes[-1], sizes[0]))
    np.add.at(jac, (idx[-1], idx[0]), prod)
    return jac, idx.shape[1]


def count_paths(sizes: Sequence[int]) -> int:
    """Number of paths from the inputs to the outputs of a dense net with widths ``sizes``: their product."""
    return math.prod(int(n) for n in sizes)


def backprop_macs(sizes: Sequence[int], batch: int) -> int:
    """Multiply-adds of the matrix products in one forward plus one reverse pass (parameter gradients only).

    Forward ``sum_l n_{l-1} n_l``, ``dC/dW`` the same again, and ``dC/dh`` for every layer but the first, per
    example. Element-wise work (``O(batch * sum_l n_l)``) is left out.
    """
    pairs = [int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return int(batch) * (3 * sum(pairs) - pairs[0])


def _numpy_net(rng: np.random.Generator, sizes, *, scheme: str, bias_std: float, dtype=None) -> list[dict]:
    """An MLP drawn with numpy: weights ``N(0, init.std(scheme)^2)``, biases ``N(0, bias_std^2)`` (zero, and
    not drawn, when ``bias_std`` is 0), layer by layer.

    The checks use non-zero biases so that bias gradients are tested too. The cost and timing nets only need
    the right shapes and a realistic scale: drawing them with ``jax.random`` would compile one sampler per
    layer shape, which costs more than everything they time.
    """
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        w = rng.standard_normal((a, b)) * init.std(scheme, a, b)
        bias = bias_std * rng.standard_normal(b) if bias_std else np.zeros(b)
        layers.append({"W": jnp.asarray(w, dtype), "b": jnp.asarray(bias, dtype)})
    return layers


def _random_net(rng: np.random.Generator, sizes) -> list[dict]:
    """Glorot-scaled float64 weights and non-zero biases, for the exactness checks."""
    return _numpy_net(rng, sizes, scheme="glorot", bias_std=0.1)


def _fd_steps(params, coords) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference steps along the given coordinates of the flattened parameters (float64).

    Returns:
        ``(eps, points)``: the step of each coordinate and the ``2 * len(coords)`` flattened parameter
        vectors ``flat + steps`` then ``flat - steps`` at which to evaluate the loss.
    """
    flat = _common.host_flat(params)
    # The central-difference optimum cbrt(machine eps), scaled with the parameter.
    eps = np.cbrt(np.finfo(np.float64).eps) * np.maximum(1.0, np.abs(flat[coords]))
    steps = np.zeros((len(coords), flat.size))
    steps[np.arange(len(coords)), coords] = eps
    return eps, np.concatenate([flat + steps, flat - steps])


def _check_values(inputs: dict) -> dict:
    """Everything :func:`_checks` compares, for every activation, computed in one jitted call.

    Args:
        inputs: ``{activation: (params, x, y, fd_points, net, x1)}``.

    Returns:
        ``{activation: {"mine", "jax_grad", "fd_values", "jax_jacobian", "backprop_jacobian"}}``: the
        hand-written gradient, ``jax.grad``, the loss at the finite-difference points, ``jax.jacobian`` and
        the backprop Jacobian. One program for all of it, not five per activation: compiling, not computing,
        is what these tiny nets cost.
    """
    out = {}
    for activation, (params, x, y, fd_points, net, x1) in inputs.items():
        unravel = ravel_pytree(params)[1]

        def loss(p, x=x, y=y, activation=activation):
            return losses.cross_entropy(mlp.apply(p, x, activation=activation), y)

        apply = functools.partial(mlp.apply, activation=activation)
        out[activation] = {
            "mine": grad(params, x, y, activation=activation),
            "jax_grad": jax.grad(loss)(params),
            "fd_values": jax.vmap(lambda f, loss=loss, unravel=unravel: loss(unravel(f)))(fd_points),
            "jax_jacobian": jax.jacobian(apply, argnums=1)(net, x1),
            "backprop_jacobian": backprop_jacobian(net, x1, activation=activation),
        }
    return out


def _max_relative_error(got, want) -> float:
    """``max |got - want| / max |want|`` on the host (float64)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _checks(config: Config) -> tuple[dict, dict]:
    rng = np.random.default_rng(config.seed)
    inputs, fd = {}, {}
    with jax.enable_x64(True):  # precision is the point of these comparisons
        for activation in config.activations:
            params = _random_net(rng, config.check_sizes)
            x = jnp.asarray(rng.standard_normal((config.check_batch, config.check_sizes[0])))
            y = jnp.asarray(rng.integers(0, config.check_sizes[-1], config.check_batch))
            num_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
            coords = rng.choice(num_params, config.fd_coords, replace=False)
            eps, fd_points = _fd_steps(params, coords)
            net = _random_net(rng, config.path_sizes)
            x1 = jnp.asarray(rng.standard_normal(config.path_sizes[0]))
            inputs[activation] = (params, x, y, fd_points, net, x1)
            fd[activation] = (coords, eps)
        out = jax.jit(_check_values)(inputs)
        grads, jacobians = {}, {}
        for activation, (_, _, _, _, net, x1) in inputs.items():
            o = out[activation]
            coords, eps = fd[activation]
            flat_mine = _common.host_flat(o["mine"])
            up, down = np.split(np.asarray(o["fd_values"]), 2)
            fd_grad = (up - down) / (2 * eps)
            grads[activation] = {
                "vs_jax_grad": _max_relative_error(flat_mine, _common.host_flat(o["jax_grad"])),
                "vs_finite_differences": float(np.max(np.abs(flat_mine[coords] - fd_grad))
                                               / np.max(np.abs(fd_grad))),
            }
            paths_jac, paths = path_sum_jacobian(net, x1, activation=activation)
            want = np.asarray(o["jax_jacobian"])
            jacobians[activation] = {
                "paths_enumerated": paths,
                "path_sum_vs_jax_jacobian": _max_relative_error(paths_jac, want),
                "backprop_vs_jax_jacobian": _max_relative_error(o["backprop_jacobian"], want),
            }
    return grads, jacobians


def _glorot_relu_net(rng: np.random.Generator, sizes, dtype) -> list[dict]:
    """:func:`fflab.mlp.init`'s default scheme (``glorot_relu``, zero biases) for the cost and timing nets."""
    return _numpy_net(rng, sizes, scheme="glorot_relu", bias_std=0.0, dtype=dtype)


def _median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm up (and compile)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def _xla_flops(compiled) -> float:
    """XLA's FLOP count of a compiled function; NaN where the backend gives no cost analysis."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) and cost else cost
    return float(cost.get("flops", math.nan)) if isinstance(cost, dict) else math.nan


def _costs_against_depth(config: Config) -> dict:
    rng = np.random.default_rng(config.seed + 1)
    dtype = jnp.zeros(()).dtype
    rows = {"depth": [], "log10_paths": [], "paths_ratio": [], "backprop_macs": [], "xla_flops": [],
            "backprop_seconds": []}
    for depth in config.depths:
        sizes = [config.n_in, *([config.width] * depth), config.n_out]
        params = _glorot_relu_net(rng, sizes, dtype)
        x = jnp.asarray(rng.standard_normal((config.count_batch, config.n_in)), dtype)
        y = jnp.arange(config.count_batch) % config.n_out
        compiled = jax.jit(lambda p, x, y: grad(p, x, y, activation="relu")).lower(params, x, y).compile()
        paths = count_paths(sizes)
        rows["depth"].append(depth)
        rows["log10_paths"].append(math.log10(paths))
        rows["paths_ratio"].append(paths // count_paths(sizes[:-2] + sizes[-1:]))  # one hidden layer fewer
        rows["backprop_macs"].append(backprop_macs(sizes, config.count_batch))
        rows["xla_flops"].append(_xla_flops(compiled))
        rows["backprop_seconds"].append(_median_seconds(compiled, params, x, y, repeats=config.repeats))
    return rows


def _timing_paths_vs_backprop(config: Config) -> dict:
    """Wall time of the path-sum Jacobian (numpy) and the backprop Jacobian (jitted) of one small input."""
    rng = np.random.default_rng(config.seed + 2)
    dtype = jnp.zeros(()).dtype
    rows = {"depth": [], "paths": [], "path_sum_seconds": [], "backprop_seconds": []}
    w = config.timing_width
    for depth in config.timing_depths:
        sizes = [w, *([w] * depth), 2]
        params = _glorot_relu_net(rng, sizes, dtype)
        x = jnp.ones((w,), dtype)
        jac = jax.jit(lambda p, v: backprop_jacobian(p, v, activation="relu"))
        rows["depth"].append(depth)
        rows["paths"].append(count_paths(sizes))
        rows["path_sum_seconds"].append(
            _median_seconds(lambda p, v: path_sum_jacobian(p, v)[0], params, x, repeats=config.repeats))
        rows["backprop_seconds"].append(_median_seconds(jac, params, x, repeats=config.repeats))
    return rows


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    grads, jacobians = _checks(config)
    costs = _costs_against_depth(config)
    timing = _timing_paths_vs_backprop(config)

    depth = np.asarray(costs["depth"], float)
    flops = np.asarray(costs["xla_flops"])
    macs = np.asarray(costs["backprop_macs"], float)
    fit = np.polyfit(depth, flops, 1)
    linear_residual = float(np.max(np.abs(np.polyval(fit, depth) - flops) / flops))
    flops_per_mac = flops / macs
    ratios = costs["paths_ratio"]
    expected_paths = [math.prod(config.path_sizes)] * len(config.activations)
    claims = [
        _common.claim("hand-written backprop equals jax.grad (max relative error, float64)",
                      {a: g["vs_jax_grad"] for a, g in grads.items()},
                      max(g["vs_jax_grad"] for g in grads.values()) < 1e-12),
        _common.claim(f"hand-written backprop equals central finite differences on {config.fd_coords} "
                      "random parameters (max relative error, float64)",
                      {a: g["vs_finite_differences"] for a, g in grads.items()},
                      max(g["vs_finite_differences"] for g in grads.values()) < 1e-7),
        _common.claim(f"the slide's sum over all {expected_paths[0]} enumerated paths of a "
                      f"{'-'.join(map(str, config.path_sizes))} net equals jax.jacobian (max relative error)",
                      {a: j["path_sum_vs_jax_jacobian"] for a, j in jacobians.items()},
                      max(j["path_sum_vs_jax_jacobian"] for j in jacobians.values()) < 1e-12
                      and [j["paths_enumerated"] for j in jacobians.values()] == expected_paths),
        _common.claim(f"paths grow exponentially: each extra hidden layer multiplies them by the width "
                      f"{config.width} (ratios, exact integers)", sorted(set(ratios)),
                      bool(ratios) and set(ratios) == {config.width}),
        _common.claim("backprop's cost grows linearly: XLA's FLOP count of the compiled reverse pass against "
                      "depth (max relative residual of a straight-line fit)", linear_residual,
                      linear_residual < 0.01),
        _common.claim("XLA counts 2 FLOPs per analytic multiply-add, plus element-wise work "
                      "(XLA flops / (2 x multiply-adds), min and max over depths)",
                      [float(flops_per_mac.min() / 2), float(flops_per_mac.max() / 2)],
                      1.0 <= flops_per_mac.min() / 2 and flops_per_mac.max() / 2 < 1.05),
    ]
    results = {"gradient_checks": grads, "path_checks": jacobians, "costs": costs, "timing": timing,
               "xla_flops_linear_fit": fit}
    notes = ("Depth is the number of hidden layers. Paths are counted from the inputs to the outputs "
             f"({config.n_in}-{config.width}-...-{config.n_out}); backprop's multiply-adds are those of the "
             f"matrix products of one forward and one reverse pass on a batch of {config.count_batch}. The "
             "timing panel compares the path sum (numpy, every path enumerated) with one jitted reverse pass "
             f"per output on a width-{config.timing_width} net; wall times depend on the machine.")
    payload = _common.save_results(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    c, t = payload["results"]["costs"], payload["results"]["timing"]
    batch = payload["config"]["count_batch"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    macs = np.asarray(c["backprop_macs"], float) / batch
    flops = np.asarray(c["xla_flops"]) / 2 / batch
    ax = axes[0]
    ax.plot(c["depth"], c["log10_paths"], "o-", label="input-to-output paths")
    ax.plot(c["depth"], np.log10(macs), "s-", label="backprop multiply-adds")
    ax.plot(c["depth"], np.log10(flops), "x--", label="XLA flops / 2")
    ax.set(title="paths vs backprop cost, per example", xlabel="hidden layers", ylabel="log10 count")
    ax.legend()
    ax = axes[1]
    ax.plot(c["depth"], macs / 1e6, "s-", color="C1", label="multiply-adds (analytic)")
    ax.plot(c["depth"], flops / 1e6, "x--", color="C2", label="XLA flops / 2")
    ax.set(title="backprop cost is linear in depth", xlabel="hidden layers", ylabel="millions per example",
           ylim=(0, None))
    ax.legend()
    ax = axes[2]
    ax.semilogy(t["depth"], t["path_sum_seconds"], "o-", label="sum over all paths (numpy)")
    ax.semilogy(t["depth"], t["backprop_seconds"], "s-", label="backprop, one pass per output (jit)")
    ax.set(title=f"time for dy/dx, width {payload['config']['timing_width']}", xlabel="hidden layers",
           ylabel="seconds")
    ax.legend()
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
