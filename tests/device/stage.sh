#!/usr/bin/env bash
# tests/device/stage.sh DEST — build here and stage what tests/device/run.sh needs into DEST, so
# the device machine (no internet, no OpenBLAS/liburing/xxhash packages, no build needed) runs
# prebuilt binaries: build/tests/kt_*, build/cacheflowctl, the shared libraries they need that
# the device image lacks (libs/), the fixtures, and tests/device/. Usage (lead or cuda helper):
#   tests/device/stage.sh /work/main/.devtree
# then one device call: carry [".devtree"], command
#   cd .devtree && bash tests/device/run.sh
set -eu
DEST=${1:?usage: stage.sh DEST}
cd "$(dirname "$0")/../.."
make -j2 >/dev/null
rm -rf "$DEST"
mkdir -p "$DEST/build/tests" "$DEST/libs" "$DEST/fixtures" "$DEST/tests"
cp build/cacheflowctl build/cacheflowd build/cf-gpuengine "$DEST/build/"
cp build/tests/kt_* "$DEST/build/tests/"
rm -f "$DEST"/build/tests/*.d
# System libraries outside the CUDA toolkit (CUDA's own come from the device's toolkit/driver).
for lib in $(ldd build/cacheflowctl build/cacheflowd build/cf-gpuengine $(ls build/tests/kt_* | grep -v '\.d$') | awk '/=>/ {print $3}' | sort -u); do
  case "$lib" in
    */libc.so*|*/libm.so*|*/libdl.so*|*/librt.so*|*/libpthread.so*|*/ld-linux*|*/libgcc_s.so*|*/libstdc++.so*) ;;
    */libcublas*|*/libcuda.so*) ;;
    *) cp -L "$lib" "$DEST/libs/" ;;
  esac
done
cp -r ../shared/fixtures/public-llama-gqa "$DEST/fixtures/" 2>/dev/null ||
  cp -r /work/shared/fixtures/public-llama-gqa "$DEST/fixtures/"
cp -r tests/fixtures "$DEST/tests/fixtures"
cp -r tests/device "$DEST/tests/device"
chmod -R u+w "$DEST"
# The device tool carries at most 64 MiB: drop host debug info (device line info stays in the
# fatbins) and ship the libraries gzipped (53 MiB -> 18 MiB); run.sh unpacks them.
strip --strip-debug "$DEST"/build/cacheflowctl "$DEST"/build/cacheflowd "$DEST"/build/cf-gpuengine "$DEST"/build/tests/kt_* "$DEST"/libs/* 2>/dev/null || true
tar czf "$DEST/libs.tgz" -C "$DEST" libs && rm -rf "$DEST/libs"
du -sh "$DEST"
