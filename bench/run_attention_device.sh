#!/usr/bin/env bash
# One call on the lent GPU machine (run tool, repository root, carry .devdeps and
# build-attn-carry): checks the attention kernels and times them beside PyTorch SDPA.
# Uses the binaries carried in build-attn-carry/ when they start; otherwise builds them
# (nvcc + ninja, about a minute of device time). Make the carried ones here first:
#   cmake --build build-attn -j2 --target kernels_cuda_attention_gpu_test attention_bench
#   mkdir -p build-attn-carry && for b in kernels/cuda/kernels_cuda_attention_gpu_test \
#     bench/attention_bench; do strip -o build-attn-carry/${b##*/} build-attn/$b; done
# (Debian 12 binaries run on the device's Ubuntu 24.04; abseil comes from .devdeps.)
# Logs go to $OUT.
#   usage: bench/run_attention_device.sh [attention_bench flags...]
set -uo pipefail
OUT=${OUT:-/tmp/attn-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.devdeps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
BIN=$PWD/build-attn-carry
if ! "$BIN/kernels_cuda_attention_gpu_test" --gtest_list_tests >/dev/null 2>&1; then
  echo "== carried binaries unusable; building"
  cmake -S . -B /tmp/b -G Ninja -DTIERKV_COMPUTE_ONLY=ON -DTIERKV_CUDA=ON \
    -DCMAKE_PREFIX_PATH=$PWD/.devdeps/root/usr >/dev/null &&
    cmake --build /tmp/b -j16 --target kernels_cuda_attention_gpu_test attention_bench \
      >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  BIN=/tmp/bin && mkdir -p $BIN &&
    cp /tmp/b/kernels/cuda/kernels_cuda_attention_gpu_test /tmp/b/bench/attention_bench $BIN/
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,memory.used \
  --format=csv | tee "$OUT/gpu.txt"
# Instruction mix per kernel (HMMA = mma.sync, HGMMA = wgmma, UTMALDG = TMA load, LDSM =
# ldmatrix, LDL/STL = local memory).
if command -v cuobjdump >/dev/null; then
  cuobjdump -sass "$BIN/attention_bench" >"$OUT/attention.sass" 2>/dev/null
  awk '/Function :/{f=$3} /HMMA/{h[f]++} /HGMMA/{g[f]++} /UTMALDG/{t[f]++} /LDSM/{l[f]++}
       /LDL/{ll[f]++} /STL/{sl[f]++} /Function :/{n[f]=1}
       END{for (k in n) printf "%s HMMA=%d HGMMA=%d UTMALDG=%d LDSM=%d LDL=%d STL=%d\n", k,
           h[k], g[k], t[k], l[k], ll[k], sl[k]}' \
    "$OUT/attention.sass" |
    sed 's/_ZN6tierkv.*PrefillWgmmaKernel/PrefillWgmma/; s/_ZN6tierkv.*Cfg/Cfg/' |
    tee "$OUT/sass_summary.txt"
  gzip -f "$OUT/attention.sass"
fi
echo "== test"
timeout 90 "$BIN/kernels_cuda_attention_gpu_test" >"$OUT/test.log" 2>&1
rc=$?
echo "test exit $rc"
grep -E "^\[  (FAILED|PASSED|  OK|SKIPPED) |Failure|error|Which is|seed=|variant" "$OUT/test.log" |
  head -40
# A failing (or hung) kernel would only burn device time in the bench.
[ "$rc" = 0 ] || [ "${FORCE_BENCH:-0}" = 1 ] || { echo "bench skipped: tests failed"; exit 1; }
echo "== bench"
timeout 140 "$BIN/attention_bench" "$@" >"$OUT/bench.log" 2>&1
echo "bench exit $?"
tail -45 "$OUT/bench.log"
