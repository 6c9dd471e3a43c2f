"""Initialisation schemes: which keep the forward and backward signal of a deep relu net.

Lecture: "Initialization".

The lecture initialises ``W_ij ~ sqrt(4 / (n_i + n_j)) N(0, 1)``: a relu unit is on half the time, so with
weight variance ``s^2`` the second moment of the pre-activations is multiplied by ``n_in s^2 / 2`` per layer
going forward and the back-propagated signal ``delta = dC/dz`` by ``n_out s^2 / 2`` going backward. The
forward signal is kept by ``s = sqrt(2 / n_in)`` (``he_forward``), the backward one by ``sqrt(2 / n_out)``
(``he_backward``); where the widths differ both cannot hold, and ``sqrt(4 / (n_in + n_out))``
(``glorot_relu``) strikes the balance (Glorot & Bengio 2010). We use a tapering net (widths falling from
``widths[0]`` to ``widths[-1]``), so the schemes differ, and measure per layer the second moment of ``z_l``
and of ``delta_l`` under an ``N(0, 1)`` output cotangent (:mod:`analysis.signals`), averaged over ``draws``
weight draws, next to the mean-field prediction from :func:`fflab.init.std`; then train each variant.

Three contrasts from the papers:

- Glorot & Bengio (2010): a 5-hidden-layer tanh net under "standard" ``U[-1/sqrt(n_in), 1/sqrt(n_in)]``
  (variance ``1 / (3 n_in)``, so ``delta`` shrinks by about 3 per layer going down) versus "normalised"
  ``U[+-sqrt(6 / (n_in + n_out))]``, which keeps the back-propagated gradient of layer 1 near layer 5's.
  fflab's schemes are Gaussian, so these two uniform draws are made here.
- He et al. (2015): a 30-layer relu net trains under ``he_forward`` and stalls under ``glorot``
  (``sqrt(2 / (n_in + n_out)) = sqrt(1 / n)``, which halves the relu signal per layer).
- Saxe et al. (2014): products of 20 square Gaussian matrices ``N(0, 1/N)`` keep the mean squared singular
  value at 1 but most singular values collapse towards 0; products of orthogonal matrices keep every one at 1.

References:
    Glorot & Bengio (2010), Understanding the difficulty of training deep feedforward neural networks.
    He, Zhang, Ren & Sun (2015), Delving deep into rectifiers.
    Saxe, McClelland & Ganguli (2014), Exact solutions to the nonlinear dynamics of learning in deep linear
    neural networks.
    Martens (2010), Deep learning via Hessian-free optimization (sparse initialisation).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from analysis import signals
from experiments import _common
from fflab import data, init, mlp, train

NAME = "initialization"
DESCRIPTION = "Init schemes vs the forward/backward signal of a deep tapering relu net; Glorot, He, Saxe"
SLIDE = "Tricks of the trade I: Initialization, W_ij ~ sqrt(4/(n_i+n_j)) N(0,1), strike a balance"

KEEPERS = ("glorot_relu", "he_forward", "he_backward")  # the lecture's scheme and its two one-sided versions
SMALL, LARGE = "glorot_relu*0.5", "glorot_relu*2"  # too small and too large a scale


@dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    widths: tuple = (192, 160, 128, 96, 80, 64, 48, 32, 24)  # hidden widths, tapering
    # "scheme" or "scheme*scale"; orthogonal*1.4142 is orthogonal with the relu gain sqrt(2).
    schemes: tuple = ("glorot_relu", "glorot", "he_forward", "he_backward", "lecun", "sparse", "orthogonal",
                      "orthogonal*1.4142", "glorot_relu*0.5", "glorot_relu*2")
    draws: int = 6  # weight draws the signal profiles are averaged over
    signal_batch: int = 128
    train_samples: int = 0  # 0: the whole training set
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 0.003  # SGD with momentum 0.9 (He et al. 2015 train with SGD + momentum)
    gb_width: int = 500  # Glorot & Bengio: 5 hidden tanh layers of 1000 units
    gb_depth: int = 5
    he_depth: int = 30
    he_width: int = 96
    he_seeds: int = 1
    he_epochs: int = 6
    saxe_n: int = 100
    saxe_depth: int = 20
    seed: int = 0


# QUICK drops sparse and the orthogonal variants from the signal/training grid (their per-layer-shape draws
# compile for seconds) and shrinks draws, epochs and the Glorot-Bengio / Saxe sizes; the claims still hold.
# saxe_n equals he_width, so the Saxe draws reuse the He net's compiled (96, 96) Gaussian draw.
QUICK = Config(schemes=("glorot_relu", "glorot", "he_forward", "he_backward", "lecun", "glorot_relu*0.5",
                        "glorot_relu*2"), draws=4, epochs=4, he_epochs=4, gb_width=200, saxe_n=96)
FULL = Config(dataset="fashion-mnist", widths=(384, 320, 256, 224, 192, 160, 128, 112, 96, 80, 64), draws=16,
              signal_batch=256, train_samples=5000, epochs=8, batch_size=128, gb_width=1000, he_width=192,
              he_seeds=2, he_epochs=8, saxe_n=400)


def parse_scheme(text: str) -> tuple[str, float]:
    """``"he_forward"`` -> ``("he_forward", 1.0)``; ``"glorot_relu*0.5"`` -> ``("glorot_relu", 0.5)``."""
    name, _, scale = text.partition("*")
    if name not in init.SCHEMES:
        raise ValueError(f"unknown init scheme {name!r} in {text!r}; valid names: {', '.join(init.SCHEMES)}")
    try:
        value = float(scale) if scale else 1.0
    except ValueError:
        raise ValueError(f"cannot read the scale of {text!r}; write scheme*scale, e.g. glorot_relu*0.5") \
            from None
    return name, value


def mean_field_gains(sizes, scheme: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean-field second moments of ``z_l`` and ``delta_l`` of a relu MLP, relative to layer 1 and layer L.

    ``q_l = q_{l-1} n_in s^2 / 2`` forward and ``r_{l-1} = r_l n_out s^2 / 2`` backward, with ``s`` the
    weight std of layer ``l`` (:func:`fflab.init.std`). Independent-signal assumption, as on the slide.

    Returns:
        ``(forward, backward)``, each of shape ``(L,)`` with ``forward[0] = 1`` and ``backward[-1] = 1``.
    """
    var = [init.std(scheme, a, b, scale=scale) ** 2 for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    fwd, bwd = [1.0], [1.0]
    for layer in range(1, len(var)):
        fwd.append(fwd[-1] * sizes[layer] * var[layer] / 2)
    for layer in range(len(var) - 1, 0, -1):
        bwd.append(bwd[-1] * sizes[layer + 1] * var[layer] / 2)
    return np.array(fwd), np.array(bwd[::-1])


@contextlib.contextmanager
def _one_blas_thread():
    """Run LAPACK (the orthogonal draws' QR, the SVDs) on one OpenBLAS thread.

    With two OpenBLAS threads on two busy cores a 192 x 160 QR spin-waits for seconds instead of taking
    milliseconds. jax's CPU LAPACK kernels use scipy's OpenBLAS, which loads lazily: import it first so the
    limit reaches it too.
    """
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@jax.jit
def _profiles(params, x, cotangent):
    """Second moments of ``z_l`` (forward) and of ``delta_l`` under ``cotangent`` (backward), ``(L,)``."""
    fwd = signals.activation_stats(params, x).pre_second_moment
    bwd = signals.gradient_stats(params, x, cotangent, loss=signals.cotangent_loss).delta_second_moment
    return fwd, bwd


def _uniform_net(key, sizes, kind: str, dtype):
    """Glorot & Bengio's draws: ``standard`` U[+-1/sqrt(n_in)], ``normalised`` U[+-sqrt(6/(n_in+n_out))]."""
    layers = []
    for k, a, b in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:], strict=True):
        lim = 1 / math.sqrt(a) if kind == "standard" else math.sqrt(6 / (a + b))
        layers.append({"W": init.flat_draw(jax.random.uniform, k, (a, b), dtype, -lim, lim),
                       "b": jnp.zeros((b,), dtype)})
    return layers


