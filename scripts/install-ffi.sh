#!/usr/bin/env bash
# Builds and installs the C API: lib/libdinoedge.so (+ SONAME links) and libdinoedge.a,
# include/dinoedge.h and dinoedge.hpp, lib/pkgconfig/dinoedge.pc and
# lib/cmake/dinoedge/dinoedgeConfig.cmake.
#
#   scripts/install-ffi.sh PREFIX [--debug | --profile NAME] [--target TRIPLE] [--features wgpu,camera]
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${1:?usage: install-ffi.sh PREFIX [--debug | --profile NAME] [--target TRIPLE] [--features F]}
shift
PROFILE=release TARGET="" FEATURES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) PROFILE=debug ;;
    --profile) PROFILE=$2; shift ;;
    --target) TARGET=$2; shift ;;
    --features) FEATURES=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# Cargo's output folder names: dev and test build into debug, bench into release.
case "$PROFILE" in
  dev | test) PROFILE=debug ;;
  bench) PROFILE=release ;;
esac
args=(--locked -p dinoedge-ffi)
BUILT_FEATURES=$FEATURES
# The test scripts build the whole workspace with one feature set; building with the same
# selection here reuses that build (a `-p` build resolves features anew and rebuilds). The
# test and example targets are part of the selection: without them cargo leaves the
# dev-dependencies out of feature unification, and every shared crate is built again.
if [ -n "${DINOEDGE_WORKSPACE_FEATURES:-}" ] && [ "$PROFILE" = debug ] && [ -z "$TARGET" ]; then
  extra=""
  for f in ${FEATURES//,/ }; do extra="$extra,dinoedge-ffi/$f"; done
  args=(--locked --workspace --lib --bins --tests --examples --features "$DINOEDGE_WORKSPACE_FEATURES$extra")
  BUILT_FEATURES=$DINOEDGE_WORKSPACE_FEATURES$extra
  FEATURES=""
fi
# A library built with GStreamer carries its dependencies for static linking (glib's object
# code also calls gio).
REQUIRES_PRIVATE="" STATIC_EXTRA=""
case ",$BUILT_FEATURES," in
  *gstreamer*)
    REQUIRES_PRIVATE="gstreamer-app-1.0 gstreamer-video-1.0 gio-2.0"
    for l in $(pkg-config --libs-only-l $REQUIRES_PRIVATE); do STATIC_EXTRA="$STATIC_EXTRA;${l#-l}"; done ;;
esac
case "$PROFILE" in
  release) args+=(--release) ;;
  debug) ;;
  *) args+=(--profile "$PROFILE") ;;
esac
[ -n "$TARGET" ] && args+=(--target "$TARGET")
[ -n "$FEATURES" ] && args+=(--features "$FEATURES")
cargo build "${args[@]}" >&2
OUT=target/${TARGET:+$TARGET/}$PROFILE
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ABI=$(sed -n 's/^#define DINOEDGE_ABI_VERSION \([0-9]*\)/\1/p' ffi/include/dinoedge.h)
PREFIX=$(mkdir -p "$PREFIX" && cd "$PREFIX" && pwd)
install -d "$PREFIX/lib/pkgconfig" "$PREFIX/lib/cmake/dinoedge" "$PREFIX/include"
install -m 755 "$OUT/libdinoedge.so" "$PREFIX/lib/libdinoedge.so.$VERSION"
ln -sf "libdinoedge.so.$VERSION" "$PREFIX/lib/libdinoedge.so.$ABI"
ln -sf "libdinoedge.so.$ABI" "$PREFIX/lib/libdinoedge.so"
install -m 644 "$OUT/libdinoedge.a" "$PREFIX/lib/libdinoedge.a"
install -m 644 ffi/include/dinoedge.h ffi/include/dinoedge.hpp "$PREFIX/include/"
subst() {
  sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@VERSION@|$VERSION|g" -e "s|@ABI@|$ABI|g" \
    -e "s|@REQUIRES_PRIVATE@|$REQUIRES_PRIVATE|g" -e "s|@STATIC_EXTRA@|$STATIC_EXTRA|g" "$1" >"$2"
}
subst ffi/cmake/dinoedge.pc.in "$PREFIX/lib/pkgconfig/dinoedge.pc"
subst ffi/cmake/dinoedgeConfig.cmake.in "$PREFIX/lib/cmake/dinoedge/dinoedgeConfig.cmake"
subst ffi/cmake/dinoedgeConfigVersion.cmake.in "$PREFIX/lib/cmake/dinoedge/dinoedgeConfigVersion.cmake"
echo "installed dinoedge $VERSION (ABI $ABI, $PROFILE${TARGET:+, $TARGET}) into $PREFIX" >&2
