#!/usr/bin/env bash
# One prepared accelerator check for a lent NVIDIA GPU (H100/H200), under 8 minutes, no network:
#   1. the Pallas GPU kernel tests, compiled by Triton for real (forward + Pallas backward);
#   2. the kernel benchmark: with vs without masses, forward + backward vs XLA and cuDNN attention;
#   3. the rollout benchmark: the jit sampler vs Hugging Face `generate` on the same weights.
# Packages missing from the GPU image travel as wheels in .whl/ (see benchmarks/RESULTS.md);
# results land in $OUT (or ./gpu_check_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__)" | tee -a "$OUT/gpu.txt"

status=0
echo "== 1. kernel tests, compiled (fp32 dots at highest precision: Triton's default is TF32)"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 200 $PY -m pytest -q -p no:cacheprovider -o addopts="-ra" \
  tests/kernels/test_region_attention_gpu.py 2>&1 | tee "$OUT/kernel_tests.txt" | tail -25 || status=1

echo "== 2. kernel benchmark"
timeout 130 $PY benchmarks/attention.py --batch 4 --heads 28 --kv-heads 4 --head-dim 128 --block 128 \
  --time-sizes 1024 4096 8192 --kernel-time-sizes 1024 4096 8192 --memory-sizes 8192 32768 --repeats 10 \
  2>&1 | tee "$OUT/attention.md" || status=1

echo "== 3. rollout benchmark"
timeout 120 $PY benchmarks/rollout.py --batch 8 --new-tokens 64 2>&1 | tee "$OUT/rollout.md" || status=1
exit $status
