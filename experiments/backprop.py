"""Backpropagation as dynamic programming, against autodiff, finite differences and the sum over paths.

The lecture writes each gradient as a sum over paths and asks how many there are: ``n_1 ... n_d`` through hidden
widths ``n_l``, exponential in depth. Backprop never enumerates them: it computes ``dC/dh^(l)`` from ``dC/dh^(l+1)``,
one matrix product per layer, at a cost linear in depth. We count and time both against depth.
"""

import math
import timeit
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments import _common
from fflab import classifier, init, mlp, options

NAME = "backprop"
DESCRIPTION = "Hand-written backprop equals jax.grad; paths grow exponentially with depth, its cost linearly"
SLIDE = "Backpropagation: how many paths, for two hidden layers, as a function of depth?"
PAPERS = {"Linnainmaa 1970": "", "Rumelhart, Hinton & Williams 1986": "https://doi.org/10.1038/323533a0"}
GROWTH = 1.5  # per-layer growth of a cost that separates exponential (the width, 3 or more) from linear
GRADIENT_ERRORS = ("vs_jax_grad", "vs_finite_differences")  # relative errors, per activation
JACOBIAN_ERRORS = ("backprop_vs_jax_jacobian", "path_sum_vs_jax_jacobian")

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
    repeats: int = 10  # timings: the best of this many runs
    seed: int = 0


QUICK = Config(check_batch=5, fd_coords=30, depths=(1, 2, 3, 5, 8), timing_depths=(1, 4, 7, 10), repeats=5)
FULL = Config()


def forward(params, x: jax.Array, *, activation: str = "relu") -> list[jax.Array]:
    """What backprop stores of the forward pass: ``[x, h_1, ..., h_{L-1}, z_L]`` (:func:`fflab.mlp.forward`)."""
    pre, hidden = mlp.forward(params, x, activation=activation)
    return [x, *hidden, pre[-1]]


def backward(params, hs: list, delta: jax.Array, *, activation: str = "relu"):
    """The reverse pass by hand from ``delta = dC/dz_L`` and the stored forward pass ``hs``: with ``delta_l =
    dC/dz_l``, ``dC/dW_l = h_{l-1}^T delta_l``, ``dC/db_l = sum_batch delta_l``, ``dC/dh_{l-1} = delta_l W_l^T``
    (the slide's ``sum_i dC/dh_i^(l+1) dh_i^(l+1)/dh_j^(l)``), ``delta_{l-1} = dC/dh_{l-1} * f'(z_{l-1})``.
    Returns ``(grads like params, dC/dx)``."""
    options.check("activation", activation, _DERIVATIVE_FROM_OUTPUT)
    grads = [None] * len(params)
    for i in range(len(params) - 1, -1, -1):  # params[i] is layer i + 1; hs[i] is its input
        grads[i] = {"W": hs[i].T @ delta, "b": jnp.sum(delta, axis=0)}
        g_h = delta @ params[i]["W"].T
        if i > 0:
            delta = g_h * _DERIVATIVE_FROM_OUTPUT[activation](hs[i])
    return grads, g_h


def grad(params, x: jax.Array, y: jax.Array, *, activation: str = "relu"):
    """Gradient of the mean cross-entropy by :func:`backward`, from ``dC/dz_L = (softmax(z) - onehot(y)) / batch``."""
    hs = forward(params, x, activation=activation)
    delta = (jax.nn.softmax(hs[-1], axis=1) - jax.nn.one_hot(y, hs[-1].shape[1], dtype=hs[-1].dtype)) / len(x)
    return backward(params, hs, delta, activation=activation)[0]


def backprop_jacobian(params, x: jax.Array, *, activation: str = "relu") -> jax.Array:
    """``dz_L/dx`` of one input ``x: (n_0,)`` by one reverse pass per output: ``(n_L, n_0)``."""
    n_out = params[-1]["W"].shape[1]
    hs = forward(params, jnp.broadcast_to(x, (n_out, x.shape[0])), activation=activation)
    return backward(params, hs, jnp.eye(n_out, dtype=hs[-1].dtype), activation=activation)[1]


def path_sum_jacobian(params, x, *, activation: str = "relu") -> tuple[np.ndarray, int]:
    """``dz_L/dx`` of one input ``x: (n_0,)`` as the slide's sum over every path, ``dy_i/dx_l = sum over (l, k, ...,
    i) of W1_lk f'(z1_k) W2_k. ... WL_.i``, all enumerated with numpy: ``(jacobian (n_L, n_0), number of paths)``."""
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


