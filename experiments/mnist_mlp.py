"""The lecture's example network: 784-225-144-10 relu, softmax cross-entropy, mini-batch SGD, annealed step.

Learning curves (train and test error per epoch) and the first-layer weights ``W1`` after epochs 1, 2, 3, 4,
5, 10 and 50 as mosaics of the hidden units' input filters. The trained parameters are saved next to the
results (``mnist_mlp_params.npz``) so that :mod:`experiments.sparsity` reuses them instead of retraining.

MNIST is not downloadable on the machines this project is built on: the full config trains on Fashion-MNIST
(same format and split). ``fflab run mnist_mlp --dataset mnist --data-dir DIR`` runs the lecture's setting.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from experiments import _common
from fflab import checkpoint, data, mlp, train

NAME = "mnist_mlp"
DESCRIPTION = "The example 784-225-144-10 relu net trained by mini-batch SGD: learning curves and W1 filters"
SLIDE = "Example: MNIST handwritten digits; Example Network; Mini-batch training; W1 after epoch 1..50"

# Test error (%) the claim checks, per data set. MNIST: the lecture's "around 1.2%", with some slack for a
# different seed and schedule. Fashion-MNIST is harder: the target for this network is 10.5%.
# digits: a plain MLP on the 8x8 UCI digits gets about 97-98% accuracy.
TARGETS = {"mnist": 1.5, "fashion-mnist": 10.5, "digits": 3.5, "synthetic": 10.0}
PARAMS_FILE = f"{NAME}_params.npz"
FILTERS_FILE = f"{NAME}_filters.npz"


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (225, 144)
    activation: str = "relu"
    init: str = "glorot_relu"
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    schedule: str = "cosine"  # annealed towards the end: lr * (1 + cos(pi t / T)) / 2, floored at decay_to
    decay_to: float = 0.01
    weight_decay: float = 0.0
    batch_size: int = 100  # 600 updates per epoch on 60k images
    epochs: int = 50
    snapshot_epochs: tuple[int, ...] = (1, 2, 3, 4, 5, 10, 50)
    seed: int = 0


# digits: 1,437 training images make only 14 batches of 100 per epoch, so a larger step and a smaller net
# (64 units: an 8x8 mosaic of 8x8 filters) train in the same 50 epochs.
QUICK = Config(dataset="digits", hidden=(64, 36), learning_rate=0.3)
FULL = Config()


def train_network(config: Config, *, progress: bool | None = None):
    """Train the network of ``config``.

    Returns:
        ``(ds, fit_result)``: the :class:`fflab.data.Dataset` and :class:`fflab.train.FitResult` (with
        parameter snapshots at epoch 0 and ``config.snapshot_epochs``).
    """
    ds = data.load(config.dataset, data_dir=config.data_dir)
    params, key_data = initial_params(config, ds)
    steps = config.epochs * (ds.x_train.shape[0] // config.batch_size)
    opt = train.make_optimizer(config.optimizer, config.learning_rate, schedule=config.schedule,
                               total_steps=steps, decay_to=config.decay_to, weight_decay=config.weight_decay)
    state = train.init_state(params, opt, key_data)
    result = train.fit(
        state, opt, (ds.x_train, ds.y_train), epochs=config.epochs, batch_size=config.batch_size,
        activation=config.activation, test=(ds.x_test, ds.y_test),
        snapshot_epochs=(0, *config.snapshot_epochs, config.epochs),
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    return ds, result


def initial_params(config: Config, ds: data.Dataset):
    """The network's initial parameters for data set ``ds``, and the key that shuffles its mini-batches."""
    key_init, key_data = jax.random.split(jax.random.key(config.seed))
    sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    return mlp.init(key_init, sizes, init=config.init), key_data


