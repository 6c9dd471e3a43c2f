"""The lecture's example network: 784-225-144-10 relu, softmax cross-entropy, mini-batch SGD, annealed step.

Learning curves (train and test error per epoch) and the first-layer weights ``W1`` after epochs 1, 2, 3, 4,
5, 10 and 50 as mosaics of the hidden units' input filters.

MNIST is not downloadable on the machines this project is built on: the full config trains on Fashion-MNIST
(same format and split). ``fflab run mnist_mlp --dataset mnist --data-dir DIR`` runs the lecture's setting.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

import fflab
from experiments import _common
from fflab import data, mlp, train

NAME = "mnist_mlp"
DESCRIPTION = "The example 784-225-144-10 relu net trained by mini-batch SGD: learning curves and W1 filters"
SLIDE = "Example: MNIST handwritten digits; Example Network; Mini-batch training; W1 after epoch 1..50"
PAPERS = {}

# Test error (%) the claim checks, per data set. MNIST: the lecture's "around 1.2%", with some slack for a
# different seed and schedule. Fashion-MNIST is harder: the target for this network is 10.5%.
# digits: a plain MLP on the 8x8 UCI digits gets about 97-98% accuracy.
TARGETS = {"mnist": 1.5, "fashion-mnist": 10.5, "digits": 3.5, "synthetic": 10.0}
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
    f = (f - (f * m).sum(axis=(1, 2), keepdims=True) / max(m.sum(), 1)) * m
    pairs = [(f[:, :, :-1], f[:, :, 1:], m[:, :-1] & m[:, 1:]),  # horizontal neighbours
             (f[:, :-1, :], f[:, 1:, :], m[:-1, :] & m[1:, :])]  # vertical neighbours
    num = sum(float((a * b)[:, k].sum()) for a, b, k in pairs)
    den_a = sum(float((a * a)[:, k].sum()) for a, _, k in pairs)
    den_b = sum(float((b * b)[:, k].sum()) for _, b, k in pairs)
    return num / math.sqrt(den_a * den_b) if den_a > 0 and den_b > 0 else 0.0


def mosaic(w1: np.ndarray, image_shape) -> np.ndarray:
    """Tile the ``H`` columns of a ``(d, H)`` weight matrix as images on a near-square grid.

    Each filter is scaled by its own largest ``|w|`` to ``[-1, 1]``; the one-pixel gaps are NaN.

    Returns:
        ``(grid_rows * (rows + 1) - 1, grid_cols * (cols + 1) - 1)`` float array.
    """
    rows, cols = tuple(image_shape) if len(image_shape) == 2 else (1, int(np.prod(image_shape)))
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
    ds = data.load(config.dataset, data_dir=config.data_dir)
    sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    n_train = ds.x_train.shape[0]

    model = fflab.classifier(config.activation)
    key_init, key_data = jax.random.split(jax.random.key(config.seed))
    params, _ = model.init(key_init, sizes, init=config.init)
    opt = train.make_optimizer(config.optimizer, config.learning_rate, schedule=config.schedule,
                               total_steps=config.epochs * (n_train // config.batch_size),
                               decay_to=config.decay_to, weight_decay=config.weight_decay)
    fit = train.fit(train.init_state(params, opt, key_data), opt, (ds.x_train, ds.y_train),
                    loss_fn=model.loss_fn, metrics_fn=model.metrics_fn, epochs=config.epochs,
                    batch_size=config.batch_size, test=(ds.x_test, ds.y_test),
                    snapshot_epochs=(0, *config.snapshot_epochs, config.epochs), progress=sys.stderr.isatty())
    h = fit.history

    epochs_snap = sorted(fit.snapshots)
    w1s = {e: np.asarray(fit.snapshots[e][0]["W"]) for e in epochs_snap}
    image_shape = tuple(ds.image_shape)
    mask = ds.x_train.std(axis=0) > 0.1
    smooth = {e: filter_smoothness(w1s[e], image_shape, mask) for e in epochs_snap}
    learned = {e: filter_smoothness(w1s[e] - w1s[0], image_shape, mask) for e in epochs_snap if e > 0}
    moved = {e: float(np.linalg.norm(w1s[e] - w1s[0]) / np.linalg.norm(w1s[0])) for e in epochs_snap}
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / FILTERS_FILE, epochs=np.array(epochs_snap), image_shape=np.array(image_shape),
                        w1=np.stack([w1s[e] for e in epochs_snap]).astype(np.float16))

    final_test = h["test_error"][-1]
    target = TARGETS.get(config.dataset, 10.0)
    final_learned = learned[epochs_snap[-1]]
    claims = [
        _common.claim(
            f"the example network reaches a low test error (lecture: ~1.2% on MNIST); "
            f"target on {config.dataset}: <= {target}% (final test error, %)",
            final_test, final_test <= target),
        _common.claim(
            "W1 goes from random noise to smooth, stroke-like filters: adjacent-pixel weight correlation "
            "of W1 at init ~0 (|.| < 0.1), of the learned change W1 - W1_init after training > 0.25 "
            "(init, learned)",
            [smooth[0], final_learned], abs(smooth[0]) < 0.1 and final_learned > 0.25),
    ]
    results = {
        "history": h,
        "sizes": sizes,
        "num_params": mlp.num_params(fit.state.params),
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
        "seconds": float(sum(h["train_seconds"]) + sum(h["eval_seconds"])),
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
    payload = _common.save(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r = payload["results"]
    h = r["history"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9), layout="constrained")
    axes[0].plot(h["eval_epoch"], h["train_error"], label="train")
    axes[0].plot(h["eval_epoch"], h["test_error"], label="test")
    axes[0].axhline(r["target_test_error"], color="gray", ls="--", lw=1, label=f"target {r['target_test_error']}%")
    axes[0].set(title=f"error, {payload['config']['dataset']} (final test {r['final']['test_error']:.2f}%)",
                xlabel="epoch", ylabel="error (%)", yscale="log")
    axes[1].plot(h["eval_epoch"], h["train_loss"], label="train")
    axes[1].plot(h["eval_epoch"], h["test_loss"], label="test")
    axes[1].set(title="cross-entropy", xlabel="epoch", yscale="log")
    for ax in axes:
        ax.legend()
    fig.suptitle(f"{'-'.join(map(str, r['sizes']))} relu net, mini-batch SGD ({r['updates_per_epoch']} updates/epoch)")
    _common.savefig(fig, out_dir, NAME)

    with np.load(Path(out_dir) / FILTERS_FILE) as f:
        w1s = dict(zip((int(e) for e in f["epochs"]), f["w1"].astype(np.float64), strict=True))
        image_shape = tuple(int(s) for s in f["image_shape"])
    fig, axes = plt.subplots(2, 4, figsize=(13, 7), layout="constrained")
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    for ax, (e, w) in zip(axes.flat, w1s.items(), strict=False):
        ax.imshow(mosaic(w, image_shape), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"{'init' if e == 0 else f'epoch {e}'}: corr {r['filter_smoothness'][str(e)]:.2f}")
        ax.axis("off")
    _common.savefig(fig, out_dir, f"{NAME}_filters")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
