#!/usr/bin/env bash
# Regenerates docs/pca-real-teacher.png: PCA views (first 3 components as RGB) of the real
# teacher's dense patch features on four real photos, side by side. Only the feature
# pictures are committed, never the photos.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"
scripts/fetch-assets.sh >/dev/null
ensure_venv
cargo build --release --locked -p dinoedge --bin dinoedge 2>&1 | tail -n 1 >&2
BIN="$REPO_ROOT/target/release/dinoedge"
MODEL=$(teacher_dir "$BIN")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PHOTOS="$DINOEDGE_ASSETS/scikit-image/skimage/data"
for p in astronaut.png chelsea.png coffee.png motorcycle_left.png; do
  "$BIN" embed "$MODEL" "$PHOTOS/$p" --dense --size 448 --out "$TMP/f.safetensors" --pca "$TMP/${p%.*}.png" >/dev/null 2>&1
done
"$DINOEDGE_VENV/bin/python" - "$TMP" "$REPO_ROOT/docs/pca-real-teacher.png" <<'PY'
import sys
from PIL import Image
tmp, out = sys.argv[1], sys.argv[2]
H = 200
tiles = []
for n in ["astronaut", "chelsea", "coffee", "motorcycle_left"]:
    im = Image.open(f"{tmp}/{n}.png")
    tiles.append(im.resize((round(im.width * H / im.height), H), Image.BILINEAR))
canvas = Image.new("RGB", (sum(t.width for t in tiles) + 6 * (len(tiles) - 1), H), "white")
x = 0
for t in tiles:
    canvas.paste(t, (x, 0))
    x += t.width + 6
canvas.save(out, optimize=True)
print(out)
PY
