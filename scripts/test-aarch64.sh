#!/usr/bin/env bash
# Proves the ARM code (NEON microkernels, SDOT int8) correct without a board: cross-builds the
# runtime's tests for aarch64-unknown-linux-gnu with Debian's gcc-aarch64-linux-gnu and runs
# them under qemu-aarch64 (.cargo/config.toml sets the linker and runner). Every SIMD family
# qemu offers (neon-dotprod, neon, portable) runs the parity suites.
#
# Needs: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 || true
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)" >&2; exit 1; }
done
start=$(date +%s)
cargo test --locked -p dinoedge-runtime --target aarch64-unknown-linux-gnu \
  --lib --test hf_parity --test fast_kernels --test no_alloc "$@"
echo "[aarch64] cross-build + qemu tests passed in $(( $(date +%s) - start )) s"
