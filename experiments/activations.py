"""Sigmoid, tanh and relu with their derivatives (lecture: "Non-linearity and training")."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from fflab import mlp

NAME = "activations"
DESCRIPTION = "Sigmoid, tanh and relu and their derivatives: sigmoid and tanh saturate, relu does not"
SLIDE = "Non-linearity and training: logistic, tanh, relu; relu is replacing old sigmoid and tanh"
PAPERS = {}

DERIVATIVES = {  # the closed forms the autodiff derivatives are checked against
    "sigmoid": lambda a: jax.nn.sigmoid(a) * (1 - jax.nn.sigmoid(a)), "tanh": lambda a: 1 - jnp.tanh(a) ** 2,
    "relu": lambda a: (a > 0).astype(a.dtype)}
SATURATED = 0.01  # a derivative below this passes on less than 1% of the gradient


@dataclass(frozen=True)
class Config:
    span: float = 5.0  # the derivatives are read at a = +span
    num: int = 401


QUICK, FULL = Config(num=101), Config()


def main(config: Config, out_dir) -> dict:
    a = jnp.linspace(-config.span, config.span, config.num)
    values = {name: np.asarray(mlp.activation_fn(name)(a)) for name in DERIVATIVES}
    grads = {name: np.asarray(jax.vmap(jax.grad(mlp.activation_fn(name)))(a)) for name in DERIVATIVES}
    errors = {name: float(np.max(np.abs(grads[name] - np.asarray(d(a))))) for name, d in DERIVATIVES.items()}
    at_span = {name: float(grads[name][-1]) for name in DERIVATIVES}
    max_slope, relu_on = {k: float(grads[k].max()) for k in ("sigmoid", "tanh")}, grads["relu"][np.asarray(a) > 0]
    claims = [_common.claim(f"sigmoid and tanh saturate: their derivative at a = {config.span:g} is below "
                            f"{SATURATED}", {k: at_span[k] for k in ("sigmoid", "tanh")},
                            _common.both(*(_common.below(at_span[k], SATURATED) for k in ("sigmoid", "tanh"))))]
    checks = [_common.check("autodiff derivatives equal the closed forms (max abs error < 1e-6)", errors,
                            max(errors.values()) < 1e-6),
              _common.check("relu does not saturate: its derivative is 1 at every a > 0 (min over the grid)",
                            float(relu_on.min()), bool(np.all(relu_on == 1))),
              _common.check("the sigmoid's largest slope is 1/4, tanh's is 1 (within 1e-3)", max_slope,
                            abs(max_slope["sigmoid"] - 0.25) < 1e-3 and abs(max_slope["tanh"] - 1) < 1e-3)]
    results = {"a": a, "values": values, "derivatives": grads, "max_abs_error": errors, "at_span": at_span}
    return _common.save(NAME, config, results, claims, out_dir, checks=checks, plot=plot)


def plot(payload: dict, out_dir) -> None:
    plt, r = _common.style(), payload["results"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name in DERIVATIVES:
        axes[0].plot(r["a"], r["values"][name], label=name)
        axes[1].plot(r["a"], r["derivatives"][name], label=name)
    axes[1].axhline(SATURATED, color="k", lw=0.8, ls=":", label=f"saturated (< {SATURATED})")
    axes[0].set(title="activation f(a)", xlabel="a", ylabel="f(a)", ylim=(-1.2, 2.5))
    axes[1].set(title="derivative f'(a): sigmoid and tanh flatten out", xlabel="a", ylabel="f'(a)")
    axes[0].legend(), axes[1].legend(loc="center left")
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
