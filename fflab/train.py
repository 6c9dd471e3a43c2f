"""Mini-batch training of any model with optax: one jitted ``lax.scan`` per epoch.

A model is its loss. ``fit`` and ``make_train_epoch`` train any ``loss_fn`` over any params pytree, in one of
two forms, chosen by the training state:

- **stateless** (``init_state(params, optimizer, key)``): ``loss_fn(params, *batch) -> scalar``, e.g.
  ``loss_fn(params, x, y)``. The same function goes to :mod:`analysis` unchanged.
- **stateful** (``init_state(params, optimizer, key, model_state=...)``): ``loss_fn(params, model_state,
  *batch) -> (loss, model_state)``, for models that carry state through training that is not trained by the
  gradient: batch norm's running averages, the re-estimated transformations of Raiko et al. The
  gradient is taken in ``params`` only. :func:`freeze` turns such a loss into the stateless form
  ``loss(params, model_state, *batch)`` for :mod:`analysis`, with the state as a data argument.

``batch`` is the tuple of data arrays that ``fit`` draws mini-batches from, every one sharing the leading
sample axis, e.g. ``(x, y)``. :func:`fflab.classifier` builds the lecture's MLP classifiers (plain, batch norm,
transformed) as such losses.

The pieces, each usable alone:

- :func:`make_optimizer` builds the named recipes (``sgd``, ``momentum``, ``nesterov``, ``adam``, ``adagrad``,
  ``adadelta``, ``rmsprop``) with a named learning-rate schedule, optional gradient clipping and weight decay,
  entirely from optax. Any other ``optax.GradientTransformation`` works with the rest of this module too.
- :class:`TrainState` is the whole training state, passed in and returned: ``params``, ``opt_state``,
  ``step`` (optimiser steps taken), ``epoch`` (epochs completed), ``key`` and ``model_state``. Epoch ``e``
  shuffles with ``fold_in(key, e)``, so the key is never consumed and an interrupted run resumes bit for bit.
- :func:`make_train_epoch` returns the jitted epoch: the data sit on device as arguments, mini-batches are
  gathered by index inside a ``lax.scan``, and per-step losses, gradient norms and learning rates come back
  as arrays, so the host never syncs inside the epoch.
- :func:`fit` runs epochs with a progress bar, evaluates every ``eval_every`` epochs, records a history,
  checkpoints (:mod:`fflab.checkpoint`), calls a callback, snapshots parameters, and stops on a non-finite
  loss with :class:`NonFiniteLossError` naming the epoch and step.
- :func:`lanes` and :func:`lane`: one training state per hyperparameter value, trained together by a
  vmapped epoch (``make_train_epoch(..., lanes=True)``) at the cost of one compilation.
- A :class:`Monitor` measures something every ``every`` steps from inside the compiled epoch (under
  ``lax.cond``, so the other steps pay nothing), carrying its own state from record to record; ``fit(...,
  monitor=...)`` puts its records into the history. fflab defines the protocol only: the sharpness tracker
  of Cohen et al. (2021) is :func:`analysis.sharpness.tracker`.

Data-parallel training over several devices: pass ``mesh`` (``analysis.data_mesh(n)``, a ``jax.sharding.Mesh``
with a ``"data"`` axis); each mini-batch is split across that axis, the parameters are replicated, and
XLA all-reduces the gradient.

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
    Cohen, Kaur, Li, Kolter & Talwalkar (2021), Gradient descent on neural networks typically occurs at the
    edge of stability. ICLR (sharpness measured every k steps during training, what monitors are for).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fflab import checkpoint, data, options
from fflab.errors import NonFiniteLossError

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "EpochStats",
    "FitResult",
    "Monitor",
    "NonFiniteLossError",
    "TrainState",
    "evaluate",
    "fit",
    "freeze",
    "init_state",
    "lane",
    "lanes",
    "learning_rate",
    "make_optimizer",
    "make_schedule",
    "make_train_epoch",
    "restore",
]

OPTIMIZERS = options.OPTIMIZERS
SCHEDULES = options.SCHEDULES


class TrainState(NamedTuple):
    """Everything training needs to continue, as a pytree.

    Attributes:
        params: the model's parameter pytree.
        opt_state: the optax optimiser state.
        step: int32 scalar, optimiser steps taken.
        epoch: int32 scalar, epochs completed.
        key: PRNG key of the run; epoch ``e`` shuffles with ``jax.random.fold_in(key, e)`` and the key itself
            never changes, so the data order of any epoch depends only on ``(key, e)``.
        model_state: ``None`` for a stateless loss; otherwise the state the stateful loss takes and returns.
    """

    params: Any
    opt_state: optax.OptState
    step: jax.Array
    epoch: jax.Array
    key: jax.Array
    model_state: Any = None


class EpochStats(NamedTuple):
    """Per-step records of one epoch, each of shape ``(steps,)``.

    Attributes:
        loss: mini-batch loss before the step's update (no weight-decay term).
        grad_norm: global L2 norm of that mini-batch gradient (before clipping or decay); NaN when the
            epoch was built with ``record_grad_norm=False``.
        learning_rate: the learning rate the step used (NaN if the optimiser does not expose one).
        records: ``None`` without a monitor; with one, ``{name: (steps,)}`` of the monitor's records, in the
            loss's dtype, at the steps it measured (``step % monitor.every == 0``) and NaN at the others.
    """

    loss: jax.Array
    grad_norm: jax.Array
    learning_rate: jax.Array
    records: dict[str, jax.Array] | None = None


class Monitor(Protocol):
    """What training measures every ``every`` steps from inside the compiled epoch.

    A monitor is a pytree: its arrays (a data subset, a key) are leaves, so they enter the compiled epoch as
    arguments, and its settings are static (e.g. a dataclass registered with
    ``jax.tree_util.register_dataclass``). Its state (e.g. the last eigenvector, for a warm start) is passed
    in and returned like the training state. At global step ``t`` with ``t % every == 0`` the epoch calls
    ``monitor(monitor_state, view)`` under ``lax.cond`` (the other steps skip it), where ``view`` is a
    :class:`TrainState` with the parameters the step starts from (those its loss and gradient are taken at),
    the optimiser state *after* the step's update (which holds the preconditioner the update used, e.g.
    Adam's ``nu``), ``step = t`` (updates before this one), and the model state before the step. The
    records are scalars; fflab stores them in
    :attr:`EpochStats.records` and :func:`fit` in its history. fflab does not import :mod:`analysis`: build
    the monitor there (:func:`analysis.sharpness.tracker`) and pass it in.

    Attributes:
        every: record every ``every`` optimiser steps, starting with step 0 (the initial parameters).
    """

    every: int

    def init(self, state: TrainState) -> Any:
        """The monitor's first state for a training state (vmap it over a stack of :func:`lanes`)."""

    def __call__(self, monitor_state: Any, view: TrainState) -> tuple[Any, dict[str, jax.Array]]:
        """``(new monitor state, {name: scalar})`` at one step; must be traceable."""


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
    options.check("schedule", name, SCHEDULES)
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
    options.check("optimizer", name, OPTIMIZERS)
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
    params, optimizer: optax.GradientTransformation, key: jax.Array | int, model_state: Any = None
) -> TrainState:
    """A fresh :class:`TrainState` at step 0, epoch 0.

    Args:
        params: initial parameters (any pytree of floating arrays).
        optimizer: any ``optax.GradientTransformation``.
        key: the shuffling key (or an int seed for ``jax.random.key``); use a key independent of the one
            that initialised ``params``.
        model_state: ``None`` to train a stateless ``loss_fn(params, *batch)``; anything else makes training
            use the stateful form ``loss_fn(params, model_state, *batch) -> (loss, model_state)``.
    """
    if isinstance(key, int | np.integer):
        key = jax.random.key(int(key))
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params has no arrays to train")
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"params must be floating arrays, got {jnp.result_type(leaf)} at params{jax.tree_util.keystr(path)}"
            )
    params = _strong(params)
    return TrainState(
        params=params,
        opt_state=_strong(optimizer.init(params)),
        step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        key=key,
        model_state=None if model_state is None else _strong(model_state),
    )


