#!/usr/bin/env bash
# Installs the Debian 12 packages that building and testing tierkv need.
#
# Only what is missing is installed (checked with dpkg-query), so a second run
# costs a few milliseconds and touches no network. Works as root on a fresh
# Debian 12 machine that reaches only Debian's archive; uses sudo when not root.
#
# To add a dependency, append it to PACKAGES.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git python3
  # gRPC and protobuf
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  # core libraries
  libabsl-dev libssl-dev libxxhash-dev libcli11-dev
  # data plane (UCX; ucx-utils brings ucx_perftest for the transfer benchmark baseline)
  libucx-dev ucx-utils
  # SSD tier (RocksDB catalog) and its benchmark baseline (fio)
  librocksdb-dev fio
  # tests and benchmarks
  libgtest-dev libgmock-dev googletest libbenchmark-dev nlohmann-json3-dev
  python3-grpcio python3-protobuf
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Abbrev}' "${pkg}" 2>/dev/null || true)"
  if [[ "${status}" != ii* ]]; then
    missing+=("${pkg}")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all present (${#PACKAGES[@]} packages)"
  exit 0
fi

SUDO=()
if ((EUID != 0)); then
  SUDO=(sudo)
fi

echo "install-deps: installing ${missing[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"