def _train_curves(inits, x, y, *, epochs, batch_size, learning_rate, key) -> list[list[float]]:
    """Training loss on ``(x, y)`` after each epoch (index 0: at init) for each parameter set in ``inits``.

    One jitted epoch (:func:`fflab.train.make_train_epoch`) serves every run, as all share shapes; a run
    whose loss goes non-finite stops there and its remaining entries are NaN.
    """
    opt = train.make_optimizer("momentum", learning_rate, momentum=0.9)
    epoch_fn = train.make_train_epoch(opt, batch_size=batch_size)
    curves = []
    for params in inits:
        state = train.init_state(params, opt, key)
        losses = [train.evaluate(state.params, x, y)[0]]
        for _ in range(epochs):
            state, stats = epoch_fn(state, x, y)
            loss = train.evaluate(state.params, x, y)[0]
            if not (math.isfinite(loss) and np.all(np.isfinite(np.asarray(stats.loss)))):
                break
            losses.append(loss)
        curves.append(losses + [math.nan] * (epochs + 1 - len(losses)))
    return curves


def _decrease(curve) -> float:
    """Relative fall of the training loss, ``1 - final / initial``; ``-inf`` if the run went non-finite."""
    curve = np.asarray(curve, dtype=float)
    return float(1 - curve[-1] / curve[0]) if np.isfinite(curve[-1]) else -math.inf


