#!/usr/bin/env bash
# Unpacks Debian's abseil and xxhash (headers, CMake config, shared libraries) into
# .devdeps/root, for a compute-only build (TIERKV_COMPUTE_ONLY=ON) on a machine that has a
# compiler and CUDA but not these libraries, such as the lent GPU machines. Run it here
# (it needs Debian's package archive), then carry .devdeps to that machine and build with:
#   export LD_LIBRARY_PATH=$PWD/.devdeps/root/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
#   cmake -S . -B /tmp/b -G Ninja -DTIERKV_COMPUTE_ONLY=ON -DCMAKE_PREFIX_PATH=$PWD/.devdeps/root/usr
#   cmake --build /tmp/b -j16 && ctest --test-dir /tmp/b
# .devdeps is local (listed in .git/info/exclude by this script), never committed.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.devdeps/' .git/info/exclude 2>/dev/null || echo '/.devdeps/' >> .git/info/exclude
mkdir -p .devdeps/debs
(cd .devdeps/debs && apt-get download libabsl-dev libabsl20220623 libxxhash-dev)
rm -rf .devdeps/root
for deb in .devdeps/debs/*.deb; do
  dpkg -x "${deb}" .devdeps/root
done
echo "fetch-device-deps: unpacked $(ls .devdeps/debs | wc -l) packages into .devdeps/root ($(du -sh .devdeps/root | cut -f1))"
