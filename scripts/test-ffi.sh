#!/usr/bin/env bash
# The C API end to end, as a C/C++ user gets it:
#   1. install libdinoedge + headers + pkg-config + CMake files into a scratch prefix;
#   2. build the C and C++ examples against it through CMake and through pkg-config
#      (shared and static), with -Wall -Wextra -Werror;
#   3. run them on the real teacher and a real photo, and check the features against the
#      Rust CLI's;
#   4. run the error-path checks, and the examples under valgrind memcheck and AddressSanitizer;
#   5. cross-build for aarch64 (Jetson) and run the C example under qemu-aarch64.
# Needs: gcc g++ cmake pkg-config valgrind (+ gcc-aarch64-linux-gnu qemu-user for step 5).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"
scripts/fetch-assets.sh >/dev/null
use_fetched_ffmpeg
ensure_venv
FEATURES=${DINOEDGE_FFI_FEATURES:-}
T0=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PREFIX=$WORK/prefix
scripts/install-ffi.sh "$PREFIX" --debug ${FEATURES:+--features "$FEATURES"} 2>&1 | tail -n 1
if [ -n "${DINOEDGE_WORKSPACE_FEATURES:-}" ]; then
  # Built by install-ffi.sh with the workspace (see there).
  cargo build --locked --workspace --lib --bins --tests --examples --features "$DINOEDGE_WORKSPACE_FEATURES" >/dev/null 2>&1
else
  cargo build --locked -p dinoedge --bin dinoedge ${FEATURES:+--features "dinoedge/$FEATURES"} >/dev/null 2>&1
fi
BIN=$REPO_ROOT/target/debug/dinoedge
MODEL=$(teacher_dir "$BIN")
PHOTO=$DINOEDGE_ASSETS/scikit-image/skimage/data/astronaut.png
FIXTURE=$REPO_ROOT/fixtures/hf/dinov2

echo "[ffi] CMake build"
cmake -S examples/c -B "$WORK/build" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$WORK/build" -j2 >/dev/null
echo "[ffi] pkg-config build"
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
gcc -Wall -Wextra -Werror examples/c/embed.c $(pkg-config --cflags --libs dinoedge) -o "$WORK/embed_pc"
g++ -std=c++17 -Wall -Wextra -Werror examples/cpp/embed.cpp $(pkg-config --cflags --libs dinoedge) -o "$WORK/embed_cpp_pc"
# Static: the archive, then what it needs (Libs.private, Requires.private), without -ldinoedge.
gcc -Wall -Wextra -Werror examples/c/embed.c $(pkg-config --cflags dinoedge) "$PREFIX/lib/libdinoedge.a" $(pkg-config --libs --static dinoedge | sed -e 's/-ldinoedge\b//' -e 's/-L[^ ]*//') -o "$WORK/embed_static_pc"
export LD_LIBRARY_PATH=$PREFIX/lib

echo "[ffi] the examples on the real teacher and a real photo"
for exe in "$WORK/build/embed" "$WORK/build/embed_static" "$WORK/embed_pc" "$WORK/embed_static_pc"; do
  "$exe" "$MODEL" "$PHOTO" cpu >"$WORK/out.txt"
  cat "$WORK/out.txt"
done
"$WORK/build/embed_cpp" "$MODEL" "$PHOTO"
"$WORK/embed_cpp_pc" "$MODEL" "$PHOTO" >/dev/null
# The C output must match the Rust CLI's features of the same photo.
"$BIN" embed "$MODEL" "$PHOTO" --out "$WORK/rust.safetensors" >/dev/null 2>&1
"$DINOEDGE_VENV/bin/python" - "$WORK/out.txt" "$WORK/rust.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file
line = [l for l in open(sys.argv[1]) if l.startswith("cls:")][0]
c = [float(v) for v in line.split()[1:]]
r = load_file(sys.argv[2])["cls"][0, :len(c)]
err = max(abs(a - b) for a, b in zip(c, r))
print(f"[ffi] C API CLS vs Rust CLI: max abs difference {err:.2e} over {len(c)} values")
assert err < 1e-5, (c, list(r))
PY

