"""Quick experiment runs with and without :func:`fflab.compilation.fast_compile`: compile seconds and wall seconds.

Each setting runs in its own process (XLA reads its flags once per process), the experiments one after
another as ``fflab run --quick`` runs them; the seconds XLA spends compiling come from JAX's monitoring events
(``/jax/core/compile/backend_compile_duration``), and the wall seconds include everything else (tracing,
running the programs, plotting). The ratios are of sums over the experiments.

Run from the repository root: ``python -m benchmarks.compile_bench [NAME ...] [--json PATH]`` (default: every
experiment, which takes about ten minutes on two cores; ``spectral_density optimizers`` takes about two).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchmarks._timing import print_table

_CHILD = """
import json, sys, time
import jax.monitoring
compile_seconds = [0.0]
def listen(event, seconds, **_):
    if event.endswith("backend_compile_duration"):
        compile_seconds[0] += seconds
jax.monitoring.register_event_duration_secs_listener(listen)
import experiments
rows = {}
for name in sys.argv[2:]:
    compile_seconds[0], tic = 0.0, time.perf_counter()
    experiments.run([name], quick=True, out_dir=sys.argv[1], progress=False)
    rows[name] = {"wall": time.perf_counter() - tic, "compile": compile_seconds[0]}
print(json.dumps(rows))
"""


def measure(names: list[str], fast: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["FFLAB_FAST_COMPILE"] = "1" if fast else "0"
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", _CHILD, out, *names], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compile_bench: the {'fast' if fast else 'default'} run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    import experiments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="experiments (default: all)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    names = args.names or experiments.available()
    unknown = sorted(set(names) - set(experiments.available()))
    if unknown:
        p.error(f"unknown experiment(s): {', '.join(unknown)}")
    default, fast = measure(names, fast=False), measure(names, fast=True)
    columns = ["experiment", "compile s (XLA default)", "compile s (fast)", "wall s (XLA default)", "wall s (fast)"]
    rows = [dict(zip(columns, [n, default[n]["compile"], fast[n]["compile"], default[n]["wall"], fast[n]["wall"]],
                     strict=True)) for n in names]
    total = {k: {s: sum(r[n][s] for n in names) for s in ("compile", "wall")} for k, r in (("default", default),
                                                                                          ("fast", fast))}
    rows.append(dict(zip(columns, ["total", total["default"]["compile"], total["fast"]["compile"],
                                   total["default"]["wall"], total["fast"]["wall"]], strict=True)))
    print_table(rows, columns)
    print(f"compilation: {total['default']['compile'] / total['fast']['compile']:.2f}x less with fast_compile; "
          f"wall: {total['default']['wall'] / total['fast']['wall']:.2f}x less")
    if args.json:
        from fflab.files import write_json

        write_json(args.json, {"default": default, "fast": fast, "total": total})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
