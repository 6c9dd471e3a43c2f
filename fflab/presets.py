"""fflab's MLP classifiers as presets: each bundles an init, a forward pass and the losses :func:`fflab.train.fit`
and :mod:`analysis` take.

A preset is one model among any other: it builds nothing a user could not write by hand (see README's own
model), and the command line and the experiments use it instead of writing the same losses again.

``model = classifier("relu")`` (plain), ``classifier("relu", "batchnorm")`` or ``classifier("relu",
"transform")`` [Raiko, Valpola & LeCun 2012; with ``transform_gamma=True``, Vatanen et al. 2013] gives a
:class:`Classifier`:

- ``params, model_state = model.init(key, [784, 225, 144, 10])``; ``model_state`` is ``None`` for the plain
  MLP (training and analysis then use the stateless loss form), else the normalisation's state;
- ``model.loss_fn``: the mean softmax cross-entropy in :func:`fflab.train.fit`'s form: ``loss_fn(params, x, y)``
  (plain) or ``loss_fn(params, model_state, x, y) -> (loss, model_state)`` (batch norm in training mode, with
  mini-batch statistics and a running-average update; the transformed net re-estimates its transformations
  on the mini-batch first);
- ``model.eval_loss_fn``: the same loss in evaluation mode (batch norm with its running averages; the state
  comes back unchanged);
- ``model.metrics_fn``: ``{"loss", "error"}`` in evaluation mode, the error in percent;
- ``model.apply(params, model_state, x, train=False) -> (logits, model_state)``.

Equal arguments return the same object (and the same function objects), so compiled programs are shared.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax

from fflab import losses, mlp, norm, options

__all__ = ["Classifier", "classifier"]


class Classifier(NamedTuple):
    """An MLP classifier preset; see the module docstring for each function's form."""

    init: Callable
    apply: Callable
    loss_fn: Callable
    eval_loss_fn: Callable
    metrics_fn: Callable
    stateful: bool


def _metrics(logits, y):
    return {"loss": losses.cross_entropy(logits, y), "error": 100.0 * losses.error_rate(logits, y)}


# Module-level functions bound with functools.partial: equal presets give equal (hashable) functions.


def _plain_init(key, sizes, *, init="glorot_relu", scale=1.0, dtype=None):
    return mlp.init(key, sizes, init=init, scale=scale, dtype=dtype), None


def _plain_apply(params, model_state, x, *, activation, train=False):
    return mlp.apply(params, x, activation=activation), model_state


def _plain_loss(params, x, y, *, activation):
    return losses.cross_entropy(mlp.apply(params, x, activation=activation), y)


def _plain_metrics(params, x, y, *, activation):
    return _metrics(mlp.apply(params, x, activation=activation), y)


def _norm_init(key, sizes, *, kind, init="glorot_relu", scale=1.0, dtype=None):
    return norm.init(key, sizes, norm=kind, init=init, scale=scale, dtype=dtype)


def _norm_apply(params, model_state, x, *, kind, activation, bn_momentum, train=False):
    return norm.apply(params, model_state, x, norm=kind, activation=activation, train=train,
                      momentum=bn_momentum)


def _norm_loss(params, model_state, x, y, *, kind, activation, bn_momentum, transform_momentum, transform_gamma,
               transform_centre, train):
    if kind == "transform" and train:
        # Re-estimate the transformations on this mini-batch (they are statistics, not parameters: no
        # gradient flows through them), then take the loss of the same function in the new coordinates.
        model_state = norm.transform_update(jax.lax.stop_gradient(params), model_state, x,
                                            activation=activation, momentum=transform_momentum,
                                            gamma=transform_gamma, centre=transform_centre)
    logits, model_state = _norm_apply(params, model_state, x, kind=kind, activation=activation,
                                      bn_momentum=bn_momentum, train=train)
    return losses.cross_entropy(logits, y), model_state


def _norm_metrics(params, model_state, x, y, *, kind, activation, bn_momentum):
    logits, _ = _norm_apply(params, model_state, x, kind=kind, activation=activation, bn_momentum=bn_momentum)
    return _metrics(logits, y)


def classifier(
    activation: str = "relu",
    norm: str | None = None,
    *,
    bn_momentum: float = 0.9,
    transform_momentum: float = 0.9,
    transform_gamma: bool = False,
    transform_centre: bool = True,
) -> Classifier:
    """The MLP classifier preset for ``activation`` and ``norm``.

    Args:
        activation: hidden non-linearity, one of :data:`fflab.options.ACTIVATIONS`.
        norm: ``None`` (plain MLP), ``"batchnorm"`` [Ioffe & Szegedy 2015] or ``"transform"``
            [Raiko, Valpola & LeCun 2012].
        bn_momentum: weight of the old running statistics in batch norm's update (Ioffe & Szegedy use a
            moving average; 0 keeps only the last mini-batch).
        transform_momentum: weight of the old transformations when each training step re-estimates them on
            its mini-batch.
        transform_gamma: also re-estimate each unit's output scale ``gamma``, Vatanen et al.'s (2013) third
            transformation (see :func:`fflab.norm.transform_update`).
        transform_centre: also centre the inputs on the running mean of the mini-batches.

    Returns:
        A :class:`Classifier`; equal arguments give the same object.
    """
    if norm != "transform":  # options another kind ignores: equal presets, one object, shared programs
        transform_momentum, transform_gamma, transform_centre = 0.9, False, True
    return _classifier(activation, norm, float(bn_momentum), float(transform_momentum), bool(transform_gamma),
                       bool(transform_centre))


@functools.cache
def _classifier(activation, norm, bn_momentum, transform_momentum, transform_gamma, transform_centre) -> Classifier:
    options.check("activation", activation, options.ACTIVATIONS)
    if norm is None:
        loss = functools.partial(_plain_loss, activation=activation)
        return Classifier(
            init=_plain_init,
            apply=functools.partial(_plain_apply, activation=activation),
            loss_fn=loss,
            eval_loss_fn=loss,
            metrics_fn=functools.partial(_plain_metrics, activation=activation),
            stateful=False,
        )
    options.check("norm", norm, options.NORMS)
    for name, value in (("bn_momentum", bn_momentum), ("transform_momentum", transform_momentum)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must lie in [0, 1), got {value}")
    common = {"kind": norm, "activation": activation, "bn_momentum": bn_momentum}
    loss = functools.partial(_norm_loss, **common, transform_momentum=transform_momentum,
                             transform_gamma=transform_gamma, transform_centre=transform_centre)
    return Classifier(
        init=functools.partial(_norm_init, kind=norm),
        apply=functools.partial(_norm_apply, **common),
        loss_fn=functools.partial(loss, train=True),
        eval_loss_fn=functools.partial(loss, train=False),
        metrics_fn=functools.partial(_norm_metrics, **common),
        stateful=True,
    )
