"""Backpropagation as dynamic programming, against autodiff, finite differences and the sum over paths.

The lecture writes each gradient as a sum over the paths from a weight to the outputs and asks how many paths
there are as a function of depth: through hidden widths ``n_1 .. n_d`` an input reaches an output along
``n_1 * ... * n_d`` paths, exponentially many. Backpropagation (Linnainmaa 1970; Rumelhart, Hinton & Williams
1986) never enumerates them: it stores the forward pass and computes ``dC/dh^(l) = sum_i dC/dh_i^(l+1)
dh_i^(l+1)/dh^(l)`` layer by layer from the top, one matrix product each, so its cost is linear in depth.

:func:`backward` writes that reverse pass by hand; it is checked against ``jax.grad`` and finite differences,
and the explicit sum over every path (:func:`path_sum_jacobian`) against ``jax.jacobian``. Against depth we
count paths (exact integers), backprop's multiply-adds (:func:`backprop_macs`) and XLA's FLOPs of the compiled
reverse pass, and time both the path sum and backprop.
"""

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
from fflab import classifier, init, mlp

NAME = "backprop"
DESCRIPTION = "Hand-written backprop equals jax.grad; paths grow exponentially with depth, its cost linearly"
SLIDE = "Backpropagation: how many paths, for two hidden layers, as a function of depth?"
PAPERS = {"Linnainmaa 1970": "", "Rumelhart, Hinton & Williams 1986": "https://doi.org/10.1038/323533a0"}

# f'(z) written with the stored output h = f(z): backprop keeps h from the forward pass, not z.
_DERIVATIVE_FROM_OUTPUT = {"relu": lambda h: (h > 0).astype(h.dtype), "tanh": lambda h: 1 - h**2,
                           "sigmoid": lambda h: h * (1 - h), "identity": lambda h: jnp.ones_like(h)}


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
    """The forward pass keeping what backprop needs: ``[h_0 = x, h_1, ..., h_{L-1}, z_L]`` (inputs, every hidden
    layer's activations, logits) for MLP layers ``[{"W": (n_in, n_out), "b": (n_out,)}, ...]``."""
    f, hs = mlp.activation_fn(activation), [x]
    for layer in params[:-1]:
        hs.append(f(hs[-1] @ layer["W"] + layer["b"]))
    return hs + [hs[-1] @ params[-1]["W"] + params[-1]["b"]]


def backward(params, hs: Sequence[jax.Array], delta: jax.Array, *, activation: str = "relu"):
    """The reverse pass by hand: dynamic programming over the layers from the output down.

    With ``delta_l = dC/dz_l`` (``z_l = h_{l-1} W_l + b_l``): ``dC/dW_l = h_{l-1}^T delta_l``, ``dC/db_l = sum_batch
    delta_l``, ``dC/dh_{l-1} = delta_l W_l^T`` (the slide's ``sum_i dC/dh_i^(l+1) dh_i^(l+1)/dh_j^(l)``) and
    ``delta_{l-1} = dC/dh_{l-1} * f'(z_{l-1})``.

    Args:
        params: MLP layers, ``L`` of them; ``hs``: the stored forward pass (:func:`forward`).
        delta: ``dC/dz_L``, the cost's gradient with respect to the logits, ``(batch, n_L)``.
        activation: the hidden non-linearity of the forward pass.

    Returns:
        ``(grads, dC/dx)``: ``grads`` has the structure of ``params``, ``dC/dx`` the shape of ``x``.
    """
    if activation not in _DERIVATIVE_FROM_OUTPUT:
        raise ValueError(f"unknown activation {activation!r}; valid names: {', '.join(_DERIVATIVE_FROM_OUTPUT)}")
    if delta.shape != hs[-1].shape:
        raise ValueError(f"delta must have the logits' shape {hs[-1].shape}, got {delta.shape}")
    grads = [None] * len(params)
    for i in range(len(params) - 1, -1, -1):  # params[i] is layer i + 1; hs[i] is its input
        grads[i] = {"W": hs[i].T @ delta, "b": jnp.sum(delta, axis=0)}
        g_h = delta @ params[i]["W"].T
        if i > 0:
            delta = g_h * _DERIVATIVE_FROM_OUTPUT[activation](hs[i])
    return grads, g_h