@functools.lru_cache(maxsize=64)
def freeze(loss_fn: Callable) -> Callable:
    """A stateful training loss as a plain scalar loss for :mod:`analysis`: ``loss(params, model_state, *batch)``.

    The model state becomes a data argument (not a constant of the compiled program) and the state the loss
    returns is dropped: the Hessian is taken at fixed state, in whatever mode ``loss_fn`` runs (batch norm's
    training-mode loss normalises with the statistics of the batch itself; pass a preset's ``eval_loss_fn``
    for the running averages). Equal arguments return the same function, so analysis reuses its programs.

    Example::

        model = fflab.classifier("relu", "batchnorm")
        matvec, dim = analysis.hessian_operator(train.freeze(model.loss_fn), params, model_state, x, y)
    """

    def frozen(params, model_state, *batch):
        return loss_fn(params, model_state, *batch)[0]

    frozen.__doc__ = f"{getattr(loss_fn, '__name__', 'loss_fn')} at a fixed model state"
    return frozen


def _check_mesh(mesh: Mesh | None, batch_size: int) -> None:
    if mesh is None:
        return
    if "data" not in mesh.axis_names:
        raise ValueError(f"the mesh needs a 'data' axis, got axes {mesh.axis_names}")
    n = mesh.shape["data"]
    if batch_size % n:
        raise ValueError(f"batch_size {batch_size} must be divisible by the {n} devices of the mesh")


