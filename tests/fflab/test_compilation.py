"""fflab.compilation.fast_compile: which flags it sets, when it declines, and that results do not change."""

import json
import os
import subprocess
import sys

import pytest

from fflab import compilation
from fflab.compilation import FAST_COMPILE_FLAGS, fast_compile


@pytest.fixture
def fresh(monkeypatch):
    """As if JAX had not started and no accelerator plugin were installed."""
    monkeypatch.setattr(compilation, "_backend_started", lambda: False)
    monkeypatch.setattr(compilation, "_accelerator_installed", lambda: False)


def test_adds_its_flags_and_keeps_the_users(fresh):
    env = {"XLA_FLAGS": "--xla_backend_optimization_level=2 --xla_dump_to=/tmp/x"}
    assert fast_compile(env)
    flags = env["XLA_FLAGS"].split()
    assert flags[:2] == ["--xla_backend_optimization_level=2", "--xla_dump_to=/tmp/x"]  # the user's level wins
    assert flags[2:] == ["--xla_cpu_use_fusion_emitters=false"]
    assert fast_compile(env) and env["XLA_FLAGS"].split() == flags  # idempotent
    env = {}
    assert fast_compile(env) and env["XLA_FLAGS"].split() == list(FAST_COMPILE_FLAGS)


def test_declines_when_turned_off_or_on_an_accelerator(fresh, monkeypatch):
    env = {"FFLAB_FAST_COMPILE": "0"}
    assert not fast_compile(env) and "XLA_FLAGS" not in env
    monkeypatch.setattr(compilation, "_accelerator_installed", lambda: True)
    env = {}
    assert not fast_compile(env) and "XLA_FLAGS" not in env
    env = {"JAX_PLATFORMS": "cpu"}  # a GPU machine told to use its CPU
    assert fast_compile(env) and env["XLA_FLAGS"].split() == list(FAST_COMPILE_FLAGS)


def test_declines_once_jax_has_started():
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # the test process's backend is up: XLA has read its flags
    env = {}
    assert not fast_compile(env) and env == {}


_PROBE = """
import json, sys
from fflab.compilation import fast_compile
applied = fast_compile()
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
w = jnp.sin(jnp.arange(1.0, 49.0)).reshape(6, 8)
x = jnp.cos(jnp.arange(1.0, 21.0)).reshape(5, 4)
def loss(p):
    logits = jnp.tanh(x @ p[:4]) @ p[4:].T
    return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])
hvp = jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1])(w, jnp.ones_like(w))
started_after = fast_compile({})
print(json.dumps({"applied": applied, "started_after": started_after, "hvp": hvp.ravel().tolist()}))
"""


def _probe(env_value: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(FFLAB_FAST_COMPILE=env_value, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_results_agree_with_xlas_defaults_to_rounding():
    fast, default = _probe("1"), _probe("0")
    assert fast["applied"] and not default["applied"]
    assert not fast["started_after"]  # too late once JAX has computed something
    assert fast["hvp"] == pytest.approx(default["hvp"], rel=1e-12, abs=1e-12)