def saxe_spectra(key, n: int, depth: int, scheme: str, *, record=(1, 2, 5, 10, 20)) -> dict[int, np.ndarray]:
    """Singular values (descending) of products ``W_1 ... W_d`` of ``(n, n)`` matrices drawn from ``scheme``.

    The matrices are drawn in the default float dtype; the product is formed in float64 on the host, since at
    depth 20 the smallest singular values of a Gaussian product fall far below float32's resolution.

    Returns:
        ``{d: singular values}`` for each ``d`` in ``record`` up to ``depth``, and for ``depth``.
    """
    product = np.eye(n)
    spectra = {}
    for d, k in enumerate(jax.random.split(key, depth), start=1):
        product = product @ np.asarray(init.weights(k, n, n, scheme), np.float64)
        if d in record or d == depth:
            spectra[d] = np.linalg.svd(product, compute_uv=False)
    return spectra


def _signal_part(config: Config, x_sig, sizes, variants, key, dtype):
    """Mean over ``config.draws`` weight draws of the forward and backward second moments, per variant."""
    draw_keys = jax.random.split(key, config.draws)
    # On the host: iterating over a device array would compile an unstack for its shape.
    cotangents = np.asarray(init.flat_draw(jax.random.normal, jax.random.fold_in(key, 1),
                                           (config.draws, len(x_sig), sizes[-1]), dtype))
    profiles, theory = {}, {}
    for label, (scheme, scale) in zip(config.schemes, variants, strict=True):
        stats = [_profiles(mlp.init(k, sizes, init=scheme, scale=scale, dtype=dtype), x_sig, cot)
                 for k, cot in zip(draw_keys, cotangents, strict=True)]
        profiles[label] = {name: np.mean([np.asarray(s[i]) for s in stats], axis=0)
                           for i, name in enumerate(("forward", "backward"))}
        th_f, th_b = mean_field_gains(sizes, scheme, scale)
        theory[label] = {"forward": th_f, "backward": th_b}
    return profiles, theory


