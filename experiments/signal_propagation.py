"""Signals through a deep MLP at initialisation grow or decay exponentially unless the scale is right.

Lecture: "Exponential growth/decay forward" and "backward". Given its on/off pattern a relu net is linear, and
relu is positively homogeneous: multiplying every weight matrix by ``s`` multiplies ``z_l`` by exactly ``s^l``
and the back-propagated ``delta_l`` by ``s^(L - l)``. Only the variance-preserving scale (He et al. 2015:
``sqrt(2 / n_in)``, which the lecture's ``sqrt(4 / (n_in + n_out))`` equals at equal widths) keeps the signal
level. We initialise a 20-layer net at 0.5x, 1x and 2x that scale, for relu and for tanh (whose preserving
scale near 0 is ``sqrt(1 / n_in)``, LeCun et al. 1998), and measure per layer the root mean square of ``z_l``
and of ``delta_l`` under a fixed ``N(0, 1)`` output cotangent (:func:`fflab.signals.second_moments`).
"""

import math
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from fflab import mlp, signals

NAME = "signal_propagation"
DESCRIPTION = "Activation and gradient size per layer of a deep MLP at init: exponential unless scaled right"
SLIDE = "Exponential growth/decay forward and backward; scale of initialization important"
PAPERS = {"He et al. 2015": "https://arxiv.org/abs/1502.01852",
          "LeCun et al. 1998": "http://yann.lecun.com/exdb/publis/pdf/lecun-98b.pdf",
          "Poole et al. 2016": "https://arxiv.org/abs/1606.05340"}

PRESERVING_INIT = {"relu": "he_forward", "tanh": "lecun"}  # variance-preserving at equal widths
SCALES = (0.5, 1.0, 2.0)  # times the preserving scale


@dataclass(frozen=True)
class Config:
    depth: int = 20  # weight layers
    width: int = 512
    batch: int = 256
    seeds: tuple = (0, 1, 2)


QUICK, FULL = Config(width=128, batch=128, seeds=(0, 1)), Config()


def _slope(log_values) -> float:
    """Least-squares slope of ``log_values`` against ``0, 1, 2, ...``."""
    return float(np.polyfit(np.arange(len(log_values)), log_values, 1)[0])