def _identity(config: Config) -> dict:
    """What determines the trained parameters (the data folder does not)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "data_dir"}


def save_params(path, params, config: Config) -> Path:
    """Save trained parameters with the config that made them (:mod:`fflab.checkpoint`)."""
    sizes = [int(params[0]["W"].shape[0])] + [int(layer["W"].shape[1]) for layer in params]
    meta = {"name": NAME, "sizes": sizes, "config": _common._jsonable(_identity(config))}
    return checkpoint.save(path, params, metadata=meta)


def load_params(path, config: Config):
    """The parameters saved at ``path`` if they were trained with ``config``; ``None`` otherwise."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        meta = checkpoint.load_metadata(path)
        if meta.get("name") != NAME or meta.get("config") != _common._jsonable(_identity(config)):
            return None
        sizes = [int(d) for d in meta["sizes"]] if "sizes" in meta else None
        template = _template(config, sizes)
        params, _ = checkpoint.load(path, template)
    except (checkpoint.CheckpointError, KeyError, ValueError):
        return None
    return params


def _template(config: Config, sizes=None):
    """A parameter pytree of the right structure for ``checkpoint.load`` (values are ignored)."""
    if sizes is None:
        ds = data.load(config.dataset, data_dir=config.data_dir)
        sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    return mlp.init(jax.random.key(0), sizes, init=config.init)


def filter_smoothness(w1: np.ndarray, image_shape, mask: np.ndarray) -> float:
    """Correlation of the weights of horizontally and vertically adjacent pixels, pooled over all filters.

    Independent random weights give about 0; smooth, stroke-like filters give a clearly positive value. Only
    pixel pairs where both pixels are in ``mask`` (inputs that vary in the data) count, since weights on
    constant-zero pixels get no gradient and keep their random initial values.

    Args:
        w1: ``(d, H)`` first-layer weights.
        image_shape: ``(rows, cols)`` with ``rows * cols == d``.
        mask: ``(d,)`` bool.
    """
    rows, cols = image_shape
    f = np.asarray(w1, np.float64).T.reshape(-1, rows, cols)
    m = np.asarray(mask, bool).reshape(rows, cols)
    mean = (f * m).sum(axis=(1, 2), keepdims=True) / max(m.sum(), 1)
    f = (f - mean) * m
    pairs = [
        (f[:, :, :-1], f[:, :, 1:], m[:, :-1] & m[:, 1:]),  # horizontal neighbours
        (f[:, :-1, :], f[:, 1:, :], m[:-1, :] & m[1:, :]),  # vertical neighbours
    ]
    num = sum(float((a * b)[:, k].sum()) for a, b, k in pairs)
    den_a = sum(float((a * a)[:, k].sum()) for a, _, k in pairs)
    den_b = sum(float((b * b)[:, k].sum()) for _, b, k in pairs)
    return num / math.sqrt(den_a * den_b) if den_a > 0 and den_b > 0 else 0.0