def backprop_macs(sizes, batch: int) -> int:
    """Multiply-adds of one forward and reverse pass: ``sum n_{l-1} n_l`` each for ``z``, ``dC/dW``, ``dC/dh``."""
    pairs = [int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return int(batch) * (3 * sum(pairs) - pairs[0])


def growth_per_layer(depths, costs) -> float:
    """The factor by which ``costs`` grow per layer over the deeper half of ``depths`` (a log-linear fit): the
    width for a cost proportional to the paths, at most ``1 + 1/depth`` for a linear cost."""
    deep = slice(len(depths) // 2, None)
    return float(np.exp(np.polyfit(np.asarray(depths[deep], float), np.log(costs[deep]), 1)[0]))


def _net(rng: np.random.Generator, sizes, scheme: str, bias_std: float, dtype=None) -> list[dict]:
    """Weights ``N(0, init.std(scheme)^2)``, biases ``N(0, bias_std^2)`` (not drawn when 0), drawn with numpy."""
    return [{"W": jnp.asarray(rng.standard_normal((a, b)) * init.std(scheme, a, b), dtype),
             "b": jnp.asarray(bias_std * rng.standard_normal(b) if bias_std else np.zeros(b), dtype)}
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


@_common.small_jit
def _exactness(inputs: dict) -> dict:
    """Per activation, the relative errors of backprop and the path sum against oracles: one compiled program."""
    def _relative_error(got, want):
        return jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))

    out = {}
    for activation, (params, x, y, coords, net, x1, path_sum) in inputs.items():
        loss, (flat, unravel) = classifier(activation).loss_fn, ravel_pytree(params)
        mine = ravel_pytree(grad(params, x, y, activation=activation))[0]
        eps = jnp.cbrt(jnp.finfo(flat.dtype).eps) * jnp.maximum(1.0, jnp.abs(flat[coords]))  # the central optimum
        steps = jnp.zeros((len(coords), flat.size), flat.dtype).at[jnp.arange(len(coords)), coords].set(eps)
        at = jax.vmap(lambda s, loss=loss, unravel=unravel, flat=flat, x=x, y=y: loss(unravel(flat + s), x, y))
        jacobian = jax.jacobian(lambda v, net=net, f=activation: mlp.apply(net, v, activation=f))(x1)
        out[activation] = {
            "vs_jax_grad": _relative_error(mine, ravel_pytree(jax.grad(loss)(params, x, y))[0]),
            "vs_finite_differences": _relative_error(mine[coords], (at(steps) - at(-steps)) / (2 * eps)),
            "backprop_vs_jax_jacobian": _relative_error(backprop_jacobian(net, x1, activation=activation), jacobian),
            "path_sum_vs_jax_jacobian": _relative_error(path_sum, jacobian)}
    return out


def _seconds(repeats: int, calls) -> list[float]:
    """Wall seconds of each ``(fn, *args)`` in ``calls``, the best of ``repeats`` rounds over all of them, after a
    warm-up: other load only adds time, and a burst of it in one round does not hit one depth's runs only."""
    timers = [lambda fn=fn, args=args: jax.block_until_ready(fn(*args)) for fn, *args in calls]
    return np.min([[timeit.timeit(t, number=1) for t in timers] for _ in range(repeats + 1)][1:], axis=0).tolist()


def main(config: Config, out_dir) -> dict:
    # 1. Exactness in float64, with non-zero biases so that their gradients are tested too.
    rng, inputs = np.random.default_rng(config.seed), {}
    with jax.enable_x64(True):
        for activation in config.activations:
            params = _net(rng, config.check_sizes, "glorot", 0.1)
            x = jnp.asarray(rng.standard_normal((config.check_batch, config.check_sizes[0])))
            y = jnp.asarray(rng.integers(0, config.check_sizes[-1], config.check_batch))
            coords = rng.choice(_common.host_flat(params).size, config.fd_coords, replace=False)
            net, x1 = _net(rng, config.path_sizes, "glorot", 0.1), rng.standard_normal(config.path_sizes[0])
            path_sum, paths = path_sum_jacobian(net, x1, activation=activation)
            inputs[activation] = (params, x, y, coords, net, jnp.asarray(x1), path_sum)
        exact = jax.tree_util.tree_map(float, _exactness(inputs))

    # 2. Costs against depth on the lecture's MNIST widths: paths, multiply-adds, XLA's FLOPs, backprop's time.
    rng, dtype, rows, calls = np.random.default_rng(config.seed + 1), jnp.zeros(()).dtype, [], []
    for depth in config.depths:
        sizes = [config.n_in, *([config.width] * depth), config.n_out]
        params = _net(rng, sizes, "glorot_relu", 0.0, dtype)
        x = jnp.asarray(rng.standard_normal((config.count_batch, config.n_in)), dtype)
        y = jnp.arange(config.count_batch) % config.n_out
        calls.append((compiled := jax.jit(grad).lower(params, x, y).compile(), params, x, y))
        rows.append({"depth": depth, "log10_paths": math.log10(math.prod(sizes)),
                     "paths_ratio": math.prod(sizes) // math.prod(sizes[:-2] + sizes[-1:]),  # one layer fewer
                     "backprop_macs": backprop_macs(sizes, config.count_batch),
                     "xla_flops": float(compiled.cost_analysis().get("flops", math.nan))})
    costs = {k: [row[k] for row in rows] for k in rows[0]} | {"backprop_seconds": _seconds(config.repeats, calls)}

    # 3. Time for dy/dx of one input: the sum over all paths against one reverse pass per output (jitted).
    rng, w = np.random.default_rng(config.seed + 2), config.timing_width
    nets = [_net(rng, [w, *([w] * depth), 2], "glorot_relu", 0.0, dtype) for depth in config.timing_depths]
    timing = {"depth": list(config.timing_depths), **{f"{name}_seconds": _seconds(config.repeats, [
        (f, net, jnp.ones((w,), dtype)) for net in nets]) for name, f in (("path_sum", path_sum_jacobian),
                                                                          ("backprop", jax.jit(backprop_jacobian)))}}

    growth = {"path_sum": growth_per_layer(timing["depth"], timing["path_sum_seconds"]),
              "backprop": growth_per_layer(costs["depth"], costs["backprop_seconds"])}
    claims = [_common.claim(f"summing over all paths takes time exponential in depth: the path sum for dy/dx grows by "
                            f"more than {GROWTH}x per hidden layer", growth["path_sum"],
                            _common.above(growth["path_sum"], GROWTH)),
              _common.claim(f"backprop's time grows only linearly, by less than {GROWTH}x per hidden layer (the "
                            f"{config.n_in}-{config.width}-...-{config.n_out} net's gradient)", growth["backprop"],
                            _common.below(growth["backprop"], GROWTH))]
    worst = {k: max(e[k] for e in exact.values()) for k in next(iter(exact.values()))}  # over the activations
    depths, flops, macs = costs["depth"], np.asarray(costs["xla_flops"]), np.asarray(costs["backprop_macs"], float)
    residual = float(np.max(np.abs(np.polyval(np.polyfit(depths, flops, 1), depths) - flops) / flops))
    per_mac = [float(np.min(flops / macs / 2)), float(np.max(flops / macs / 2))]
    checks = [_common.check(f"hand-written backprop equals jax.grad (< 1e-12) and central differences on "
                            f"{config.fd_coords} parameters (< 1e-7; max relative errors, float64)",
                            {k: worst[k] for k in GRADIENT_ERRORS}, worst["vs_jax_grad"] < 1e-12
                            and worst["vs_finite_differences"] < 1e-7),
              _common.check(f"backprop's Jacobian and the slide's sum over all {paths} paths of a {config.path_sizes} "
                            "net equal jax.jacobian (< 1e-12)", {k: worst[k] for k in JACOBIAN_ERRORS},
                            max(worst[k] for k in JACOBIAN_ERRORS) < 1e-12 and paths == math.prod(config.path_sizes)),
              _common.check(f"each hidden layer multiplies the paths by the width {config.width} (exact integers)",
                            sorted(set(costs["paths_ratio"])), set(costs["paths_ratio"]) == {config.width}),
              _common.check("XLA's FLOPs of the compiled backprop are linear in depth (max relative residual < 0.01)",
                            residual, residual < 0.01),
              _common.check("XLA counts 2 FLOPs per analytic multiply-add plus element-wise work (flops / 2 / "
                            "multiply-adds in [1, 1.05), min and max)", per_mac, 1 <= per_mac[0] and per_mac[1] < 1.05)]
    results = {"exactness": exact, "costs": costs, "timing": timing, "growth_per_layer": growth}
    notes = ("Path counts and multiply-adds are exact, so they are checks; the claims time the two algorithms (wall "
             f"time, best of {config.repeats} runs), growth per layer fitted over the deeper half of the depths: "
             f"{growth['path_sum']:.2f}x for the path sum ({config.timing_width}x in the limit), "
             f"{growth['backprop']:.2f}x for backprop. Times depend on the machine and its load.")
    return _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=notes, plot=plot)


