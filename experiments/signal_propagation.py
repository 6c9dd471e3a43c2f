"""Signals through a deep MLP at initialisation grow or decay exponentially unless the scale is right.

Lecture: "Exponential growth/decay forward" and "backward". Ignoring biases, a relu network is linear given
its on/off pattern, ``y_i = sum_{j,k,l} 1(h2_j > 0) 1(h1_k > 0) W3_ij W2_jk W1_kl x_l``, and the same product
of weights carries the gradient back. Relu is positively homogeneous, so multiplying every weight matrix by
``s`` multiplies the pre-activations of layer ``l`` by exactly ``s^l`` and the back-propagated signal
``l`` layers below the output by ``s^l``: the log of the signal's size has slope ``log s`` per layer. Only
the variance-preserving scale (He et al. 2015: std ``sqrt(2 / n_in)`` for relu, which the lecture's
``sqrt(4 / (n_in + n_out))`` equals when the widths are equal) keeps it level.

We initialise a 20-layer net with 0.5x, 1x and 2x that scale, for relu and for tanh (whose variance-preserving
scale near the origin is ``sqrt(1 / n_in)``, LeCun et al. 1998), and measure per layer the size of the
pre-activations ``z_l`` and of the back-propagated signal ``delta_l = dC/dz_l`` with
:func:`analysis.signals.activation_stats` and :func:`analysis.signals.gradient_stats`. The size is the root
mean square, the std of ``z_l`` over the random weights (``z_l`` has mean zero over them); the spread across
a batch alone shrinks with depth in relu nets as the inputs' representations become correlated (Poole et al.
2016), even where the length is preserved. The output signal is a fixed ``N(0, 1)`` cotangent
(:func:`analysis.signals.cotangent_loss`), so the backward pass does not depend on what the logits are.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from analysis import signals
from experiments import _common
from fflab import mlp

NAME = "signal_propagation"
DESCRIPTION = "Activation and gradient size per layer of a deep MLP at init: exponential unless scaled right"
SLIDE = "Exponential growth/decay forward and backward; scale of initialization important"

# The variance-preserving scheme of each non-linearity, for equal widths.
PRESERVING_INIT = {"relu": "he_forward", "tanh": "lecun"}


@dataclass(frozen=True)
class Config:
    depth: int = 20  # weight layers
    width: int = 512
    batch: int = 256
    scales: tuple = (0.5, 1.0, 2.0)
    activations: tuple = ("relu", "tanh")
    seeds: tuple = (0, 1, 2)


QUICK = Config(width=128, batch=128, seeds=(0, 1))
FULL = Config()


def profiles(params, x: jax.Array, cotangent: jax.Array, *, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """Root mean square of the pre-activations and of the back-propagated signal, layer by layer.

    Args:
        params: MLP layers, ``L`` of them.
        x: inputs ``(batch, n_0)``.
        cotangent: ``dC/dz_L``, ``(batch, n_L)``, propagated back unscaled.
        activation: hidden non-linearity.

    Returns:
        ``(forward, backward)``, each of shape ``(L,)``: ``forward[l-1] = rms(z_l)`` and
        ``backward[l-1] = rms(delta_l)`` for ``l = 1 .. L`` (so ``backward[-1] = rms(cotangent)``).
    """
    fwd = signals.activation_stats(params, x, activation=activation)
    bwd = signals.gradient_stats(params, x, cotangent, activation=activation, loss=signals.cotangent_loss)
    return np.sqrt(np.asarray(fwd.pre_second_moment)), np.sqrt(np.asarray(bwd.delta_second_moment))


def _slope(log_values: np.ndarray) -> float:
    """Least-squares slope of ``log_values`` against ``0, 1, 2, ...``."""
    return float(np.polyfit(np.arange(len(log_values)), log_values, 1)[0])


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    sizes = [config.width] * (config.depth + 1)
    L = config.depth
    results = {}
    for activation in config.activations:
        results[activation] = {}
        for scale in config.scales:
            fwd, bwd = [], []
            for seed in config.seeds:
                k_net, k_x, k_c = jax.random.split(jax.random.key(seed), 3)
                params = mlp.init(k_net, sizes, init=PRESERVING_INIT[activation], scale=scale)
                x = jax.random.normal(k_x, (config.batch, config.width))
                cot = jax.random.normal(k_c, (config.batch, config.width))
                f, b = profiles(params, x, cot, activation=activation)
                # Normalise by the input / output signal, so layer 0 is exactly 1.
                fwd.append(np.log(np.concatenate([[1.0], f / float(jnp.sqrt(jnp.mean(x**2)))])))
                bwd.append(np.log(b / b[-1])[::-1])  # index k: k layers below the output
            fwd, bwd = np.mean(fwd, axis=0), np.mean(bwd, axis=0)
            results[activation][str(scale)] = {
                "log_rms_forward": fwd,  # layers 0 (input) .. L (logits)
                "log_rms_backward": bwd,  # 0 (output cotangent) .. L - 1 layers below it (delta_1)
                "slope_forward": _slope(fwd),
                "slope_backward": _slope(bwd),
                "theory_slope_relu": math.log(scale),
            }
    claims = []
    if "relu" in results:
        r = results["relu"]
        if "1.0" in r:
            one = r["1.0"]
            spread = {d: float(np.exp(one[f"log_rms_{d}"].max() - one[f"log_rms_{d}"].min()))
                      for d in ("forward", "backward")}
            claims.append(_common.claim(
                f"relu at 1x: the signal stays within a factor 2 over {L} layers (max/min rms, forward and "
                "backward)", spread, max(spread.values()) < 2))
        off = {s: v for s, v in r.items() if s != "1.0"}
        if off:
            ends = {s: {"forward": float(np.exp(v["log_rms_forward"][-1])),
                        "backward": float(np.exp(v["log_rms_backward"][-1])),
                        f"scale^{L}": float(s) ** L, f"scale^{L - 1}": float(s) ** (L - 1)}
                    for s, v in off.items()}
            ok = all(abs(v["log_rms_forward"][-1] - L * math.log(float(s))) < math.log(2)
                     and abs(v["log_rms_backward"][-1] - (L - 1) * math.log(float(s))) < math.log(2)
                     for s, v in off.items())
            claims.append(_common.claim(
                f"relu at 0.5x / 2x: the forward signal shrinks / grows by scale^{L} and the backward one by "
                f"scale^{L - 1}, within a factor 2", ends, ok))
        slopes = {s: {"forward": v["slope_forward"], "backward": v["slope_backward"],
                      "log(scale)": v["theory_slope_relu"]} for s, v in r.items()}
        claims.append(_common.claim(
            "relu: the fitted per-layer slope of log rms equals log(scale) (within 0.03)", slopes,
            all(abs(v[d] - v["log(scale)"]) < 0.03 for v in slopes.values() for d in ("forward", "backward")),
        ))
    if "tanh" in results:
        t = results["tanh"]
        if "0.5" in t:
            claims.append(_common.claim(
                "tanh at 0.5x: small signals see tanh as linear, so they decay like relu's, slope log(0.5) "
                "(within 0.05)", {d: t["0.5"][f"slope_{d}"] for d in ("forward", "backward")},
                all(abs(t["0.5"][f"slope_{d}"] - math.log(0.5)) < 0.05 for d in ("forward", "backward"))))
        if "2.0" in t:
            fwd_end = float(np.exp(t["2.0"]["log_rms_forward"][-1]))
            bwd_slope = t["2.0"]["slope_backward"]
            claims.append(_common.claim(
                f"tanh at 2x: the forward signal saturates instead of growing (rms of the logits after {L} "
                f"layers, < 2^{L} by far) while the gradient still grows exponentially backwards "
                "(slope > 0.1 per layer)", {"forward_end": fwd_end, "backward_slope": bwd_slope},
                fwd_end < 100 and bwd_slope > 0.1))
    notes = (f"Width {config.width}, batch {config.batch}, {len(config.seeds)} seed(s) averaged in log "
             "space; zero biases, N(0, 1) inputs and output cotangent. The rms is the std over the random "
             "weights. Relu's slopes follow from homogeneity: scaling every W by s scales z_l by exactly "
             "s^l. At 1x the relu forward signal steps up by sqrt(2) in the first layer, since He's factor 2 "
             "makes up for relu halving the second moment and the raw input is not halved.")
    if "tanh" in results and "1.0" in results["tanh"]:
        t1 = results["tanh"]["1.0"]
        notes += (f" Tanh at 1x loses signal slowly rather than exponentially (rms x"
                  f"{math.exp(t1['log_rms_forward'][-1]):.2f} forward after {L} layers, "
                  f"x{math.exp(t1['log_rms_backward'][-1]):.2f} backward), as tanh' < 1 away from 0.")
    payload = _common.save_results(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    results = payload["results"]
    acts = list(results)
    fig, axes = plt.subplots(2, len(acts), figsize=(4.6 * len(acts), 7), squeeze=False,
                             layout="constrained")
    for col, activation in enumerate(acts):
        for row, direction in enumerate(("forward", "backward")):
            ax = axes[row, col]
            for i, (scale, r) in enumerate(results[activation].items()):
                y = np.asarray(r[f"log_rms_{direction}"]) / math.log(10)
                k = np.arange(len(y))
                ax.plot(k, y, "o-", ms=3, color=f"C{i}", label=f"{float(scale):g}x")
                if activation == "relu":
                    ax.plot(k, k * math.log10(float(scale)), ":", color=f"C{i}")
            xlabel = "layer l (0 = input)" if direction == "forward" else "layers below the output"
            what = "forward, z_l" if direction == "forward" else "backward, dC/dz_l"
            ax.set(title=f"{activation}: {what}", xlabel=xlabel, ylabel="log10 rms")
            ax.legend(title="init scale" + (" (dotted: scale^l)" if activation == "relu" else ""))
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