def _glorot_bengio_part(config: Config, x_sig, y_sig, num_classes, key, dtype) -> dict:
    """Back-propagated gradient variance per tanh layer, standard vs normalised uniform init, 4 draws."""
    sizes = [x_sig.shape[1], *[config.gb_width] * config.gb_depth, num_classes]
    tanh_stats = jax.jit(lambda params, x, y: signals.gradient_stats(params, x, y, activation="tanh"))
    out = {}
    for kind in ("standard", "normalised"):
        draws = [_uniform_net(k, sizes, kind, dtype) for k in jax.random.split(key, 4)]
        stats = [tanh_stats(params, x_sig, y_sig) for params in draws]
        delta = np.mean([np.asarray(s.delta_var) for s in stats], axis=0)[: config.gb_depth]
        wgrad = np.mean([np.asarray(s.weight_grad_var) for s in stats], axis=0)[: config.gb_depth]
        ratio = float(delta[0] / delta[-1])
        out[kind] = {"delta_var": delta, "weight_grad_var": wgrad, "ratio_1_to_last": ratio,
                     "factor_per_layer": ratio ** (1 / (config.gb_depth - 1))}
    return out


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    with _one_blas_thread():
        results, claims, notes = _measure(config)
    payload = _common.save_results(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def _measure(config: Config) -> tuple[dict, list[dict], str]:
    variants = [parse_scheme(s) for s in config.schemes]
    missing = [s for s in (*KEEPERS, SMALL, LARGE) if s not in config.schemes]
    if missing:
        raise ValueError(f"schemes must include {', '.join(missing)}: the claims compare them")
    dtype = jnp.zeros(()).dtype  # float32, or float64 under jax_enable_x64
    ds = data.load(config.dataset, data_dir=config.data_dir)
    n = config.train_samples or len(ds.x_train)
    x, y = jnp.asarray(ds.x_train[:n], dtype), jnp.asarray(ds.y_train[:n])
    x_sig, y_sig = x[: config.signal_batch], y[: config.signal_batch]
    sizes = [x.shape[1], *config.widths, ds.num_classes]
    keys = jax.random.split(jax.random.key(config.seed), 6)
    seconds = {}
    tic = time.perf_counter()

    # 1. Forward and backward signal per layer at init, averaged over weight draws.
    profiles, theory = _signal_part(config, x_sig, sizes, variants, keys[0], dtype)
    gains = {
        label: {"forward": float(p["forward"][-1] / p["forward"][0]),
                "backward": float(p["backward"][0] / p["backward"][-1])}
        for label, p in profiles.items()
    }
    worst = {label: max(abs(math.log10(g["forward"])), abs(math.log10(g["backward"])))
             for label, g in gains.items()}  # decades the signal drifts in its worse direction
    seconds["signals"], tic = time.perf_counter() - tic, time.perf_counter()

    # 2. Training curves of every variant from the same draw.
    inits = [mlp.init(keys[1], sizes, init=scheme, scale=scale, dtype=dtype) for scheme, scale in variants]
    curves = _train_curves(inits, x, y, epochs=config.epochs, batch_size=config.batch_size,
                           learning_rate=config.learning_rate, key=keys[2])
    training = {label: {"loss": c, "decrease": _decrease(c)}
                for label, c in zip(config.schemes, curves, strict=True)}
    seconds["training"], tic = time.perf_counter() - tic, time.perf_counter()

    # 3. Glorot & Bengio (2010): back-propagated gradient per tanh layer, standard vs normalised init.
    gb = _glorot_bengio_part(config, x_sig, y_sig, ds.num_classes, keys[3], dtype)
    seconds["glorot_bengio"], tic = time.perf_counter() - tic, time.perf_counter()

    # 4. He et al. (2015): a 30-layer relu net, he_forward vs glorot, same budget.
    he_sizes = [x.shape[1], *[config.he_width] * (config.he_depth - 1), ds.num_classes]
    he_schemes = ("he_forward", "glorot")
    inits = [mlp.init(k, he_sizes, init=scheme, dtype=dtype)
             for scheme in he_schemes for k in jax.random.split(keys[4], config.he_seeds)]
    # One call, so both schemes share one compiled 30-layer epoch.
    he_curves = _train_curves(inits, x, y, epochs=config.he_epochs, batch_size=config.batch_size,
                              learning_rate=config.learning_rate, key=keys[2])
    he = {}
    for i, scheme in enumerate(he_schemes):
        c = he_curves[i * config.he_seeds: (i + 1) * config.he_seeds]
        dec = [_decrease(ci) for ci in c]
        he[scheme] = {"loss": c, "decrease": dec, "median_decrease": float(np.median(dec))}
    seconds["he_2015"], tic = time.perf_counter() - tic, time.perf_counter()

    # 5. Saxe et al. (2014): singular values of products of Gaussian vs orthogonal matrices.
    saxe = {}
    for scheme in ("lecun", "orthogonal"):  # lecun on a square matrix: N(0, 1/N)
        spectra = saxe_spectra(keys[5], config.saxe_n, config.saxe_depth, scheme)
        top = spectra[config.saxe_depth]
        saxe[scheme] = {
            "spectra": {str(d): s for d, s in spectra.items()},
            "fraction_below_0.1": float(np.mean(top < 0.1)),
            "median": float(np.median(top)),
            "mean_square": float(np.mean(top**2)),
            "max_abs_deviation_from_1": float(np.max(np.abs(top - 1))),
        }
    seconds["saxe_2014"] = time.perf_counter() - tic

    small, large = SMALL, LARGE
    keepers_dec = {s: training[s]["decrease"] for s in KEEPERS}
    he_fwd, he_bwd = gains["he_forward"]["forward"], gains["he_backward"]["backward"]
    claims = [
        _common.claim("he_forward, std sqrt(2/n_in), keeps the forward signal: end-to-end gain within 2x",
                      he_fwd, abs(math.log10(he_fwd)) < 0.3),
        _common.claim("he_backward, std sqrt(2/n_out), keeps the backward signal: end-to-end gain within 2x",
                      he_bwd, abs(math.log10(he_bwd)) < 0.3),
        _common.claim("the lecture's sqrt(4/(n_in+n_out)) strikes the balance: in its worse direction the "
                      "signal drifts fewer decades than under either one-sided He scheme",
                      {s: worst[s] for s in KEEPERS},
                      worst["glorot_relu"] < min(worst["he_forward"], worst["he_backward"])),
        _common.claim("too small (x0.5) a scale makes the forward signal vanish (gain < 1e-3), too large "
                      "(x2) makes it explode (gain > 1e3)",
                      {small: gains[small]["forward"], large: gains[large]["forward"]},
                      gains[small]["forward"] < 1e-3 and gains[large]["forward"] > 1e3),
        _common.claim("the signal-keeping schemes train: training loss falls by more than half",
                      keepers_dec, min(keepers_dec.values()) > 0.5),
        _common.claim("too small a scale stalls: training loss falls by less than 10%",
                      training[small]["decrease"], training[small]["decrease"] < 0.1),
        _common.claim("too large a scale does not train: the loss goes non-finite or ends above its start",
                      training[large]["loss"][-1], training[large]["decrease"] < 0),
        _common.claim("Glorot & Bengio: standard init shrinks layer 1's back-propagated gradient below 1/10 "
                      "of the last hidden layer's; normalised init keeps the ratio within 2x of 1",
                      {k: v["ratio_1_to_last"] for k, v in gb.items()},
                      gb["standard"]["ratio_1_to_last"] < 0.1
                      and abs(math.log10(gb["normalised"]["ratio_1_to_last"])) < 0.3),
        _common.claim(f"He et al.: a {config.he_depth}-layer relu net trains under He init (loss falls by "
                      "more than half) and stalls under Glorot init (by less than 10%), median over seeds",
                      {k: v["median_decrease"] for k, v in he.items()},
                      he["he_forward"]["median_decrease"] > 0.5 and he["glorot"]["median_decrease"] < 0.1),
        _common.claim(f"Saxe et al.: in a product of {config.saxe_depth} Gaussian matrices most singular "
                      "values collapse (over half below 0.1); in a product of orthogonal ones all stay at 1 "
                      "(within 1e-4: float32 draws)",
                      {"gaussian_fraction_below_0.1": saxe["lecun"]["fraction_below_0.1"],
                       "orthogonal_max_abs_deviation": saxe["orthogonal"]["max_abs_deviation_from_1"]},
                      saxe["lecun"]["fraction_below_0.1"] > 0.5
                      and saxe["orthogonal"]["max_abs_deviation_from_1"] < 1e-4),
    ]
    results = {
        "sizes": sizes,
        "he_net": {"depth": config.he_depth, "width": config.he_width},
        "profiles": profiles,
        "mean_field": theory,
        "gains": gains,
        "worst_direction_decades": worst,
        "training": training,
        "glorot_bengio": gb,
        "he_2015": he,
        "saxe": saxe,
        "seconds": seconds,
    }
    return results, claims, _notes(config, training, gains, gb)


def _notes(config: Config, training: dict, gains: dict, gb: dict) -> str:
    notes = ["Signal profiles: second moments of z_l and of delta_l (N(0, 1) output cotangent), mean over "
             f"{config.draws} weight draws, relative to layer 1 (forward) and the output layer (backward). "
             "The Gaussian schemes share their N(0, 1) draws (same keys), so they differ only by scale."]
    notes.append("Glorot & Bengio: per layer down, the back-propagated gradient's variance is multiplied by "
                 f"{gb['standard']['factor_per_layer']:.2f} under standard init (1/3 from Var[W] = 1/(3 n), "
                 f"times E[tanh'^2]) and by {gb['normalised']['factor_per_layer']:.2f} under normalised init "
                 "(n Var[W] = 1, so only E[tanh'^2] < 1 is lost); the input scale sets how far below 1 "
                 "that is.")
    if config.dataset == "fashion-mnist":
        notes.append("Fashion-MNIST stands in for MNIST, which cannot be downloaded here; the training "
                     f"curves use the first {config.train_samples or 'all'} training images.")
    if "sparse" in training:
        notes.append("sparse (Martens 2010: 15 N(0, 1) weights per unit) multiplies a relu net's forward "
                     f"signal by 7.5 per layer (measured end-to-end gain {gains['sparse']['forward']:.3g}); "
                     "Martens used it with tanh units and a second-order optimiser: unscaled, it does not "
                     "suit a deep relu net trained by SGD.")
    notes.append("glorot, lecun and orthogonal (gain 1) are the tanh/linear scales: in a relu net they halve "
                 "the signal per layer; orthogonal*1.4142 restores the relu gain sqrt(2). Saxe spectra: "
                 "values below ~1e-16 of the largest are float64 round-off.")
    return " ".join(notes)


def _arr(values) -> np.ndarray:
    """Saved lists back to float arrays ("nan"/"inf" strings included)."""
    return np.asarray(values, dtype=float)


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r = payload["results"]
    config = payload["config"]
    labels = list(r["profiles"])
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    markers = dict(zip(labels, "os^vDPX*<>" * 2, strict=False))
    widths = r["sizes"][1:]
    layers = np.arange(1, len(widths) + 1)

    def relative(label, key):
        measured = _arr(r["profiles"][label][key])
        return measured / (measured[0] if key == "forward" else measured[-1])

    # Signals per layer, measured (solid) and mean-field (dotted); a third panel zooms on the relu scales.
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for label in labels:
        for ax, key in zip(axes[:2], ("forward", "backward"), strict=True):
            ax.plot(layers, relative(label, key), "-", marker=markers[label], ms=3, color=colors[label],
                    label=label)
            ax.plot(layers, _arr(r["mean_field"][label][key]), ":", color=colors[label], lw=1)
    axes[0].set(ylabel="second moment, relative", title="forward: E[z_l^2] / E[z_1^2]")
    axes[1].set(title="backward: E[delta_l^2] / E[delta_L^2]")
    for ax in axes[:2]:
        ax.set(yscale="log", ylim=(1e-10, 1e10))
    for label in KEEPERS:
        axes[2].plot(layers, relative(label, "forward"), "-", marker=markers[label], ms=4,
                     color=colors[label], label=f"{label} forward")
        axes[2].plot(layers, relative(label, "backward"), "--", marker=markers[label], ms=4,
                     color=colors[label], label=f"{label} backward")
    axes[2].set(yscale="log", ylim=(1 / 60, 60), title="zoom: the relu scales, forward (-) / backward (--)")
    axes[2].legend(fontsize=7, loc="upper left", ncol=1)
    for ax in axes:
        ax.set_xticks(layers)
        ax.set_xticklabels([f"{i}\n{w}" for i, w in zip(layers, widths, strict=True)], fontsize=7)
        ax.set_xlabel("layer l / its width n_out")
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5, fontsize=8,
                   title="solid: measured (mean of draws), dotted: mean field")
    fig.suptitle(f"Relu net, widths tapering {widths[0]} -> {widths[-2]} (+ {widths[-1]} outputs): "
                 f"signal per layer at init, {config['draws']} draws")
    _common.savefig(fig, out_dir, NAME)

    # Training curves; losses above TOP (the exploding inits) are drawn at the top edge and named.
    top = 30.0
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for label in labels:
        loss = _arr(r["training"][label]["loss"])
        finite = np.flatnonzero(np.isfinite(loss))
        name = label
        if np.nanmax(loss) > top:
            name += f" (starts at {loss[0]:.0e})"
        if finite[-1] < len(loss) - 1:
            name += ", then non-finite"
        shown = np.minimum(loss, top)
        ax.plot(np.arange(len(loss)), shown, "-", marker=markers[label], ms=4, color=colors[label],
                label=name)
        if finite[-1] < len(loss) - 1:  # went non-finite: mark the last finite epoch
            ax.plot(finite[-1], shown[finite[-1]], "x", ms=10, mew=2, color=colors[label])
    ax.set(yscale="log", ylim=(None, top * 1.3), xlabel="epoch", ylabel="training loss (cross-entropy)",
           title=f"Training each init ({config['dataset']}, SGD momentum lr {config['learning_rate']:g})\n"
           f"losses above {top:g} drawn at {top:g}; x: the next epoch's loss was non-finite")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    _common.savefig(fig, out_dir, f"{NAME}_training")

    # The three papers.
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    gb = r["glorot_bengio"]
    for kind, style in (("standard", "-o"), ("normalised", "-s")):
        delta = _arr(gb[kind]["delta_var"])
        axes[0].plot(np.arange(1, len(delta) + 1), delta, style,
                     label=f"{kind}: layer 1 / layer {len(delta)} = {gb[kind]['ratio_1_to_last']:.3g}")
    axes[0].set(yscale="log", xlabel="hidden layer l", ylabel="Var[dC/dz_l] (back-propagated gradient)",
                xticks=range(1, len(delta) + 1),
                title=f"Glorot & Bengio 2010\ntanh, {len(delta)} x {config['gb_width']}, at init")
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8)
    he = r["he_2015"]
    for scheme, color in (("he_forward", "C0"), ("glorot", "C3")):
        for i, loss in enumerate(he[scheme]["loss"]):
            axes[1].plot(_arr(loss), "-o", ms=3, color=color, label=scheme if i == 0 else None)
    axes[1].set(xlabel="epoch", ylabel="training loss",
                title=f"He et al. 2015\n{r['he_net']['depth']}-layer relu, width {r['he_net']['width']}")
    axes[1].legend()
    saxe = r["saxe"]
    depths = sorted(int(d) for d in saxe["lecun"]["spectra"])
    for i, d in enumerate(depths):
        s = np.maximum(_arr(saxe["lecun"]["spectra"][str(d)]), 1e-18)
        shade = plt.cm.Oranges(0.35 + 0.65 * i / max(len(depths) - 1, 1))
        axes[2].plot(np.arange(1, len(s) + 1), s, color=shade, label=f"Gaussian N(0, 1/N), depth {d}")
    s = _arr(saxe["orthogonal"]["spectra"][str(depths[-1])])
    axes[2].plot(np.arange(1, len(s) + 1), s, color="C2", lw=2.5, label=f"orthogonal, depth {depths[-1]}")
    axes[2].set(yscale="log", xlabel="index i (descending)", ylabel="singular value s_i",
                title=f"Saxe et al. 2014\nproducts of {config['saxe_n']} x {config['saxe_n']} matrices")
    axes[2].legend(fontsize=8, loc="lower left")
    fig.subplots_adjust(wspace=0.3)
    _common.savefig(fig, out_dir, f"{NAME}_papers")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
