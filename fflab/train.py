"""Mini-batch training of MLP classifiers with optax: one jitted ``lax.scan`` per epoch.

The pieces, each usable alone:

- :func:`make_optimizer` builds the named recipes (``sgd``, ``momentum``, ``nesterov``, ``adam``, ``adagrad``,
  ``adadelta``, ``rmsprop``) with a named learning-rate schedule, optional gradient clipping and weight decay,
  entirely from optax. Any other ``optax.GradientTransformation`` works with the rest of this module too.
- :class:`TrainState` is the whole training state, passed in and returned: ``params``, ``opt_state``,
  ``step`` (optimiser steps taken), ``epoch`` (epochs completed), ``key`` and ``model_state`` (the running
  statistics of a batch-norm network or the slopes and offsets of a transformed one, :mod:`fflab.norm`).
  Epoch ``e`` shuffles with ``fold_in(key, e)``, so the key is never consumed and an interrupted run resumes
  bit for bit.
- :func:`make_train_epoch` returns the jitted epoch: the data sit on device as arguments, mini-batches are
  gathered by index inside a ``lax.scan``, and per-step losses, gradient norms and learning rates come back
  as arrays, so the host never syncs inside the epoch.
- :func:`fit` runs epochs with a progress bar, evaluates, records a history, checkpoints
  (:mod:`fflab.checkpoint`), calls a callback, snapshots parameters, and stops on a non-finite loss with
  :class:`NonFiniteLossError` naming the epoch and step.

The loss is the mean softmax cross-entropy (:func:`fflab.losses.cross_entropy`) of
:func:`fflab.mlp.apply`, or of :func:`fflab.norm.apply` with ``norm="batchnorm"`` (mini-batch statistics in
training, running averages in evaluation) or ``norm="transform"`` (each step first re-estimates the
transformations on its mini-batch with :func:`fflab.norm.transform_update`, which keeps the function).
Data-parallel training over several devices: pass ``mesh`` (:func:`data_mesh`); each mini-batch is split
across the mesh's ``"data"`` axis, the parameters are replicated, and XLA all-reduces the gradient.

Weight decay is L2 regularisation applied as an optax transform (``optax.add_decayed_weights`` ahead of the
optimiser, on weight matrices only, not biases): for SGD and momentum this equals adding ``weight_decay / 2
* sum ||W||^2`` to the loss; for adaptive methods it is the coupled L2 of the original papers, not AdamW's
decoupled decay. Reported losses exclude the decay term.

References:
    Polyak (1964), Some methods of speeding up the convergence of iteration methods (momentum).
    Sutskever, Martens, Dahl & Hinton (2013), On the importance of initialization and momentum in deep
    learning (Nesterov momentum for deep nets).
    Duchi, Hazan & Singer (2011), Adaptive subgradient methods (Adagrad).
    Zeiler (2012), ADADELTA: an adaptive learning rate method.
    Tieleman & Hinton (2012), Lecture 6.5, RMSprop.
    Kingma & Ba (2015), Adam: a method for stochastic optimization.
    Loshchilov & Hutter (2017), SGDR: stochastic gradient descent with warm restarts (cosine schedule).
    Pascanu, Mikolov & Bengio (2013), On the difficulty of training recurrent neural networks (clipping).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from analysis._sharding import data_mesh  # one mesh helper for training and curvature
from fflab import checkpoint, data, losses, mlp
from fflab import norm as norm_lib

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "EpochStats",
    "FitResult",
    "NonFiniteLossError",
    "TrainState",
    "data_mesh",
    "evaluate",
    "fit",
    "init_state",
    "learning_rate",
    "make_optimizer",
    "make_schedule",
    "make_train_epoch",
    "restore",
]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adagrad", "adadelta", "rmsprop")
SCHEDULES = ("constant", "linear", "exponential", "step", "cosine")


class TrainState(NamedTuple):
    """Everything training needs to continue, as a pytree.

    Attributes:
        params: the model's parameter pytree.
        opt_state: the optax optimiser state.
        step: int32 scalar, optimiser steps taken.
        epoch: int32 scalar, epochs completed.
        key: PRNG key of the run; epoch ``e`` shuffles with ``jax.random.fold_in(key, e)`` and the key itself
            never changes, so the data order of any epoch depends only on ``(key, e)``.
        model_state: the state of a normalised network (:func:`fflab.norm.init`), ``()`` for a plain MLP.
    """

    params: Any
    opt_state: optax.OptState
    step: jax.Array
    epoch: jax.Array
    key: jax.Array
    model_state: Any = ()


class EpochStats(NamedTuple):
    """Per-step records of one epoch, each of shape ``(steps,)``.

    Attributes:
        loss: mini-batch cross-entropy before the step's update (no weight-decay term).
        grad_norm: global L2 norm of that mini-batch gradient (before clipping or decay); NaN when the
            epoch was built with ``record_grad_norm=False``.
        learning_rate: the learning rate the step used (NaN if the optimiser does not expose one).
    """

    loss: jax.Array
    grad_norm: jax.Array
    learning_rate: jax.Array


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
        state: the final :class:`TrainState`.
        history: per-epoch lists, see :func:`fit`.
        snapshots: ``{epoch: params}`` as numpy pytrees, for the epochs in ``snapshot_epochs``.
    """

    state: TrainState
    history: dict[str, list]
    snapshots: dict[int, Any]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; the message is one line.

    Attributes:
        epoch: the 1-based epoch in which it happened.
        step: the 1-based step within that epoch: the first whose mini-batch loss or gradient is not finite,
            or, when only the end-of-epoch training loss is, the epoch's last step (its update broke the
            parameters).
        global_step: the 1-based optimiser step counted from the start of training.
        state: the last good state, from the start of that epoch.
        checkpoint: the last good checkpoint file, or ``None`` if none was written.
    """

    def __init__(self, epoch: int, step: int, steps: int, global_step: int, state, checkpoint_path=None):
        where = f"non-finite loss at epoch {epoch}, step {step} of {steps} (optimiser step {global_step})"
        kept = (
            f"; last good checkpoint kept: {checkpoint_path}"
            if checkpoint_path is not None
            else "; no checkpoint was written"
        )
        super().__init__(where + kept + "; try a smaller learning rate or --clip")
        self.epoch, self.step, self.global_step = epoch, step, global_step
        self.state, self.checkpoint = state, checkpoint_path


# --- optimisers and schedules ---


def make_schedule(
    name: str,
    learning_rate: float,
    *,
    total_steps: int | None = None,
    decay_to: float = 0.01,
    warmup_steps: int = 0,
) -> optax.Schedule:
    """A named learning-rate schedule from optax, annealing to ``decay_to * learning_rate`` at the end.

    Args:
        name: ``constant``; ``linear`` (``optax.linear_schedule``); ``exponential`` (smooth
            ``optax.exponential_decay`` by the factor ``decay_to`` over training); ``step``
            (``optax.piecewise_constant_schedule``: two drops by ``sqrt(decay_to)``, at 50% and 75% of
            training; the classic divide-by-10 twice for the default); ``cosine``
            (``optax.cosine_decay_schedule`` with ``alpha=decay_to``, Loshchilov & Hutter 2017).
        learning_rate: the peak (initial) learning rate.
        total_steps: optimiser steps in the whole run; required by every schedule but ``constant``.
        decay_to: the final learning rate as a fraction of the peak, in ``(0, 1]``.
        warmup_steps: if positive, a linear warm-up from 0 joined before the schedule with
            ``optax.join_schedules``; the annealing then spans ``total_steps - warmup_steps``.

    Returns:
        ``schedule(step) -> learning rate``. Past ``total_steps`` it stays at the floor.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or bad numbers.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
    lr = float(learning_rate)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be a positive number, got {learning_rate}")
    if not 0 < decay_to <= 1:
        raise ValueError(f"decay_to must lie in (0, 1], got {decay_to}")
    warmup_steps = int(warmup_steps)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if name == "constant" and not warmup_steps:
        return optax.constant_schedule(lr)
    if total_steps is None or int(total_steps) <= warmup_steps:
        raise ValueError(
            f"schedule {name!r} needs total_steps greater than warmup_steps ({warmup_steps}), "
            f"got {total_steps}"
        )
    steps = int(total_steps) - warmup_steps
    floor = lr * decay_to
    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "linear":
        main = optax.linear_schedule(lr, floor, transition_steps=steps)
    elif name == "exponential":
        main = optax.exponential_decay(lr, transition_steps=steps, decay_rate=decay_to, end_value=floor)
    elif name == "step":
        drop = math.sqrt(decay_to)
        scales: dict[int, float] = {}
        for boundary in (steps // 2, (3 * steps) // 4):
            boundary = max(boundary, 1)
            scales[boundary] = scales.get(boundary, 1.0) * drop
        main = optax.piecewise_constant_schedule(lr, scales)
    else:
        main = optax.cosine_decay_schedule(lr, decay_steps=steps, alpha=decay_to)
    if not warmup_steps:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), main], [warmup_steps])