def _check_loss_fn(loss_fn) -> None:
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function loss_fn(params, *batch), got {type(loss_fn).__name__}")
    try:
        hash(loss_fn)
    except TypeError:
        raise ValueError("loss_fn must be hashable (a plain function or functools.partial)") from None


def make_train_epoch(
    optimizer: optax.GradientTransformation,
    *,
    loss_fn: Callable,
    batch_size: int,
    mesh: Mesh | None = None,
    record_grad_norm: bool = True,
    lanes: bool = False,
    monitor: Monitor | None = None,
) -> Callable[..., tuple]:
    """The jitted function that trains one epoch.

    Args:
        optimizer: any ``optax.GradientTransformation``.
        loss_fn: the loss in the stateless or stateful form (module docstring); the state passed to the
            epoch decides which.
        batch_size: samples per mini-batch; the last ``n % batch_size`` samples of each shuffle are dropped.
        mesh: a mesh with a ``"data"`` axis to split each mini-batch across devices; ``batch_size`` must be
            divisible by its size. ``None``: no constraint (one device).
        record_grad_norm: compute every step's global gradient norm for :class:`EpochStats`. It is a
            reduction over all parameters per step, about 15% of an epoch of the 784-225-144-10 net on a
            2-core CPU (``python -m benchmarks.train_throughput``); ``False`` records NaN instead and
            trains identically.
        lanes: train a stack of states (:func:`lanes`) together, one lane per leading index, on the same
            mini-batches (``jax.vmap`` over the state).
        monitor: a :class:`Monitor` to run every ``monitor.every`` steps inside the epoch (e.g.
            :func:`analysis.sharpness.tracker`); the epoch then takes and returns its state, see Returns. With
            ``lanes`` each lane has its own monitor state (``jax.vmap(monitor.init)(states)``), the lanes
            share the monitor's data, and all lanes measure at the same steps.

    Returns:
        ``train_epoch(state, *data) -> (state, stats)`` with every data array on device and sharing the
        leading sample axis. It shuffles with ``fold_in(state.key, state.epoch)``
        (:func:`fflab.data.batch_indices`), runs ``n // batch_size`` steps in one ``lax.scan``, and returns
        the state with ``epoch + 1`` and the per-step :class:`EpochStats` (with a leading lane axis when
        ``lanes``). It compiles once per data shape and dtype, and equal arguments return the same
        function, so its compiled programs are reused.

        With a monitor: ``train_epoch(state, monitor_state, *data) -> (state, monitor_state, stats)``,
        starting from ``monitor_state = monitor.init(state)``; ``stats.records`` holds the records. It
        compiles once per monitor configuration (the monitor's static settings) and data shapes.

    Example::

        tracker = analysis.sharpness.tracker(loss_fn, (x[:500], y[:500]), every=20, key=jax.random.key(1))
        epoch = train.make_train_epoch(opt, loss_fn=loss_fn, batch_size=len(x), monitor=tracker)
        state, tracked = train.init_state(params, opt, key), None
        tracked = tracker.init(state)
        for _ in range(100):
            state, tracked, stats = epoch(state, tracked, x, y)  # stats.records["sharpness"]
    """
    _check_loss_fn(loss_fn)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    _check_mesh(mesh, batch_size)
    if monitor is None:
        return _train_epoch(optimizer, loss_fn, batch_size, mesh, bool(record_grad_norm), bool(lanes))
    _check_monitor(monitor)
    epoch = _train_epoch(optimizer, loss_fn, batch_size, mesh, bool(record_grad_norm), bool(lanes), True)
    return functools.partial(epoch, monitor)