def main(config: Config, out_dir) -> dict:
    L, results = config.depth, {}
    moments = jax.jit(signals.second_moments, static_argnames="activation")
    for activation in PRESERVING_INIT:
        results[activation] = {}
        for scale in SCALES:
            fwd, bwd = [], []
            for seed in config.seeds:
                k_net, k_x, k_c = jax.random.split(jax.random.key(seed), 3)
                params = mlp.init(k_net, [config.width] * (L + 1), init=PRESERVING_INIT[activation], scale=scale)
                x = jax.random.normal(k_x, (config.batch, config.width))
                f, b = np.sqrt(moments(params, x, jax.random.normal(k_c, x.shape), activation=activation))
                # Relative to the input and to the output signal: layer 0 is exactly 1 (log 0).
                fwd.append(np.log(np.concatenate([[1.0], f / float(jnp.sqrt(jnp.mean(x**2)))])))
                bwd.append(np.log(b / b[-1])[::-1])  # index k: k layers below the output
            fwd, bwd = np.mean(fwd, axis=0), np.mean(bwd, axis=0)
            results[activation][str(scale)] = {
                "log_rms_forward": fwd, "log_rms_backward": bwd,  # layers 0 .. L; 0 .. L - 1 below the output
                "slope_forward": _slope(fwd), "slope_backward": _slope(bwd), "theory_slope_relu": math.log(scale)}
    relu, tanh = results["relu"], results["tanh"]
    spread = {d: float(np.exp(relu["1.0"][f"log_rms_{d}"].max() - relu["1.0"][f"log_rms_{d}"].min()))
              for d in ("forward", "backward")}
    ends = {s: {"forward": float(np.exp(relu[s]["log_rms_forward"][-1])),
                "backward": float(np.exp(relu[s]["log_rms_backward"][-1])),
                f"scale^{L}": float(s) ** L, f"scale^{L - 1}": float(s) ** (L - 1)} for s in ("0.5", "2.0")}
    slopes = {s: {"forward": v["slope_forward"], "backward": v["slope_backward"], "log(scale)": v["theory_slope_relu"]}
              for s, v in relu.items()}
    fwd_end, bwd_slope = float(np.exp(tanh["2.0"]["log_rms_forward"][-1])), tanh["2.0"]["slope_backward"]
    claims = [
        _common.claim(f"relu at 1x: the signal stays within a factor 2 over {L} layers (max/min rms, forward and "
                      "backward)", spread, max(spread.values()) < 2),
        _common.claim(f"relu at 0.5x / 2x: the forward signal shrinks / grows by scale^{L} and the backward one by "
                      f"scale^{L - 1}, within a factor 2", ends,
                      all(abs(relu[s]["log_rms_forward"][-1] - L * math.log(float(s))) < math.log(2)
                          and abs(relu[s]["log_rms_backward"][-1] - (L - 1) * math.log(float(s))) < math.log(2)
                          for s in ends)),
        _common.claim("relu: the fitted per-layer slope of log rms equals log(scale) (within 0.03)", slopes,
                      all(abs(v[d] - v["log(scale)"]) < 0.03 for v in slopes.values() for d in ("forward",
                                                                                                 "backward"))),
        _common.claim("tanh at 0.5x: small signals see tanh as linear, so they decay like relu's, slope log(0.5) "
                      "(within 0.05)", {d: tanh["0.5"][f"slope_{d}"] for d in ("forward", "backward")},
                      all(abs(tanh["0.5"][f"slope_{d}"] - math.log(0.5)) < 0.05 for d in ("forward", "backward"))),
        _common.claim(f"tanh at 2x: the forward signal saturates instead of growing (rms of the logits after {L} "
                      f"layers, < 2^{L} by far) while the gradient still grows exponentially backwards "
                      "(slope > 0.1 per layer)", {"forward_end": fwd_end, "backward_slope": bwd_slope},
                      fwd_end < 100 and bwd_slope > 0.1),
    ]
    checks = []
    t1 = tanh["1.0"]
    notes = (f"Width {config.width}, batch {config.batch}, {len(config.seeds)} seed(s) averaged in log "
             "space; zero biases, N(0, 1) inputs and output cotangent. The rms is the std over the random "
             "weights. Relu's slopes follow from homogeneity: scaling every W by s scales z_l by exactly "
             "s^l. At 1x the relu forward signal steps up by sqrt(2) in the first layer, since He's factor 2 "
             "makes up for relu halving the second moment and the raw input is not halved."
             f" Tanh at 1x loses signal slowly rather than exponentially (rms x"
             f"{math.exp(t1['log_rms_forward'][-1]):.2f} forward after {L} layers, "
             f"x{math.exp(t1['log_rms_backward'][-1]):.2f} backward), as tanh' < 1 away from 0.")
    payload = _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=notes)
    plot(payload, out_dir)
    return payload


def plot(payload: dict, out_dir) -> None:
    plt, results = _common.style(), payload["results"]
    fig, axes = plt.subplots(2, len(results), figsize=(4.6 * len(results), 7), squeeze=False, layout="constrained")
    for col, (activation, by_scale) in enumerate(results.items()):
        for row, direction in enumerate(("forward", "backward")):
            ax = axes[row, col]
            for i, (scale, r) in enumerate(by_scale.items()):
                y = np.asarray(r[f"log_rms_{direction}"]) / math.log(10)
                k = np.arange(len(y))
                if activation == "relu":  # the homogeneity law under the measurements, wide and pale
                    ax.plot(k, k * math.log10(float(scale)), "-", lw=7, alpha=0.25, color=f"C{i}")
                ax.plot(k, y, "o-", ms=3, lw=1, color=f"C{i}", label=f"{float(scale):g}x")
            what = "forward, z_l" if direction == "forward" else "backward, dC/dz_l"
            ax.set(title=f"{activation}: {what}", ylabel="log10 rms",
                   xlabel="layer l (0 = input)" if direction == "forward" else "layers below the output")
            ax.legend(title="init scale" + (" (pale band: scale^l)" if activation == "relu" else ""))
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