if [[ ",$FEATURES,${DINOEDGE_WORKSPACE_FEATURES:-}," == *gstreamer* ]]; then
  echo "[ffi] dinoedge_frames_open_gst"
  "$WORK/build/gst_frames" "$FIXTURE" "videotestsrc num-buffers=3 ! video/x-raw,width=64,height=48" >"$WORK/gst.txt"
  grep -q "^3 frames" "$WORK/gst.txt" && grep -q "^frame 2 at 0.067 s: 64x48" "$WORK/gst.txt" || { cat "$WORK/gst.txt"; exit 1; }
  # A broken pipeline: a clean error naming the missing element, exit status 1.
  if "$WORK/build/gst_frames" "$FIXTURE" "videotestsrc ! nosuchelement_dinoedge" 2>"$WORK/gst.err"; then
    echo "a broken pipeline succeeded" >&2; exit 1
  fi
  grep -q "DINOEDGE_ERR_UNSUPPORTED.*nosuchelement_dinoedge" "$WORK/gst.err" || { cat "$WORK/gst.err"; exit 1; }
fi

echo "[ffi] error paths"
"$WORK/build/errors" "$FIXTURE"

echo "[ffi] tracking through the C API (first mask from TokenCut)"
mkdir -p "$WORK/frames" "$WORK/masks"
for i in 01 02 03 04 05 06; do
  ln -s "$DINOEDGE_ASSETS/opencv-doc/usr/share/doc/opencv-doc/examples/data/left$i.jpg" "$WORK/frames/"
done
"$BIN" discover --model "$MODEL" "$WORK/frames/left01.jpg" --out "$WORK/first.png" --size 224 >/dev/null 2>&1
"$WORK/build/track" "$MODEL" "$WORK/frames" "$WORK/first.png" "$WORK/masks"
test -f "$WORK/masks/00005.png"

if command -v valgrind >/dev/null; then
  echo "[ffi] valgrind memcheck"
  VG=(valgrind --quiet --suppressions=scripts/valgrind.supp --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect --error-exitcode=3)
  # The fixture model: the same C API calls as the real teacher's run above, at a size
  # memcheck gets through in seconds.
  "${VG[@]}" "$WORK/build/embed" "$FIXTURE" "$PHOTO" cpu >/dev/null
  "${VG[@]}" "$WORK/build/errors" "$FIXTURE" >/dev/null
  "${VG[@]}" "$WORK/build/embed_cpp" "$FIXTURE" "$PHOTO" >/dev/null
  echo "[ffi] valgrind: no errors, no leaks"
elif [ "${DINOEDGE_REQUIRE_VALGRIND:-0}" = 1 ]; then
  echo "valgrind missing (apt-get install valgrind)" >&2; exit 1
fi

echo "[ffi] AddressSanitizer"
gcc -g -fsanitize=address,undefined -fno-omit-frame-pointer -Wall -Werror examples/c/embed.c $(pkg-config --cflags --libs dinoedge) -o "$WORK/embed_asan"
gcc -g -fsanitize=address,undefined -fno-omit-frame-pointer -Wall -Werror examples/c/errors.c $(pkg-config --cflags --libs dinoedge) -o "$WORK/errors_asan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 "$WORK/embed_asan" "$MODEL" "$PHOTO" cpu >/dev/null
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 "$WORK/errors_asan" "$FIXTURE" >/dev/null
echo "[ffi] ASan/UBSan: clean"

if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then
  echo "[ffi] aarch64 cross-build + qemu"
  # A fresh machine has only the host's standard library.
  rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 || true
  t=$(date +%s)
  # Unoptimised (Cargo.toml's `cross-smoke`): the run is one fixture; the build was minutes.
  scripts/install-ffi.sh "$WORK/prefix-arm" --profile cross-smoke --target aarch64-unknown-linux-gnu 2>&1 | tail -n 1
  aarch64-linux-gnu-gcc -Wall -Werror examples/c/embed.c -I"$WORK/prefix-arm/include" -L"$WORK/prefix-arm/lib" -ldinoedge -o "$WORK/embed_arm"
  qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH="$WORK/prefix-arm/lib" "$WORK/embed_arm" "$FIXTURE" "$PHOTO" cpu
  echo "[ffi] aarch64: built and ran in $(( $(date +%s) - t )) s"
elif [ "${DINOEDGE_REQUIRE_AARCH64:-0}" = 1 ]; then
  echo "aarch64 cross toolchain missing" >&2; exit 1
fi
echo "[ffi] all C API checks passed in $(( $(date +%s) - T0 )) s"