def _check_monitor(monitor) -> None:
    every = getattr(monitor, "every", None)
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
        raise ValueError(f"monitor.every must be a positive integer, got {every!r}")
    if not (callable(monitor) and callable(getattr(monitor, "init", None))):
        raise ValueError(
            "a monitor needs init(state) and __call__(monitor_state, view) (train.Monitor), got "
            f"{type(monitor).__name__}"
        )


def _observe(monitor, monitor_state, view: TrainState, dtype):
    """The monitor's records at ``view.step`` if it is due there (``lax.cond``), else NaNs of the same shapes."""

    def measure(operands):
        old, view = operands
        new, records = monitor(old, view)
        # Same types as the state that came in, so that both branches (and the scan carry) agree.
        new = jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), new, old)
        return new, {name: jnp.asarray(value, dtype) for name, value in records.items()}

    operands = (monitor_state, view)
    shapes = jax.eval_shape(measure, operands)[1]

    def skip(operands):
        return operands[0], {name: jnp.full(s.shape, jnp.nan, s.dtype) for name, s in shapes.items()}

    return jax.lax.cond(view.step % monitor.every == 0, measure, skip, operands)


def _stateful(loss_fn: Callable, has_state: bool) -> Callable:
    """``loss_fn`` in the stateful form (a stateless one passes ``None`` through)."""
    if has_state:
        return loss_fn

    def stateless(params, model_state, *batch):
        return loss_fn(params, *batch), model_state

    return stateless


