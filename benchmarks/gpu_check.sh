#!/usr/bin/env bash
# A few minutes on one GPU (or TPU): which devices JAX sees, one Fashion-MNIST training epoch with the CLI,
# and the 90-step x 10-probe Hessian spectral density of a 1,003,690-parameter MLP over all 60,000 training
# images. Run from the repository root after `pip install -e '.[dev]'` and `pip install -U "jax[cuda12]"`:
#
#     bash benchmarks/gpu_check.sh
#
# Estimate for one H100 (float32): one HVP over 60k samples is ~8 x 60,000 x 1e6 ~ 5e11 flops, so the
# 900 products of the density are ~4e14 flops: 20-40 s at 10-20 TFLOP/s achieved, plus ~1 min of compiles
# and the epoch. Environment overrides (for a tiny end-to-end run on CPU):
#   GPU_CHECK_STEPS (90), GPU_CHECK_PROBES (10), GPU_CHECK_SAMPLES (60000), GPU_CHECK_BATCH_SIZE (6000),
#   GPU_CHECK_EPOCHS (1), GPU_CHECK_DEVICES (all devices).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

steps="${GPU_CHECK_STEPS:-90}"
probes="${GPU_CHECK_PROBES:-10}"
samples="${GPU_CHECK_SAMPLES:-60000}"
batch_size="${GPU_CHECK_BATCH_SIZE:-6000}"
epochs="${GPU_CHECK_EPOCHS:-1}"
devices_arg=()
if [[ -n "${GPU_CHECK_DEVICES:-}" ]]; then
    devices_arg=(--devices "${GPU_CHECK_DEVICES}")
fi

elapsed() {  # seconds since $1 (date +%s%N), one decimal
    local ms=$((($(date +%s%N) - $1) / 1000000))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

echo "== devices"
python -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())"

echo "== train: fashion-mnist, ${epochs} epoch(s), the default 784-225-144-10 relu net"
run_dir="$(mktemp -d)"
trap 'rm -rf "${run_dir}"' EXIT
start=$(date +%s%N)
fflab train --dataset fashion-mnist --epochs "${epochs}" --out "${run_dir}" --no-progress
echo "train wall seconds (including start-up and compile): $(elapsed "${start}")"

echo "== spectral density: ${steps} steps x ${probes} probes, ${samples} samples, batch_size ${batch_size}"
start=$(date +%s%N)
python -m benchmarks.scale_bench --density-only --steps "${steps}" --probes "${probes}" \
    --samples "${samples}" --batch-size "${batch_size}" "${devices_arg[@]}"
echo "density wall seconds (including start-up, data loading and compiles): $(elapsed "${start}")"