def plot(payload: dict, out_dir) -> None:
    plt, r, cfg = _common.style(), payload["results"], payload["config"]
    c, t, g = r["costs"], r["timing"], r["growth_per_layer"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    axes[0].plot(c["depth"], c["log10_paths"], "o-", label=f"input-to-output paths (x{cfg['width']} per layer)")
    axes[0].plot(c["depth"], np.log10(np.asarray(c["backprop_macs"]) / cfg["count_batch"]), "s-", label="backprop "
                 "multiply-adds")
    axes[0].set(title=f"{cfg['n_in']}-{cfg['width']}-...-{cfg['n_out']} net: counts per example",
                xlabel="hidden layers", ylabel="log10 count")
    axes[1].semilogy(t["depth"], t["path_sum_seconds"], "o-", label=f"sum over all paths: x{g['path_sum']:.2f}/layer")
    axes[1].semilogy(t["depth"], t["backprop_seconds"], "s-", label="backprop, one pass per output")
    axes[1].set(title=f"time for dy/dx, width {cfg['timing_width']}", xlabel="hidden layers", ylabel="seconds")
    ms, macs = np.asarray(c["backprop_seconds"]) * 1e3, np.asarray(c["backprop_macs"], float)
    axes[2].plot(c["depth"], ms, "s-", c="C1", label=f"measured: x{g['backprop']:.2f}/layer")
    axes[2].plot(c["depth"], macs * (ms @ macs) / (macs @ macs), "k:", label="multiply-adds, scaled to fit")
    axes[2].set(title=f"backprop's time is linear in depth (batch {cfg['count_batch']})", xlabel="hidden layers",
                ylabel="milliseconds per gradient", ylim=(0, None))
    for ax in axes:
        ax.legend(loc="upper left")
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
