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
    spread = {d: float(np.exp(np.ptp(relu["1.0"][f"log_rms_{d}"]))) for d in ("forward", "backward")}
    slope_error = {s: {d: abs(relu[s][f"slope_{d}"] - math.log(float(s))) for d in ("forward", "backward")}
                   for s in ("0.5", "2.0")}
    tanh_small = {d: tanh["0.5"][f"slope_{d}"] for d in ("forward", "backward")}
    tanh_large = {"forward_end": float(np.exp(tanh["2.0"]["log_rms_forward"][-1])),
                  "backward_slope": tanh["2.0"]["slope_backward"]}
    level = _common.below(max(spread.values()), 2.0)
    exponential = _common.below(max(max(e.values()) for e in slope_error.values()), 0.03)
    linear_regime = _common.below(max(abs(v - math.log(0.5)) for v in tanh_small.values()), 0.05)
    saturates = _common.both(_common.below(tanh_large["forward_end"], 100.0),
                             _common.above(tanh_large["backward_slope"], 0.1))
    claims = [
        _common.claim(f"relu at 1x (He): the signal stays level, within a factor 2 over {L} layers (max/min rms, "
                      "forward and backward)", spread, level),
        _common.claim("relu at 0.5x / 2x: the signal decays / grows exponentially, by the factor scale per layer "
                      "(fitted slope of log rms within 0.03 of log(scale), forward and backward)", slope_error,
                      exponential),
        _common.claim("tanh at 0.5x: small signals see tanh as linear and decay like relu's, slope log(0.5) "
                      "(within 0.05)", tanh_small, linear_regime),
        _common.claim(f"tanh at 2x: the forward signal saturates (rms of the logits after {L} layers below 100, "
                      "not 2^L) while the gradient still grows exponentially backwards (slope above 0.1 per layer)",
                      tanh_large, saturates),
    ]
    shift = {s: max(float(np.max(np.abs(relu[s][k] - relu["1.0"][k] - np.arange(len(relu[s][k])) * math.log(
        float(s))))) for k in ("log_rms_forward", "log_rms_backward")) for s in ("0.5", "2.0")}
    checks = [_common.check("relu homogeneity: every W times s moves log rms of layer l by exactly l log s, forward "
                            "and backward (same draws; max abs error < 1e-4)", shift, max(shift.values()) < 1e-4)]
    t1 = tanh["1.0"]
    notes = (f"Width {config.width}, batch {config.batch}, {len(config.seeds)} seed(s) averaged in log space; zero "
             "biases, N(0, 1) inputs and output cotangent. At 1x the relu forward signal steps up by sqrt(2) in the "
             "first layer: He's factor 2 makes up for relu halving the second moment, and the raw input is not "
             f"halved. Tanh at 1x loses signal slowly (rms x{math.exp(t1['log_rms_forward'][-1]):.2f} forward after "
             f"{L} layers, x{math.exp(t1['log_rms_backward'][-1]):.2f} backward), as tanh' < 1 away from 0. The "
             "claims need wide layers: at width 4 all four fail (the tests run it).")
    return _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=notes, plot=plot)


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
    raise SystemExit(_common.module_cli(__name__))
