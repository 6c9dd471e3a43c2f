"""Sigmoid, tanh and relu with their derivatives (lecture: "Non-linearity and training")."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from fflab import mlp

NAME = "activations"
DESCRIPTION = "Sigmoid, tanh and relu and their derivatives, derivatives checked against closed forms"
SLIDE = "Non-linearity and training: logistic, tanh, relu"


@dataclass(frozen=True)
class Config:
    span: float = 5.0
    num: int = 401


QUICK = Config(num=101)
FULL = Config()

# Closed-form derivatives the autodiff result is checked against.
_DERIVATIVES = {
    "sigmoid": lambda a: jax.nn.sigmoid(a) * (1 - jax.nn.sigmoid(a)),
    "tanh": lambda a: 1 - jnp.tanh(a) ** 2,
    "relu": lambda a: (a > 0).astype(a.dtype),
}


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    a = jnp.linspace(-config.span, config.span, config.num)
    values, grads, errors = {}, {}, {}
    for name, closed_form in _DERIVATIVES.items():
        f = mlp.activation_fn(name)
        d = jax.vmap(jax.grad(f))(a)
        values[name] = np.asarray(f(a))
        grads[name] = np.asarray(d)
        errors[name] = float(jnp.max(jnp.abs(d - closed_form(a))))
    saturated = {  # derivative far from the origin: sigmoid and tanh saturate, relu does not (for a > 0)
        name: float(grads[name][-1]) for name in _DERIVATIVES
    }
    claims = [
        _common.claim("autodiff derivatives equal the closed forms (max abs error)", errors,
                      max(errors.values()) < 1e-6),
        _common.claim(f"sigmoid and tanh saturate: derivative at a={config.span:g} is below 0.01",
                      {k: saturated[k] for k in ("sigmoid", "tanh")},
                      saturated["sigmoid"] < 0.01 and saturated["tanh"] < 0.01),
        _common.claim("relu does not saturate for a > 0: derivative 1", saturated["relu"],
                      saturated["relu"] == 1.0),
        _common.claim("the sigmoid's largest slope is 1/4, tanh's is 1",
                      {k: float(grads[k].max()) for k in ("sigmoid", "tanh")},
                      abs(grads["sigmoid"].max() - 0.25) < 1e-3 and abs(grads["tanh"].max() - 1) < 1e-3),
    ]
    results = {"a": a, "values": values, "derivatives": grads, "max_abs_error": errors}
    payload = _common.save_results(NAME, config, results, claims, out_dir)
    plot(payload, out_dir)
    return payload


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r = payload["results"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name in _DERIVATIVES:
        axes[0].plot(r["a"], r["values"][name], label=name)
        axes[1].plot(r["a"], r["derivatives"][name], label=name)
    axes[0].set(title="activation f(a)", xlabel="a", ylabel="f(a)", ylim=(-1.2, 2.5))
    axes[1].set(title="derivative f'(a)", xlabel="a", ylabel="f'(a)")
    axes[0].legend()
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