def _matrices(params):
    """Weight-decay mask: decay the weight matrices (ndim >= 2), not biases, as :func:`losses.l2` does."""
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(
    name: str,
    learning_rate: float,
    *,
    schedule: str = "constant",
    total_steps: int | None = None,
    momentum: float = 0.9,
    clip: float | None = None,
    weight_decay: float = 0.0,
    decay_to: float = 0.01,
    warmup_steps: int = 0,
) -> optax.GradientTransformation:
    """A named optimiser recipe built from optax.

    The optimiser is wrapped in ``optax.inject_hyperparams`` so its current learning rate is readable from
    the state (:func:`learning_rate`). The chain is: ``optax.clip_by_global_norm(clip)`` (if ``clip``), then
    ``optax.add_decayed_weights(weight_decay)`` on weight matrices (if ``weight_decay``), then the optimiser.

    Args:
        name: ``sgd``; ``momentum`` (Polyak heavy ball, ``optax.sgd(momentum=...)``); ``nesterov``
            (``optax.sgd(momentum=..., nesterov=True)``); ``adam``; ``adagrad``; ``adadelta``; ``rmsprop``.
        learning_rate: peak learning rate (``adadelta``'s classic value is 1.0).
        schedule: a name from :data:`SCHEDULES`, see :func:`make_schedule`.
        total_steps: optimiser steps in the run (epochs * steps per epoch); needed by annealed schedules.
        momentum: the momentum coefficient of ``momentum`` and ``nesterov`` (ignored otherwise).
        clip: maximum global gradient norm, or ``None`` for no clipping.
        weight_decay: L2 coefficient ``lambda``; adds ``lambda * W`` to the gradient of each weight matrix.
        decay_to, warmup_steps: see :func:`make_schedule`.

    Returns:
        An ``optax.GradientTransformation``.

    Raises:
        ValueError: unknown optimiser or schedule (the message lists the valid names) or bad numbers.

    Equal arguments return the same (immutable) transformation object, so :func:`make_train_epoch` and
    :func:`fit` reuse the programs compiled for it instead of compiling an equal recipe again.
    """
    args = (name, learning_rate, schedule, total_steps, momentum, clip, weight_decay, decay_to, warmup_steps)
    try:
        hash(args)
    except TypeError:  # e.g. a jax array as the learning rate: build without the cache
        return _make_optimizer(*args)
    return _cached_optimizer(*args)


