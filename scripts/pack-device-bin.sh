#!/usr/bin/env bash
# Packs binaries built here (Debian 12, with CUDA) and the Debian shared libraries they need
# into .devbin/bundle.tar.xz, for machines that have CUDA but not gRPC, protobuf, RocksDB or
# UCX, such as the lent GPU machines (Ubuntu 24.04: its newer glibc and libstdc++ run these
# binaries). Carry .devbin there and run:
#   mkdir -p /tmp/tk && tar -xJf .devbin/bundle.tar.xz -C /tmp/tk
#   export LD_LIBRARY_PATH=/tmp/tk/lib:/usr/local/cuda/lib64 UCX_MODULE_DIR=/tmp/tk/lib/ucx
#   /tmp/tk/bin/ttft_bench --device cuda ...
# Usage: scripts/pack-device-bin.sh [BUILD_DIR] [TARGET...]   (default: build ttft_bench tierkv)
# .devbin is local (listed in .git/info/exclude by this script), never committed.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.devbin/' .git/info/exclude 2>/dev/null || echo '/.devbin/' >> .git/info/exclude
build=${1:-build}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ttft_bench tierkv)
cmake --build "${build}" -j2 --target "${targets[@]}"

stage=$(mktemp -d /tmp/devbin-stage.XXXXXX)
rm -rf "${stage}"
mkdir -p "${stage}/bin" "${stage}/lib"
# Libraries every Linux machine (and the CUDA install) provides: never packed.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libstdc\+\+|libgcc_s|libcublas|libcudart|libcuda\.so)'
pack_libs() {
  ldd "$1" | awk '/=> \//{print $1" "$3}' | while read -r name path; do
    if ! [[ ${name} =~ ${skip} ]] && [ ! -e "${stage}/lib/${name}" ]; then
      cp -L "${path}" "${stage}/lib/${name}"
    fi
  done
}
for t in "${targets[@]}"; do
  bin=$(find "${build}" -type f -name "${t}" -perm -u+x | head -1)
  [ -n "${bin}" ] || { echo "pack-device-bin: no binary ${t} under ${build}" >&2; exit 1; }
  strip -o "${stage}/bin/${t}" "${bin}"
  pack_libs "${bin}"
done
# UCX loads its transports as modules at run time (UCX_MODULE_DIR points there).
ucx_modules=$(dirname "$(ldconfig -p | awk '/libucs.so.0 /{print $NF; exit}')")/ucx
mkdir -p "${stage}/lib/ucx"
for m in "${ucx_modules}"/libuct_{tcp,sysv,posix,cma}.so* "${ucx_modules}"/libucx_perftest*.so*; do
  [ -e "${m}" ] || continue
  cp -L "${m}" "${stage}/lib/ucx/"
  pack_libs "${m}"
done
mkdir -p .devbin && tar -C "${stage}" -cJf .devbin/bundle.tar.xz .
echo "pack-device-bin: $(ls "${stage}/bin" | tr '\n' ' ')+ $(ls "${stage}/lib" | wc -l) libraries: $(du -h .devbin/bundle.tar.xz | cut -f1)"
rm -rf "${stage}"