@functools.lru_cache(maxsize=64)
def _train_epoch(optimizer, loss_fn, batch_size, mesh, record_grad_norm, lanes, monitored=False):
    """:func:`make_train_epoch` after its checks, memoised so that equal arguments share compiled programs."""
    split = NamedSharding(mesh, PartitionSpec("data")) if mesh is not None else None

    def run(state: TrainState, batch_data, monitor=None, monitor_state=None, first_step=None):
        grad_fn = jax.value_and_grad(_stateful(loss_fn, state.model_state is not None), has_aux=True)
        n = batch_data[0].shape[0]
        idx = data.batch_indices(jax.random.fold_in(state.key, state.epoch), n, batch_size)

        def step(carry, xs):
            if monitor is None:
                (params, opt_state, model_state), batch = carry, xs
            else:
                (params, opt_state, model_state, monitor_state), (i, batch) = carry, xs
                before = (params, model_state)
            batch = tuple(jnp.take(a, batch, axis=0) for a in batch_data)
            if split is not None:
                batch = tuple(jax.lax.with_sharding_constraint(a, split) for a in batch)
            (loss, model_state), grads = grad_fn(params, model_state, *batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            lr = learning_rate(opt_state).astype(loss.dtype)
            grad_norm = optax.tree.norm(grads) if record_grad_norm else jnp.full((), jnp.nan)
            if monitor is None:
                stats = EpochStats(loss, grad_norm.astype(loss.dtype), lr)
                return (params, opt_state, model_state), stats
            # The step's parameters and model state, and the optimiser state after its update (Monitor).
            view = TrainState(before[0], opt_state, first_step + i, state.epoch, state.key, before[1])
            monitor_state, records = _observe(monitor, monitor_state, view, loss.dtype)
            stats = EpochStats(loss, grad_norm.astype(loss.dtype), lr, records)
            return (params, opt_state, model_state, monitor_state), stats

        if monitor is None:
            carry, xs = (state.params, state.opt_state, state.model_state), idx
        else:
            carry = (state.params, state.opt_state, state.model_state, monitor_state)
            xs = (jnp.arange(idx.shape[0], dtype=state.step.dtype), idx)
        carry, stats = jax.lax.scan(step, carry, xs)
        steps = state.step + idx.shape[0]
        new = TrainState(*carry[:2], steps, state.epoch + 1, state.key, carry[2])
        return (new, stats) if monitor is None else (new, carry[3], stats)

    if monitored:
        def monitored_epoch(monitor, state, monitor_state, *batch_data):
            if lanes:  # the lanes take the same steps, so the step count (and lax.cond) stays unbatched
                first = state.step[0]
                return jax.vmap(lambda s, m: run(s, batch_data, monitor, m, first))(state, monitor_state)
            return run(state, batch_data, monitor, monitor_state, state.step)

        return jax.jit(monitored_epoch)

    def train_epoch(state: TrainState, *batch_data) -> tuple[TrainState, EpochStats]:
        return run(state, batch_data)

    if lanes:
        def lanes_epoch(states, *batch_data):
            return jax.vmap(lambda s: train_epoch(s, *batch_data))(states)

        return jax.jit(lanes_epoch)
    return jax.jit(train_epoch)


def lanes(state: TrainState, **hyperparams) -> TrainState:
    """One copy of ``state`` per hyperparameter value, stacked along a new leading (lane) axis.

    Each lane starts from the same parameters and key, with the named ``optax.inject_hyperparams`` values of
    its optimiser state set to that lane's entry (``optax.tree_utils.tree_set``); train all lanes at once
    with ``make_train_epoch(..., lanes=True)``, one compiled program for the whole sweep.

    Args:
        state: a state whose optimiser injects the named hyperparameters, e.g.
            ``optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)``.
        **hyperparams: name -> 1-D sequence of values, all of the same length.

    Returns:
        A :class:`TrainState` whose every leaf has a leading axis of that length.
    """
    if not hyperparams:
        raise ValueError("lanes needs at least one hyperparameter, e.g. learning_rate=[0.01, 0.1]")
    values = {k: jnp.asarray(v) for k, v in hyperparams.items()}
    sizes = {k: v.shape for k, v in values.items()}
    if any(len(s) != 1 for s in sizes.values()) or len({s[0] for s in sizes.values()}) != 1:
        raise ValueError(f"each hyperparameter needs a 1-D sequence of one common length, got shapes {sizes}")
    dtypes = {}
    for name in values:
        current = optax.tree_utils.tree_get(state.opt_state, name, filtering=_value_not_state)
        if current is None:
            raise ValueError(f"the optimiser state injects no hyperparameter {name!r}")
        dtypes[name] = jnp.result_type(current)

    def one(vals):
        hyper = {k: v.astype(dtypes[k]) for k, v in vals.items()}
        return state._replace(opt_state=optax.tree_utils.tree_set(state.opt_state, _value_not_state, **hyper))

    return jax.vmap(one)(values)


def _value_not_state(_, value) -> bool:
    # A schedule's own state is also filed under its hyperparameter's name; the value is not a tuple.
    return not isinstance(value, tuple)


@jax.jit
def lane(states, i):
    """Lane ``i`` of a stacked pytree (from :func:`lanes` or a lanes epoch), as one compiled program."""
    return jax.tree_util.tree_map(lambda a: a[i], states)


@functools.lru_cache(maxsize=64)
def _evaluator(metrics_fn: Callable, has_state: bool):
    if has_state:
        return jax.jit(metrics_fn)
    return jax.jit(lambda params, model_state, *batch: metrics_fn(params, *batch))


def evaluate(metrics_fn: Callable, params, *batch, model_state: Any = None) -> dict[str, float]:
    """``metrics_fn`` on a whole data set in one jitted pass, as Python floats.

    Args:
        metrics_fn: ``metrics_fn(params, *batch) -> {name: scalar}`` or, with ``model_state``,
            ``metrics_fn(params, model_state, *batch)``; a loss function returning a scalar gives
            ``{"loss": value}``.
        params: the parameters.
        *batch: data arrays (floating ones are cast to the parameters' dtype).
        model_state: the model state of a stateful model.

    Returns:
        ``{name: float}``.
    """
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    batch = tuple(_as_device(a, dtype) for a in batch)
    out = _evaluator(metrics_fn, model_state is not None)(params, model_state, *batch)
    if not isinstance(out, dict):
        out = {"loss": out}
    return {k: float(v) for k, v in out.items()}


# --- the loop ---


def _as_device(a, dtype):
    a = a if isinstance(a, jax.Array) else np.asarray(a)
    if jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != dtype:
        return jnp.asarray(a, dtype)
    return jnp.asarray(a)


def _check_data(name: str, arrays, *, dtype, required: bool = False) -> tuple | None:
    """The data arrays on device, or ``None`` for an absent or empty set; ValueError for bad shapes."""
    if arrays is None:
        if required:
            raise ValueError(f"the {name} data are missing")
        return None
    if not isinstance(arrays, tuple | list) or not arrays:
        raise ValueError(f"{name} data must be a tuple of arrays such as (x, y), got {type(arrays).__name__}")
    shapes = [np.shape(a) for a in arrays]
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(f"{name} data arrays must share a leading sample axis, got shapes {shapes}")
    if shapes[0][0] == 0:
        if required:
            raise ValueError(f"the {name} set is empty")
        return None
    return tuple(_as_device(a, dtype) for a in arrays)


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _all_finite(tree) -> bool:
    """Every floating leaf finite, checked on the host: a compiled check costs a compilation (about 0.5 s on a
    2-core CPU) for every new params structure, more than the copy of the parameters once an epoch."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return all(bool(np.isfinite(leaf).all()) for leaf in jax.device_get(leaves))


def fit(
    state: TrainState,
    optimizer: optax.GradientTransformation,
    train: tuple,
    *,
    loss_fn: Callable,
    epochs: int,
    batch_size: int,
    metrics_fn: Callable | None = None,
    eval_every: int = 1,
    mesh: Mesh | None = None,
    test: tuple | None = None,
    val: tuple | None = None,
    history: dict[str, list] | None = None,
    callback: Callable[[int, TrainState], None] | None = None,
    snapshot_epochs: Iterable[int] = (),
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    config: dict | None = None,
    metadata: dict | None = None,
    progress: bool = True,
    record_grad_norm: bool = True,
    monitor: Monitor | None = None,
) -> FitResult:
    """Train until ``state.epoch == epochs``, evaluating and checkpointing as asked.

    Resuming is calling ``fit`` again with a restored state and history (:func:`restore`): the run continues
    from ``state.epoch`` and, because epoch ``e`` shuffles with ``fold_in(state.key, e)``, ends with the same
    parameters, bit for bit, as a run that was never interrupted.

    Args:
        state: from :func:`init_state` or :func:`restore`; ``state.model_state`` picks the loss form.
        optimizer: the transformation ``state.opt_state`` belongs to.
        train: the training data, a tuple of arrays sharing the leading sample axis, e.g. ``(x, y)``;
            floating arrays are cast to the parameters' dtype; all are kept on device for the whole run.
        loss_fn: ``loss_fn(params, *batch) -> scalar``, or ``loss_fn(params, model_state, *batch) ->
            (loss, model_state)`` for a stateful model (module docstring). Must be hashable.
        epochs: the total number of epochs (not the number still to run).
        batch_size: samples per step; each epoch runs ``n // batch_size`` steps.
        metrics_fn: what to evaluate on whole data sets: ``metrics_fn(params, [model_state,] *batch) ->
            {name: scalar}`` (e.g. a preset's ``{"loss", "error"}``); default the loss itself, ``{"loss"}``
            (for a stateful loss, in the mode it trains in).
        eval_every: evaluate the training set (and ``test``, ``val``) after every ``eval_every``-th epoch
            and after the last. On Fashion-MNIST the whole-training-set pass costs about 40% of an epoch
            on a 2-core CPU; the default 1 keeps the lecture's per-epoch learning curves.
        mesh: a device mesh with a ``"data"`` axis for data-parallel training: the data and state are
            replicated over it and each mini-batch is split across it. The result equals one-device
            training up to float rounding.
        test, val: optional data tuples like ``train`` (empty sets are skipped).
        history: the history so far, when resuming.
        callback: ``callback(epoch, state)`` after each epoch, once the epoch is recorded and checkpointed
            (``epoch`` is 1-based, equal to ``state.epoch``). Raising from it stops training; the
            checkpoint of that epoch is already on disk.
        snapshot_epochs: epochs after which to copy the parameters to the host into ``result.snapshots``
            (0 means the initial parameters), e.g. ``(1, 2, 3, 4, 5, 10, 50)`` for the lecture's W1 figure.
            Snapshots live in memory only; epochs already done before a resume are not re-snapshotted.
        checkpoint_path: if given, the state is saved there (:mod:`fflab.checkpoint`, atomically) every
            ``checkpoint_every`` epochs and after the last, with ``{"epoch", "history", "config"}`` and
            ``metadata`` in its header.
        checkpoint_every: epochs between checkpoints.
        config: JSON-able run configuration stored with each checkpoint.
        metadata: more JSON-able entries for the checkpoint's header (the command line records the data).
        progress: show a tqdm progress bar (on stderr).
        record_grad_norm: record the mini-batch gradient norms (:func:`make_train_epoch`); ``False``
            trains about 15% faster and leaves ``None`` in ``history["grad_norm"]``.
        monitor: a :class:`Monitor` run every ``monitor.every`` steps inside the compiled epoch, e.g. the
            sharpness tracker ``analysis.sharpness.tracker(loss_fn, (x_sub, y_sub), every=20, key=key)``.
            Its state starts from ``monitor.init(state)`` at each call of ``fit`` and is not checkpointed (a
            resumed run starts it afresh: for the tracker, one cold eigenvalue solve). Epochs without a due
            step run the plain compiled epoch, so they cost what they cost without a monitor.

    Returns:
        :class:`FitResult` ``(state, history, snapshots)``. ``history`` maps each key to a list. One entry
        per epoch: ``epoch``; ``batch_loss`` (mean mini-batch loss over the epoch); ``grad_norm`` (mean
        mini-batch gradient norm); ``learning_rate`` (the rate of the epoch's last step);
        ``train_seconds`` (the epoch's training steps; the first epoch also compiles) and
        ``eval_seconds`` (its evaluation, 0 when it had none). One entry per evaluated epoch:
        ``eval_epoch`` and ``{set}_{metric}`` for each set (``train``, ``test``, ``val``) and metric, e.g.
        ``train_loss``, ``test_error``. With a monitor, one entry per record: ``monitor_step`` (the global
        step it measured, before that step's update) and one key per record name (e.g. ``sharpness``).

    Raises:
        NonFiniteLossError: a mini-batch loss or gradient, or a parameter after an epoch, is NaN or
            infinite. No checkpoint is written for that epoch, so the last good one stays on disk.
        ValueError: bad shapes or arguments.
    """
    from fflab.progress import tqdm

    _check_loss_fn(loss_fn)
    epochs, batch_size = int(epochs), int(batch_size)
    checkpoint_every, eval_every = int(checkpoint_every), int(eval_every)
    if checkpoint_every < 1 or eval_every < 1:
        raise ValueError(f"checkpoint_every and eval_every must be >= 1, got {checkpoint_every}, {eval_every}")
    dtype = jax.tree_util.tree_leaves(state.params)[0].dtype
    train_data = _check_data("training", train, dtype=dtype, required=True)
    n = train_data[0].shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be between 1 and the {n} training samples, got {batch_size}")
    sets = {"train": train_data, "test": _check_data("test", test, dtype=dtype),
            "val": _check_data("validation", val, dtype=dtype)}
    sets = {name: arrays for name, arrays in sets.items() if arrays is not None}
    train_epoch = make_train_epoch(
        optimizer, loss_fn=loss_fn, batch_size=batch_size, mesh=mesh, record_grad_norm=record_grad_norm
    )
    if monitor is not None:
        # Epochs without a due step run the plain program: the monitored one reserves the monitor's temporaries
        # on every call, which costs a short (e.g. full-batch, one-step) epoch noticeably.
        monitored_epoch = make_train_epoch(
            optimizer, loss_fn=loss_fn, batch_size=batch_size, mesh=mesh, record_grad_norm=record_grad_norm,
            monitor=monitor,
        )
    has_state = state.model_state is not None
    metrics = metrics_fn if metrics_fn is not None else _default_metrics(loss_fn, has_state)
    if mesh is not None:
        replicated = NamedSharding(mesh, PartitionSpec())
        state = jax.device_put(state, replicated)
        sets = {name: jax.device_put(arrays, replicated) for name, arrays in sets.items()}
    history = {k: list(v) for k, v in (history or {}).items()}
    monitor_state = None if monitor is None else _strong(monitor.init(state))
    if mesh is not None and monitor is not None:
        monitor_state = jax.device_put(monitor_state, NamedSharding(mesh, PartitionSpec()))
    snapshot_epochs = {int(e) for e in snapshot_epochs}
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    last_good = ckpt if ckpt is not None and ckpt.exists() else None

    start = int(state.epoch)
    if start == 0:  # bad data (labels outside 0..C-1, say) show before any step, not as a step-size problem
        initial = evaluate(metrics, state.params, *sets["train"], model_state=state.model_state)
        if not all(math.isfinite(v) for v in initial.values()):
            raise ValueError(
                f"the metrics {initial} are not finite at the initial parameters on the training data: check "
                "the data (labels outside 0..classes-1?) and the initial parameters"
            )
    snapshots = {0: _host(state.params)} if start == 0 and 0 in snapshot_epochs else {}
    bar = tqdm(total=epochs, initial=start, desc="train", unit="epoch", disable=not progress, leave=False)
    try:
        for epoch in range(start + 1, epochs + 1):
            tic = time.perf_counter()
            if monitor is not None and (-int(state.step)) % monitor.every < n // batch_size:  # a step is due
                new, monitor_state, stats = monitored_epoch(state, monitor_state, *sets["train"])
            else:
                new, stats = train_epoch(state, *sets["train"])
            stats = EpochStats(*(np.asarray(s) for s in stats[:3]), _host(stats.records))  # one host sync
            bad = ~np.isfinite(stats.loss)
            if record_grad_norm:
                bad |= ~np.isfinite(stats.grad_norm)
            if bad.any() or not _all_finite(new.params):
                # A finite epoch whose parameters are not finite went wrong in its last update.
                i = int(np.argmax(bad)) if bad.any() else len(bad) - 1
                raise NonFiniteLossError(epoch, i + 1, len(bad), int(state.step) + i + 1, state, last_good)
            state = new
            record = {"epoch": epoch, "batch_loss": float(stats.loss.mean()),
                      "grad_norm": float(stats.grad_norm.mean()) if record_grad_norm else None,
                      "learning_rate": float(stats.learning_rate[-1]),
                      "train_seconds": time.perf_counter() - tic, "eval_seconds": 0.0}
            if epoch % eval_every == 0 or epoch == epochs:
                tic = time.perf_counter()
                record["eval_epoch"] = epoch
                for name, arrays in sets.items():
                    values = evaluate(metrics, state.params, *arrays, model_state=state.model_state)
                    record.update({f"{name}_{k}": v for k, v in values.items()})
                record["eval_seconds"] = time.perf_counter() - tic
            for k, v in record.items():
                history.setdefault(k, []).append(v)
            if stats.records is not None:
                first = int(state.step) - len(stats.loss)  # state is the new one by now
                for i in range(len(stats.loss)):
                    if (first + i) % monitor.every == 0:
                        history.setdefault("monitor_step", []).append(first + i)
                        for name, values in stats.records.items():
                            history.setdefault(name, []).append(float(values[i]))
            if ckpt is not None and (epoch % checkpoint_every == 0 or epoch == epochs):
                meta = {**(metadata or {}), "epoch": epoch, "history": history, "config": config}
                checkpoint.save(ckpt, state, metadata=meta)
                last_good = ckpt
            if epoch in snapshot_epochs:
                snapshots[epoch] = _host(state.params)
            bar.update(1)
            shown = {k: f"{record[k]:.4g}" for k in ("train_loss", "test_error") if k in record}
            bar.set_postfix(shown or {"batch_loss": f"{record['batch_loss']:.4g}"})
            if callback is not None:
                callback(epoch, state)
    finally:
        bar.close()
    return FitResult(state, history, snapshots)


@functools.lru_cache(maxsize=64)
def _default_metrics(loss_fn: Callable, has_state: bool) -> Callable:
    if has_state:
        return lambda params, model_state, *batch: {"loss": loss_fn(params, model_state, *batch)[0]}
    return lambda params, *batch: {"loss": loss_fn(params, *batch)}


def restore(path: str | os.PathLike, template: TrainState) -> tuple[TrainState, dict[str, list], dict | None]:
    """Load a checkpoint written by :func:`fit` into the structure of ``template``.

    Args:
        path: the checkpoint file.
        template: a state of the same model and optimiser, e.g. from :func:`init_state`.

    Returns:
        ``(state, history, config)`` to pass back into :func:`fit`.

    Raises:
        fflab.errors.CheckpointError: missing, corrupt or mismatched checkpoint.
    """
    state, meta = checkpoint.load(path, template)
    return TrainState(*state), meta.get("history", {}), meta.get("config")
