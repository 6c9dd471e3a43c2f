"""Runs of ``fflab train``: the recipe a run config describes, and loading a run back.

A run folder holds ``checkpoint.npz`` (the training state, with the config, the history and a record of the
training data in its header) and ``metrics.json``. :func:`build` turns a config into the model preset, the
optimiser and a fresh training state, exactly as ``fflab train`` does; :func:`load_run` rebuilds that state's
structure from the checkpoint's own header and loads it, so no template is written by hand::

    run = fflab.load_run("runs/digits")
    logits, _ = run.model.apply(run.params, run.model_state, x)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["CHECKPOINT", "DATASET_DEFAULTS", "DEFAULTS", "METRICS", "Run", "build", "load_run"]

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"

# The default recipe: the lecture's 225-144 relu net, momentum SGD (0.9) with a cosine-annealed learning rate
# and a little weight decay, 50 epochs. Measured: 10.0% test error on fashion-mnist.
DEFAULTS = {
    "hidden": (225, 144),
    "activation": "relu",
    "init": "glorot_relu",
    "optimizer": "momentum",
    "lr": 0.05,
    "schedule": "cosine",
    "momentum": 0.9,
    "batch_size": 100,
    "epochs": 50,
    "weight_decay": 5e-4,
    "clip": None,
    "seed": 0,
    "validation": 0,
    "norm": None,
}
# Per data set changes to the recipe. digits has only 1,437 training images, 14 steps of 100 per epoch: it
# needs more epochs, and a larger step and decay to regularise as much in 1,400 steps as fashion-mnist gets
# in 30,000 (with lr 0.05 and decay 5e-4 it stays at 2.2-2.8% even after 500 epochs; this gives 1.9-2.2%).
DATASET_DEFAULTS = {"digits": {"epochs": 100, "lr": 0.1, "weight_decay": 1e-3}}


class Run(NamedTuple):
    """A run loaded back by :func:`load_run`.

    Attributes:
        params, model_state: the trained parameters and model state (``None`` for a plain MLP).
        config: the run's settings (``fflab train``'s options).
        history: the per-epoch history of :func:`fflab.train.fit`.
        state: the whole :class:`fflab.train.TrainState`, to continue training.
        model: the :class:`fflab.presets.Classifier` the run trained.
        optimizer: its optax optimiser.
        data: the record of the training data: ``features``, ``classes``, ``train_samples``,
            ``fingerprint``, ``source``.
    """

    params: Any
    model_state: Any
    config: dict
    history: dict
    state: Any
    model: Any
    optimizer: Any
    data: dict


def build(config: dict, *, features: int, classes: int, train_samples: int):
    """The model preset, optimiser and fresh training state that ``config`` describes.

    Args:
        config: ``fflab train``'s settings (:data:`DEFAULTS` keys).
        features, classes, train_samples: the shape of the training data.

    Returns:
        ``(model, optimizer, state)``.
    """
    import jax
    import jax.numpy as jnp

    from fflab import presets, train

    model = presets.classifier(config["activation"], config.get("norm"))
    steps = train_samples // config["batch_size"]
    optimizer = train.make_optimizer(
        config["optimizer"],
        config["lr"],
        schedule=config["schedule"],
        total_steps=config["epochs"] * steps,
        momentum=config["momentum"],
        clip=config["clip"],
        weight_decay=config["weight_decay"],
    )
    init_key, shuffle_key = jax.random.split(jax.random.key(config["seed"]))
    sizes = [features, *config["hidden"], classes]
    params, model_state = model.init(init_key, sizes, init=config["init"], dtype=jnp.float32)
    return model, optimizer, train.init_state(params, optimizer, shuffle_key, model_state)


def load_run(run_dir: str | os.PathLike) -> Run:
    """Load the latest checkpoint of a ``fflab train`` run: parameters, model state, config and history.

    Args:
        run_dir: the folder passed as ``fflab train --out``.

    Returns:
        :class:`Run`.

    Raises:
        fflab.errors.CheckpointError: no checkpoint, a corrupt one, or one written without a run record
            (e.g. by :func:`fflab.train.fit` called directly; load that with :func:`fflab.train.restore`).
    """
    from fflab import checkpoint, train
    from fflab.errors import CheckpointError

    path = Path(run_dir) / CHECKPOINT
    meta = checkpoint.load_metadata(path)
    config, record = meta.get("config"), meta.get("data")
    if not isinstance(config, dict) or not isinstance(record, dict) or set(DEFAULTS) - set(config):
        raise CheckpointError(
            f"{path} holds no fflab train run record (config and data); load it with fflab.train.restore "
            "and a template state"
        )
    config = {**config, "hidden": tuple(config["hidden"])}
    model, optimizer, template = build(
        config, features=record["features"], classes=record["classes"], train_samples=record["train_samples"]
    )
    state, history, _ = train.restore(path, template)
    return Run(state.params, state.model_state, config, history, state, model, optimizer, record)