def grad(params, x: jax.Array, y: jax.Array, *, activation: str = "relu"):
    """Gradient of the batch-mean softmax cross-entropy of the MLP by :func:`backward`; its ``dC/dz_L`` is
    ``(softmax(z) - onehot(y)) / batch``."""
    hs = forward(params, x, activation=activation)
    delta = (jax.nn.softmax(hs[-1], axis=1) - jax.nn.one_hot(y, hs[-1].shape[1], dtype=hs[-1].dtype)) / len(x)
    return backward(params, hs, delta, activation=activation)[0]


def backprop_jacobian(params, x: jax.Array, *, activation: str = "relu") -> jax.Array:
    """``dz_L/dx`` of one input ``x: (n_0,)`` by one reverse pass per output: ``(n_L, n_0)``."""
    n_out = params[-1]["W"].shape[1]
    hs = forward(params, jnp.broadcast_to(x, (n_out, x.shape[0])), activation=activation)
    return backward(params, hs, jnp.eye(n_out, dtype=hs[-1].dtype), activation=activation)[1]


def path_sum_jacobian(params, x, *, activation: str = "relu") -> tuple[np.ndarray, int]:
    """``dz_L/dx`` of one input ``x: (n_0,)`` as the slide's explicit sum over every input-to-output path.

    ``dy_i/dx_l = sum over paths (l, k, ..., i) of W1_lk f'(z1_k) W2_k. ... WL_.i``, every path enumerated at once
    with numpy (memory grows with their number: keep the net small). Returns the ``(n_L, n_0)`` Jacobian in
    float64 and the number of paths summed.
    """
    hs = forward(params, jnp.asarray(x)[None, :], activation=activation)
    gates = [np.asarray(_DERIVATIVE_FROM_OUTPUT[activation](h)[0], np.float64) for h in hs[1:-1]]  # f'(z_l)
    Ws = [np.asarray(layer["W"], np.float64) for layer in params]
    sizes = [Ws[0].shape[0]] + [W.shape[1] for W in Ws]
    idx = np.indices(sizes).reshape(len(sizes), -1)  # one column (i_0, ..., i_L) per path
    prod = np.ones(idx.shape[1])
    for i, W in enumerate(Ws):
        prod *= W[idx[i], idx[i + 1]] * (gates[i][idx[i + 1]] if i < len(gates) else 1.0)
    jac = np.zeros((sizes[-1], sizes[0]))
    np.add.at(jac, (idx[-1], idx[0]), prod)
    return jac, idx.shape[1]


def count_paths(sizes: Sequence[int]) -> int:
    """Number of paths from the inputs to the outputs of a dense net with widths ``sizes``: their product."""
    return math.prod(int(n) for n in sizes)


