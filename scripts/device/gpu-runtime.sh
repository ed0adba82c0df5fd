#!/usr/bin/env bash
# On the lent GPU machine: runs the GPU tests and the GPU ttft_bench (Llama-3-8B-shaped
# model) from the bundle scripts/pack-device-bin.sh made here (carry .devbin):
#   scripts/pack-device-bin.sh build kernels_cuda_gpu_test kernels_cuda_attention_gpu_test kernels_cuda_checksum_gpu_test transfer_cuda_gpu_test \
#     kernels_cuda_sparse_index_gpu_test kernels_cuda_sparse_attention_gpu_test \
#     model_cuda_gpu_test model_cuda_sparse_gpu_test model_runtime_test gpu_tier_gpu_test ttft_bench
# Logs go to $OUT. Usage: bash scripts/device/gpu-runtime.sh [TOKENS] [REPEATS]
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "${out}"
tokens=${1:-8192,32768}
repeats=${2:-2}
mkdir -p /tmp/tk && tar -xJf .devbin/bundle.tar.xz -C /tmp/tk || exit 1
export LD_LIBRARY_PATH=/tmp/tk/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export UCX_MODULE_DIR=/tmp/tk/lib/ucx
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw --format=csv,noheader \
  | tee "${out}/gpu.txt"
status=0
for name in kernels_cuda_gpu_test kernels_cuda_attention_gpu_test kernels_cuda_checksum_gpu_test \
            kernels_cuda_sparse_index_gpu_test kernels_cuda_sparse_attention_gpu_test \
            model_cuda_gpu_test model_cuda_sparse_gpu_test transfer_cuda_gpu_test model_runtime_test \
            gpu_tier_gpu_test; do
  [ -x /tmp/tk/bin/${name} ] || continue
  timeout 300 /tmp/tk/bin/${name} >"${out}/${name}.log" 2>&1
  rc=$?
  echo "${name}: rc=${rc} $(grep -cE '^\[       OK \]' "${out}/${name}.log") ok," \
       "$(grep -cE '^\[  FAILED  \]' "${out}/${name}.log") failed lines," \
       "$(grep -cE '^\[  SKIPPED \]' "${out}/${name}.log") skipped"
  [ ${rc} -eq 0 ] || { status=1; grep -B3 -A12 "Failure\|rror" "${out}/${name}.log" | head -60; }
done
# Warm runs from the host tier (the issue's figure), then from the cache's GPU tier.
if [ -x /tmp/tk/bin/ttft_bench ]; then
  for gpu_gib in 0 ${TTFT_GPU_GIB:-16}; do
    timeout 300 /tmp/tk/bin/ttft_bench --device cuda --model builtin:llama-3-8b-random \
      --tokens "${tokens}" --repeats "${repeats}" --host-gib 12 --gpu-gib "${gpu_gib}" \
      >"${out}/ttft_bench_gpu${gpu_gib}.log" 2>&1
    echo "ttft_bench --gpu-gib ${gpu_gib}: rc=$?"
    tail -25 "${out}/ttft_bench_gpu${gpu_gib}.log"
  done
fi
exit ${status}