def _make_optimizer(
    name, learning_rate, schedule, total_steps, momentum, clip, weight_decay, decay_to, warmup_steps
):
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    lr = make_schedule(
        schedule, learning_rate, total_steps=total_steps, decay_to=decay_to, warmup_steps=warmup_steps
    )
    if name in ("momentum", "nesterov") and not 0 <= momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
    if name == "sgd":
        opt = optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
    elif name in ("momentum", "nesterov"):
        opt = optax.inject_hyperparams(optax.sgd)(
            learning_rate=lr, momentum=float(momentum), nesterov=name == "nesterov"
        )
    else:
        factory = {
            "adam": optax.adam,
            "adagrad": optax.adagrad,
            "adadelta": optax.adadelta,
            "rmsprop": optax.rmsprop,
        }[name]
        opt = optax.inject_hyperparams(factory)(learning_rate=lr)
    parts = []
    if clip is not None:
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip must be a positive number, got {clip}")
        parts.append(optax.clip_by_global_norm(float(clip)))
    if weight_decay:
        if not (math.isfinite(weight_decay) and weight_decay > 0):
            raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay}")
        parts.append(optax.add_decayed_weights(float(weight_decay), mask=_matrices))
    return optax.chain(*parts, opt) if parts else opt


_cached_optimizer = functools.lru_cache(maxsize=128, typed=True)(_make_optimizer)


def learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The learning rate in an ``inject_hyperparams`` state (as :func:`make_optimizer` builds), else NaN.

    After an update this is the rate that update used.
    """
    try:
        # The schedule's own state is also filed under "learning_rate"; keep the value, not that NamedTuple.
        value = optax.tree_utils.tree_get(
            opt_state, "learning_rate", filtering=lambda _, v: not isinstance(v, tuple)
        )
    except KeyError:  # several optimisers in one state: no single learning rate
        value = None
    return jnp.asarray(jnp.nan if value is None else value)


# --- state and the jitted epoch ---


def _strong(tree):
    """Strongly typed copies of the leaves, so the first and later epochs hit the same compiled program."""
    return jax.tree_util.tree_map(lambda a: jnp.array(a, dtype=jnp.asarray(a).dtype), tree)


def init_state(
    params, optimizer: optax.GradientTransformation, key: jax.Array | int, model_state: Any = ()
) -> TrainState:
    """A fresh :class:`TrainState` at step 0, epoch 0.

    Args:
        params: initial parameters, e.g. from :func:`fflab.mlp.init` or :func:`fflab.norm.init`.
        optimizer: any ``optax.GradientTransformation``.
        key: the shuffling key (or an int seed for ``jax.random.key``); use a key independent of the one
            that initialised ``params``.
        model_state: the second output of :func:`fflab.norm.init` for a normalised network.
    """
    if isinstance(key, int):
        key = jax.random.key(key)
    params = _strong(params)
    return TrainState(
        params=params,
        opt_state=_strong(optimizer.init(params)),
        step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        key=key,
        model_state=_strong(model_state),
    )


def _check_norm(norm: str | None) -> None:
    if norm is not None and norm not in norm_lib.NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: None, {', '.join(map(repr, norm_lib.NORMS))}")


def _forward(activation: str, norm: str | None, train: bool):
    """``forward(params, model_state, x) -> (logits, model_state)`` of a plain or normalised MLP."""
    if norm is None:
        return lambda params, model_state, x: (mlp.apply(params, x, activation=activation), model_state)
    return functools.partial(_norm_forward, activation=activation, norm=norm, train=train)


def _norm_forward(params, model_state, x, *, activation, norm, train):
    return norm_lib.apply(params, model_state, x, norm=norm, activation=activation, train=train)


def _loss_fn(activation: str, norm: str | None = None, train: bool = True):
    forward = _forward(activation, norm, train)

    def loss(params, model_state, x, y):
        logits, model_state = forward(params, model_state, x)
        return losses.cross_entropy(logits, y), model_state

    return loss


def _check_mesh(mesh: Mesh | None, batch_size: int) -> None:
    if mesh is None:
        return
    if "data" not in mesh.axis_names:
        raise ValueError(f"the mesh needs a 'data' axis, got axes {mesh.axis_names}")
    n = mesh.shape["data"]
    if batch_size % n:
        raise ValueError(f"batch_size {batch_size} must be divisible by the {n} devices of the mesh")


def make_train_epoch(
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    activation: str = "relu",
    norm: str | None = None,
    transform_momentum: float = 0.9,
    mesh: Mesh | None = None,
    record_grad_norm: bool = True,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, EpochStats]]:
    """The jitted function that trains one epoch.

    Args:
        optimizer: any ``optax.GradientTransformation``.
        batch_size: samples per mini-batch; the last ``n % batch_size`` samples of each shuffle are dropped.
        activation: hidden non-linearity of :func:`fflab.mlp.apply`.
        norm: ``None`` (plain MLP), ``"batchnorm"`` or ``"transform"``; the state's params and
            ``model_state`` must come from :func:`fflab.norm.init` with the same ``norm``.
        transform_momentum: with ``"transform"``, the weight of the old slopes and offsets when each step
            re-estimates them on its mini-batch (:func:`fflab.norm.transform_update`).
        mesh: a mesh with a ``"data"`` axis (:func:`data_mesh`) to split each mini-batch across devices;
            ``batch_size`` must be divisible by its size. ``None``: no constraint (one device).
        record_grad_norm: compute every step's global gradient norm for :class:`EpochStats`. It is a
            reduction over all parameters per step, about 15% of an epoch of the 784-225-144-10 net on a
            2-core CPU (``python -m benchmarks.train_throughput``); ``False`` records NaN instead and
            trains identically.

    Returns:
        ``train_epoch(state, x, y) -> (state, stats)`` with ``x: (n, d)`` and ``y: (n,)`` int on device.
        It shuffles with ``fold_in(state.key, state.epoch)`` (:func:`fflab.data.batch_indices`), runs
        ``n // batch_size`` steps in one ``lax.scan``, and returns the state with ``epoch + 1`` and the
        per-step :class:`EpochStats`. It compiles once per data shape and dtype, and equal arguments
        (the same optimizer object) return the same function, so its compiled programs are reused.
    """
    mlp.activation_fn(activation)  # fail early on a bad name
    _check_norm(norm)
    batch_size = int(batch_size)
    _check_mesh(mesh, batch_size)
    return _train_epoch(
        optimizer, batch_size, activation, norm, float(transform_momentum), mesh, bool(record_grad_norm)
    )


@functools.lru_cache(maxsize=64)
def _train_epoch(optimizer, batch_size, activation, norm, transform_momentum, mesh, record_grad_norm):
    """:func:`make_train_epoch` after its checks, memoised so that equal arguments share compiled programs."""
    grad_fn = jax.value_and_grad(_loss_fn(activation, norm, train=True), has_aux=True)
    split = NamedSharding(mesh, PartitionSpec("data")) if mesh is not None else None

    @jax.jit
    def train_epoch(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, EpochStats]:
        idx = data.batch_indices(jax.random.fold_in(state.key, state.epoch), x.shape[0], batch_size)

        def step(carry, batch):
            params, opt_state, model_state = carry
            xb, yb = jnp.take(x, batch, axis=0), jnp.take(y, batch, axis=0)
            if split is not None:
                xb = jax.lax.with_sharding_constraint(xb, split)
                yb = jax.lax.with_sharding_constraint(yb, split)
            if norm == "transform":
                params, model_state = norm_lib.transform_update(
                    params, model_state, xb, activation=activation, momentum=transform_momentum
                )
            (loss, model_state), grads = grad_fn(params, model_state, xb, yb)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            lr = learning_rate(opt_state).astype(loss.dtype)
            grad_norm = optax.tree.norm(grads) if record_grad_norm else jnp.full((), jnp.nan)
            stats = EpochStats(loss, grad_norm.astype(loss.dtype), lr)
            return (params, opt_state, model_state), stats

        carry = (state.params, state.opt_state, state.model_state)
        (params, opt_state, model_state), stats = jax.lax.scan(step, carry, idx)
        steps = state.step + idx.shape[0]
        new = TrainState(params, opt_state, steps, state.epoch + 1, state.key, model_state)
        return new, stats

    return train_epoch


@functools.cache
def _evaluator(activation: str, norm: str | None):
    forward = _forward(activation, norm, train=False)

    @jax.jit
    def sums(params, model_state, x, y):
        logits, _ = forward(params, model_state, x)
        return losses.cross_entropy(logits, y), losses.error_rate(logits, y)

    return sums


def evaluate(
    params, x, y, *, activation: str = "relu", norm: str | None = None, model_state: Any = ()
) -> tuple[float, float]:
    """Mean cross-entropy and error rate on a whole data set in one jitted pass.

    Args:
        params: MLP parameters (plain, or from :func:`fflab.norm.init`).
        x: ``(n, d)`` inputs (cast to the parameters' dtype).
        y: ``(n,)`` integer labels.
        activation: hidden non-linearity.
        norm, model_state: for a normalised network; batch norm evaluates with its running averages.

    Returns:
        ``(loss, error)`` as Python floats; ``error`` is a fraction in ``[0, 1]``.
    """
    _check_norm(norm)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    loss, err = _evaluator(activation, norm)(
        params, model_state, jnp.asarray(x, dtype), jnp.asarray(y, jnp.int32)
    )
    return float(loss), float(err)


# --- the loop ---


def _check_xy(name: str, xy, *, dtype) -> tuple[jax.Array, jax.Array] | None:
    if xy is None:
        return None
    x, y = xy
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"{name} data must be x: (n, d) and y: (n,), got x: {x.shape} and y: {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} labels must be integers, got dtype {y.dtype}")
    if x.shape[0] == 0:
        return None
    return jnp.asarray(x, dtype), jnp.asarray(y, jnp.int32)


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def fit(
    state: TrainState,
    optimizer: optax.GradientTransformation,
    train: tuple[Any, Any],
    *,
    epochs: int,
    batch_size: int,
    activation: str = "relu",
    norm: str | None = None,
    mesh: Mesh | None = None,
    test: tuple[Any, Any] | None = None,
    val: tuple[Any, Any] | None = None,
    history: dict[str, list] | None = None,
    callback: Callable[[int, TrainState], None] | None = None,
    snapshot_epochs: Iterable[int] = (),
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    config: dict | None = None,
    progress: bool = True,
    record_grad_norm: bool = True,
) -> FitResult:
    """Train until ``state.epoch == epochs``, evaluating and checkpointing after each epoch.

    Resuming is calling ``fit`` again with a restored state and history (:func:`restore`): the run continues
    from ``state.epoch`` and, because epoch ``e`` shuffles with ``fold_in(state.key, e)``, ends with the same
    parameters, bit for bit, as a run that was never interrupted.

    Args:
        state: from :func:`init_state` or :func:`restore`.
        optimizer: the transformation ``state.opt_state`` belongs to.
        train: ``(x, y)`` with ``x: (n, d)`` and ``y: (n,)`` int; cast to the parameters' dtype and kept on
            device for the whole run.
        epochs: the total number of epochs (not the number still to run).
        batch_size: samples per step; each epoch runs ``n // batch_size`` steps.
        activation: hidden non-linearity.
        norm: ``None``, ``"batchnorm"`` or ``"transform"`` for a network from :func:`fflab.norm.init`
            (its state in ``state.model_state``); see :func:`make_train_epoch`.
        mesh: a device mesh with a ``"data"`` axis (:func:`data_mesh`) for data-parallel training: the data
            and state are replicated over it and each mini-batch is split across it. The result equals
            one-device training up to float rounding.
        test, val: optional ``(x, y)`` sets evaluated after every epoch (empty sets are skipped).
        history: the history so far, when resuming.
        callback: ``callback(epoch, state)`` after each epoch, once the epoch is recorded and checkpointed
            (``epoch`` is 1-based, equal to ``state.epoch``). Raising from it stops training; the
            checkpoint of that epoch is already on disk.
        snapshot_epochs: epochs after which to copy the parameters to the host into ``result.snapshots``
            (0 means the initial parameters), e.g. ``(1, 2, 3, 4, 5, 10, 50)`` for the lecture's W1 figure.
            Snapshots live in memory only; epochs already done before a resume are not re-snapshotted.
        checkpoint_path: if given, the state is saved there (:mod:`fflab.checkpoint`, atomically) every
            ``checkpoint_every`` epochs and after the last, with ``{"epoch", "history", "config"}`` metadata.
        checkpoint_every: epochs between checkpoints.
        config: JSON-able run configuration stored with each checkpoint.
        progress: show a tqdm progress bar (on stderr).
        record_grad_norm: record the mini-batch gradient norms (:func:`make_train_epoch`); ``False``
            trains about 15% faster and leaves ``None`` in ``history["grad_norm"]``.

    Returns:
        :class:`FitResult` ``(state, history, snapshots)``. ``history`` maps each key to a list with one
        entry per epoch: ``epoch``; ``batch_loss`` (mean mini-batch loss over the epoch); ``train_loss`` and
        ``train_error`` (the whole training set after the epoch); ``test_loss``, ``test_error``,
        ``val_loss``, ``val_error`` (when those sets are given); ``grad_norm`` (mean mini-batch gradient
        norm over the epoch); ``learning_rate`` (the rate of the epoch's last step); ``seconds`` (wall time of
        the epoch including evaluation, the first epoch also compiles). **Errors are percentages**
        (0 to 100); losses are mean cross-entropies without the weight-decay term.

    Raises:
        NonFiniteLossError: a mini-batch loss or gradient, or the end-of-epoch training loss, is NaN or
            infinite. No checkpoint is written for that epoch, so the last good one stays on disk.
        ValueError: bad shapes or arguments.
    """
    from tqdm.auto import tqdm

    epochs, batch_size, checkpoint_every = int(epochs), int(batch_size), int(checkpoint_every)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    dtype = jax.tree_util.tree_leaves(state.params)[0].dtype
    checked = _check_xy("train", train, dtype=dtype)
    if checked is None:
        raise ValueError("the training set is empty")
    x, y = checked
    if not 1 <= batch_size <= x.shape[0]:
        raise ValueError(
            f"batch_size must be between 1 and the {x.shape[0]} training samples, got {batch_size}"
        )
    evals = {"test": _check_xy("test", test, dtype=dtype), "val": _check_xy("val", val, dtype=dtype)}
    evals = {name: xy for name, xy in evals.items() if xy is not None}
    train_epoch = make_train_epoch(
        optimizer,
        batch_size=batch_size,
        activation=activation,
        norm=norm,
        mesh=mesh,
        record_grad_norm=record_grad_norm,
    )
    if mesh is not None:
        replicated = NamedSharding(mesh, PartitionSpec())
        state = jax.device_put(state, replicated)
        x, y = jax.device_put((x, y), replicated)
        evals = {name: jax.device_put(xy, replicated) for name, xy in evals.items()}
    evaluate_ = functools.partial(evaluate, activation=activation, norm=norm)
    history = {k: list(v) for k, v in (history or {}).items()}
    snapshot_epochs = {int(e) for e in snapshot_epochs}
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    last_good = ckpt if ckpt is not None and ckpt.exists() else None

    start = int(state.epoch)
    snapshots = {0: _host(state.params)} if start == 0 and 0 in snapshot_epochs else {}
    bar = tqdm(total=epochs, initial=start, desc="train", unit="epoch", disable=not progress, leave=False)
    try:
        for epoch in range(start + 1, epochs + 1):
            tic = time.perf_counter()
            new, stats = train_epoch(state, x, y)
            stats = EpochStats(*(np.asarray(s) for s in stats))  # the one host sync per epoch
            record = {"epoch": epoch}
            record["train_loss"], train_err = evaluate_(new.params, x, y, model_state=new.model_state)
            bad = ~np.isfinite(stats.loss)
            if record_grad_norm:
                bad |= ~np.isfinite(stats.grad_norm)
            if bad.any() or not math.isfinite(record["train_loss"]):
                # A finite epoch whose end-of-epoch loss is not finite went wrong in its last update.
                i = int(np.argmax(bad)) if bad.any() else len(bad) - 1
                raise NonFiniteLossError(epoch, i + 1, len(bad), int(state.step) + i + 1, state, last_good)
            state = new
            record["train_error"] = 100.0 * train_err
            for name, (xe, ye) in evals.items():
                loss, err = evaluate_(state.params, xe, ye, model_state=state.model_state)
                record[f"{name}_loss"], record[f"{name}_error"] = loss, 100.0 * err
            record["batch_loss"] = float(stats.loss.mean())
            record["grad_norm"] = float(stats.grad_norm.mean()) if record_grad_norm else None
            record["learning_rate"] = float(stats.learning_rate[-1])
            record["seconds"] = time.perf_counter() - tic
            for k, v in record.items():
                history.setdefault(k, []).append(v)
            if ckpt is not None and (epoch % checkpoint_every == 0 or epoch == epochs):
                checkpoint.save(ckpt, state, metadata={"epoch": epoch, "history": history, "config": config})
                last_good = ckpt
            if epoch in snapshot_epochs:
                snapshots[epoch] = _host(state.params)
            bar.update(1)
            bar.set_postfix(
                loss=f"{record['train_loss']:.4f}",
                **({"test_err": f"{record['test_error']:.2f}%"} if "test_error" in record else {}),
            )
            if callback is not None:
                callback(epoch, state)
    finally:
        bar.close()
    return FitResult(state, history, snapshots)


def restore(path: str | os.PathLike, template: TrainState) -> tuple[TrainState, dict[str, list], dict | None]:
    """Load a checkpoint written by :func:`fit` into the structure of ``template``.

    Args:
        path: the checkpoint file.
        template: a state of the same model and optimiser, e.g. from :func:`init_state`.

    Returns:
        ``(state, history, config)`` to pass back into :func:`fit`.

    Raises:
        fflab.checkpoint.CheckpointError: missing, corrupt or mismatched checkpoint.
    """
    state, meta = checkpoint.load(path, template)
    return TrainState(*state), meta.get("history", {}), meta.get("config")