def backprop_macs(sizes: Sequence[int], batch: int) -> int:
    """Multiply-adds of the matrix products of one forward and one reverse pass (parameter gradients): per
    example, forward ``sum_l n_{l-1} n_l``, ``dC/dW`` the same again, ``dC/dh`` for every layer but the first."""
    pairs = [int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return int(batch) * (3 * sum(pairs) - pairs[0])


def growth_per_layer(depths, costs) -> float:
    """The factor by which ``costs`` grow per layer, ``exp`` of the slope of ``log(costs)`` fitted over the
    deeper half of ``depths``: at least ``width`` for an exponential cost, at most ``1 + 1/depth`` for a linear
    one."""
    half = len(depths) // 2
    return float(np.exp(np.polyfit(np.asarray(depths[half:], float), np.log(costs[half:]), 1)[0]))


def linear_residual(depths, costs) -> float:
    """Largest relative residual of a straight line fitted to ``costs`` against ``depths``."""
    costs = np.asarray(costs, float)
    return float(np.max(np.abs(np.polyval(np.polyfit(depths, costs, 1), depths) - costs) / costs))


def _net(rng: np.random.Generator, sizes, scheme: str, bias_std: float, dtype=None) -> list[dict]:
    """An MLP drawn with numpy (``jax.random`` would compile a sampler per layer shape, more than the timings
    cost): weights ``N(0, init.std(scheme)^2)``, biases ``N(0, bias_std^2)`` (not drawn when 0)."""
    return [{"W": jnp.asarray(rng.standard_normal((a, b)) * init.std(scheme, a, b), dtype),
             "b": jnp.asarray(bias_std * rng.standard_normal(b) if bias_std else np.zeros(b), dtype)}
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


@jax.jit
def _check_values(inputs: dict) -> dict:
    """For every activation, the hand-written gradient, ``jax.grad``, the loss at the finite-difference points,
    ``jax.jacobian`` and the backprop Jacobian: one compiled program (compiling, not computing, is the cost)."""
    out = {}
    for activation, (params, x, y, fd_points, net, x1) in inputs.items():
        loss, unravel = classifier(activation).loss_fn, ravel_pytree(params)[1]
        out[activation] = {
            "mine": grad(params, x, y, activation=activation), "jax_grad": jax.grad(loss)(params, x, y),
            "fd_values": jax.vmap(lambda f, loss=loss, unravel=unravel, x=x, y=y: loss(unravel(f), x, y))(fd_points),
            "jax_jacobian": jax.jacobian(functools.partial(mlp.apply, activation=activation), argnums=1)(net, x1),
            "backprop_jacobian": backprop_jacobian(net, x1, activation=activation)}
    return out


def _relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm up (and compile)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def main(config: Config, out_dir) -> dict:
    # 1. Exactness, in float64: hand-written backprop against jax.grad and central differences, the path sum and
    #    backprop's Jacobian against jax.jacobian. Non-zero biases, so their gradients are tested too.
    rng, inputs, fd = np.random.default_rng(config.seed), {}, {}
    with jax.enable_x64(True):
        for activation in config.activations:
            params = _net(rng, config.check_sizes, "glorot", 0.1)
            x = jnp.asarray(rng.standard_normal((config.check_batch, config.check_sizes[0])))
            y = jnp.asarray(rng.integers(0, config.check_sizes[-1], config.check_batch))
            flat = _common.host_flat(params)
            coords = rng.choice(flat.size, config.fd_coords, replace=False)
            eps = np.cbrt(np.finfo(np.float64).eps) * np.maximum(1.0, np.abs(flat[coords]))  # the central optimum
            steps = np.zeros((len(coords), flat.size))
            steps[np.arange(len(coords)), coords] = eps
            net = _net(rng, config.path_sizes, "glorot", 0.1)
            x1 = jnp.asarray(rng.standard_normal(config.path_sizes[0]))
            inputs[activation] = (params, x, y, np.concatenate([flat + steps, flat - steps]), net, x1)
            fd[activation] = (coords, eps)
        out = _check_values(inputs)
        grads, jacobians = {}, {}
        for activation, o in out.items():
            (coords, eps), (*_, net, x1) = fd[activation], inputs[activation]
            up, down = np.split(np.asarray(o["fd_values"]), 2)
            fd_grad, mine = (up - down) / (2 * eps), _common.host_flat(o["mine"])
            grads[activation] = {"vs_jax_grad": _relative_error(mine, _common.host_flat(o["jax_grad"])),
                                 "vs_finite_differences": _relative_error(mine[coords], fd_grad)}
            paths_jac, paths = path_sum_jacobian(net, x1, activation=activation)
            jacobians[activation] = {"paths_enumerated": paths,
                                     "path_sum_vs_jax_jacobian": _relative_error(paths_jac, o["jax_jacobian"]),
                                     "backprop_vs_jax_jacobian": _relative_error(o["backprop_jacobian"],
                                                                                 o["jax_jacobian"])}

    # 2. Costs against depth on the lecture's MNIST widths: paths, multiply-adds, XLA's FLOPs, backprop's time.
    rng, dtype = np.random.default_rng(config.seed + 1), jnp.zeros(()).dtype
    costs = {k: [] for k in ("depth", "log10_paths", "paths_ratio", "backprop_macs", "xla_flops", "backprop_seconds")}
    for depth in config.depths:
        sizes = [config.n_in, *([config.width] * depth), config.n_out]
        params = _net(rng, sizes, "glorot_relu", 0.0, dtype)
        x = jnp.asarray(rng.standard_normal((config.count_batch, config.n_in)), dtype)
        y = jnp.arange(config.count_batch) % config.n_out
        compiled = jax.jit(lambda p, x, y: grad(p, x, y)).lower(params, x, y).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost  # a list of one dict in older JAX
        costs["depth"].append(depth)
        costs["log10_paths"].append(math.log10(count_paths(sizes)))
        costs["paths_ratio"].append(count_paths(sizes) // count_paths(sizes[:-2] + sizes[-1:]))  # one layer fewer
        costs["backprop_macs"].append(backprop_macs(sizes, config.count_batch))
        costs["xla_flops"].append(float(cost.get("flops", math.nan)))
        costs["backprop_seconds"].append(_median_seconds(compiled, params, x, y, repeats=config.repeats))

    # 3. Time for dy/dx of one input: the sum over all paths against one reverse pass per output (jitted).
    rng, w = np.random.default_rng(config.seed + 2), config.timing_width
    timing = {k: [] for k in ("depth", "paths", "path_sum_seconds", "backprop_seconds")}
    for depth in config.timing_depths:
        params, x = _net(rng, [w, *([w] * depth), 2], "glorot_relu", 0.0, dtype), jnp.ones((w,), dtype)
        timing["depth"].append(depth)
        timing["paths"].append(count_paths([w, *([w] * depth), 2]))
        timing["path_sum_seconds"].append(_median_seconds(lambda p, v: path_sum_jacobian(p, v)[0], params, x,
                                                          repeats=config.repeats))
        timing["backprop_seconds"].append(_median_seconds(jax.jit(backprop_jacobian), params, x,
                                                          repeats=config.repeats))

    flops, macs = np.asarray(costs["xla_flops"]), np.asarray(costs["backprop_macs"], float)
    fit = np.polyfit(np.asarray(costs["depth"], float), flops, 1)
    residual, flops_per_mac, ratios = linear_residual(costs["depth"], flops), flops / macs / 2, costs["paths_ratio"]
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
                      "depth (max relative residual of a straight-line fit)", residual, residual < 0.01),
        _common.claim("XLA counts 2 FLOPs per analytic multiply-add, plus element-wise work "
                      "(XLA flops / (2 x multiply-adds), min and max over depths)",
                      [float(flops_per_mac.min()), float(flops_per_mac.max())],
                      1.0 <= flops_per_mac.min() and flops_per_mac.max() < 1.05),
    ]
    checks = []
    results = {"gradient_checks": grads, "path_checks": jacobians, "costs": costs, "timing": timing,
               "xla_flops_linear_fit": fit}
    notes = ("Depth is the number of hidden layers. Paths are counted from the inputs to the outputs "
             f"({config.n_in}-{config.width}-...-{config.n_out}); backprop's multiply-adds are those of the "
             f"matrix products of one forward and one reverse pass on a batch of {config.count_batch}. The "
             "timing panel compares the path sum (numpy, every path enumerated) with one jitted reverse pass "
             f"per output on a width-{config.timing_width} net; wall times depend on the machine.")
    payload = _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=notes)
    plot(payload, out_dir)
    return payload