def _quantize(w1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns as uint8 codes relative to each one's largest |w| (enough to display), and those scales."""
    w1 = np.asarray(w1, np.float64)
    scale = np.abs(w1).max(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    codes = np.round((w1 / scale + 1.0) * 127.5).astype(np.uint8)
    return codes, scale.astype(np.float32)


def _dequantize(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float64) / 127.5 - 1.0) * scale


def mosaic(w1: np.ndarray, image_shape) -> np.ndarray:
    """Tile the ``H`` columns of a ``(d, H)`` weight matrix as images on a near-square grid.

    Each filter is scaled by its own largest ``|w|`` to ``[-1, 1]``; the one-pixel gaps are NaN.

    Returns:
        ``(grid_rows * (rows + 1) - 1, grid_cols * (cols + 1) - 1)`` float array.
    """
    shape = tuple(image_shape) if len(image_shape) == 2 else (1, int(np.prod(image_shape)))
    rows, cols = shape
    w1 = np.asarray(w1, np.float64)
    n = w1.shape[1]
    gc = math.ceil(math.sqrt(n))
    gr = math.ceil(n / gc)
    scale = np.abs(w1).max(axis=0)
    w1 = w1 / np.where(scale > 0, scale, 1.0)
    out = np.full((gr * (rows + 1) - 1, gc * (cols + 1) - 1), np.nan)
    for i in range(n):
        r, c = divmod(i, gc)
        out[r * (rows + 1): r * (rows + 1) + rows, c * (cols + 1): c * (cols + 1) + cols] = (
            w1[:, i].reshape(rows, cols))
    return out


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = Path(out_dir or _common.default_out(config == QUICK))
    ds, fit = train_network(config)
    h = fit.history
    epochs_snap = sorted(fit.snapshots)
    w1s = {e: np.asarray(fit.snapshots[e][0]["W"]) for e in epochs_snap}
    image_shape = tuple(ds.image_shape)
    mask = ds.x_train.std(axis=0) > 0.1
    w0 = w1s[0]
    smooth, learned = {}, {}
    if len(image_shape) == 2:
        smooth = {e: filter_smoothness(w1s[e], image_shape, mask) for e in epochs_snap}
        learned = {e: filter_smoothness(w1s[e] - w0, image_shape, mask) for e in epochs_snap if e > 0}
    moved = {e: float(np.linalg.norm(w1s[e] - w0) / np.linalg.norm(w0)) for e in epochs_snap}

    params = fit.state.params
    out_dir.mkdir(parents=True, exist_ok=True)
    save_params(out_dir / PARAMS_FILE, params, config)
    codes, scales = zip(*(_quantize(w1s[e]) for e in epochs_snap), strict=True)
    np.savez_compressed(out_dir / FILTERS_FILE, epochs=np.array(epochs_snap), codes=np.stack(codes),
                        scales=np.stack(scales), image_shape=np.array(image_shape))

    n_train = ds.x_train.shape[0]
    final_test = h["test_error"][-1]
    target = TARGETS.get(config.dataset, 10.0)
    final_learned = learned.get(epochs_snap[-1], float("nan"))
    claims = [
        _common.claim(
            f"the example network reaches a low test error (lecture: ~1.2% on MNIST); "
            f"target on {config.dataset}: <= {target}% (final test error, %)",
            final_test, final_test <= target),
        _common.claim(
            "W1 goes from random noise to smooth, stroke-like filters: adjacent-pixel weight correlation "
            "of W1 at init ~0 (|.| < 0.1), of the learned change W1 - W1_init after training > 0.25 "
            "(init, learned)",
            [smooth.get(0, float("nan")), final_learned],
            bool(smooth) and abs(smooth[0]) < 0.1 and final_learned > 0.25),
    ]
    results = {
        "history": h,
        "sizes": [ds.x_train.shape[1], *config.hidden, ds.num_classes],
        "num_params": mlp.num_params(params),
        "n_train": n_train,
        "n_test": int(ds.x_test.shape[0]),
        "updates_per_epoch": n_train // config.batch_size,
        "image_shape": list(image_shape),
        "final": {k: h[k][-1] for k in ("train_loss", "train_error", "test_loss", "test_error")},
        "best_test_error": min(h["test_error"]),
        "target_test_error": target,
        "snapshot_epochs": epochs_snap,
        "filter_smoothness": smooth,
        "learned_filter_smoothness": learned,
        "w1_relative_distance_from_init": moved,
        "seconds": float(sum(h["seconds"])),
    }
    notes = (
        f"Data set: {config.dataset}. "
        + ("MNIST is not available offline here, so the full run trains on Fashion-MNIST (same 60k/10k "
           "28x28 format, harder classes); the lecture's MNIST run is `fflab run mnist_mlp --dataset mnist "
           "--data-dir DIR`. " if config.dataset != "mnist" else "")
        + f"SGD, lr {config.learning_rate} with a {config.schedule} anneal to {config.decay_to:g}x, "
        f"batch {config.batch_size} ({n_train // config.batch_size} updates per epoch), "
        f"{config.epochs} epochs. "
        "Filters are shown each scaled to its own largest |w|. Smoothness is the correlation of the weights "
        "of adjacent pixels, counted only where the input std exceeds 0.1 (weights on always-blank pixels "
        "get no gradient). It is measured on W1 and on the learned change W1 - W1_init: without weight "
        "decay the random init never decays, so W1 itself stays partly noisy (more so on 8x8 digits, "
        "where training moves W1 less)."
    )
    if final_test > target:
        notes += (f" The test error {final_test:.2f}% misses the {target}% target (best epoch: "
                  f"{min(h['test_error']):.2f}%).")
    payload = _common.save_results(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def log_axis(ax) -> None:
    """Log-scale y axis with plain tick labels at 1, 1.5, 2, 3, 5, 7 x 10^k."""
    from matplotlib import ticker

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r = payload["results"]
    h = r["history"]
    ep = h["epoch"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9), layout="constrained")
    ax = axes[0]
    ax.plot(ep, h["train_error"], label="train")
    ax.plot(ep, h["test_error"], label="test")
    ax.axhline(r["target_test_error"], color="gray", ls="--", lw=1, label=f"target {r['target_test_error']}%")
    log_axis(ax)
    ax.set(title=f"error, {payload['config']['dataset']} (final test {r['final']['test_error']:.2f}%)",
           xlabel="epoch", ylabel="error (%)")
    ax.legend()
    ax = axes[1]
    ax.plot(ep, h["train_loss"], label="train cross-entropy")
    ax.plot(ep, h["test_loss"], label="test cross-entropy")
    log_axis(ax)
    ax.set(title="loss and step size", xlabel="epoch", ylabel="cross-entropy")
    lr_ax = ax.twinx()
    lr_ax.plot(ep, h["learning_rate"], color="k", ls=":", label="step size")
    lr_ax.set_ylabel("step size (end of epoch)")
    lr_ax.grid(False)
    lines = ax.get_lines() + lr_ax.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    fig.suptitle(f"{'-'.join(map(str, r['sizes']))} relu net, mini-batch SGD "
                 f"({r['updates_per_epoch']} updates/epoch)")
    _common.savefig(fig, out_dir, NAME)

    with np.load(Path(out_dir) / FILTERS_FILE) as f:
        epochs = [int(e) for e in f["epochs"]]
        w1s = {e: _dequantize(c, s) for e, c, s in zip(epochs, f["codes"], f["scales"], strict=True)}
        image_shape = tuple(int(s) for s in f["image_shape"])
    units, shape = next(iter(w1s.values())).shape[1], "x".join(map(str, image_shape))
    smooth, learned = r["filter_smoothness"], r["learned_filter_smoothness"]
    # W1 itself is dominated by its random init (noise compresses badly): four snapshots suffice to show it.
    raw = sorted({epochs[0], *epochs[1:2], *[e for e in epochs if e == 10], epochs[-1]})
    _filter_figure(
        plt, {e: w1s[e] for e in raw}, image_shape, smooth, out_dir, f"{NAME}_filters", "W1",
        f"first-layer filters W1: {units} units x {shape} inputs, each scaled to its own max |w|\n"
        "corr = adjacent-pixel weight correlation (0 for noise); the random init dominates: see "
        f"{NAME}_filters_learned for the learned part",
    )
    if 0 in w1s and len(epochs) > 1:
        _filter_figure(
            plt, {e: w1s[e] - w1s[0] for e in epochs if e > 0}, image_shape, learned, out_dir,
            f"{NAME}_filters_learned",
            "W1 - W1_init", f"the learned part of the filters, W1 - W1_init ({units} units x {shape}), each "
            "scaled to its own max |w|\ncorr = adjacent-pixel weight correlation (0 for noise)",
        )


def _filter_figure(plt, w1s: dict, image_shape, corr: dict, out_dir, name: str, what: str, title: str):
    n = len(w1s)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.6 * nrows), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    for ax, (e, w) in zip(axes.flat, w1s.items(), strict=False):
        ax.imshow(mosaic(w, image_shape), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        c = corr.get(str(e))
        ax.set_title(f"{what} {'init' if e == 0 else f'after epoch {e}'}"
                     + ("" if c is None else f"\ncorr {c:.2f}"), fontsize=10)
        ax.axis("off")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    _common.savefig(fig, out_dir, name)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