def plot(payload: dict, out_dir) -> None:
    plt, c, t = _common.style(), payload["results"]["costs"], payload["results"]["timing"]
    batch = payload["config"]["count_batch"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    macs, flops = np.asarray(c["backprop_macs"], float) / batch, np.asarray(c["xla_flops"]) / 2 / batch
    axes[0].plot(c["depth"], c["log10_paths"], "o-", label="input-to-output paths")
    axes[0].plot(c["depth"], np.log10(macs), "s-", label="backprop multiply-adds")
    axes[0].plot(c["depth"], np.log10(flops), "x--", label="XLA flops / 2")
    axes[0].set(title="paths vs backprop cost, per example", xlabel="hidden layers", ylabel="log10 count")
    axes[1].plot(c["depth"], macs / 1e6, "s-", color="C1", label="multiply-adds (analytic)")
    axes[1].plot(c["depth"], flops / 1e6, "x--", color="C2", label="XLA flops / 2")
    axes[1].set(title="backprop cost is linear in depth", xlabel="hidden layers", ylabel="millions per example",
                ylim=(0, None))
    axes[2].semilogy(t["depth"], t["path_sum_seconds"], "o-", label="sum over all paths (numpy)")
    axes[2].semilogy(t["depth"], t["backprop_seconds"], "s-", label="backprop, one pass per output (jit)")
    axes[2].set(title=f"time for dy/dx, width {payload['config']['timing_width']}", xlabel="hidden layers",
                ylabel="seconds")
    for ax in axes:
        ax.legend()
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
