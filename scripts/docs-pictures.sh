#!/usr/bin/env bash
# Regenerates the pictures in docs/ with the real teacher:
#   docs/pca-real-teacher.png  PCA views (first 3 components as RGB) of the dense patch
#                              features of four real photos, side by side;
#   docs/track-real.png        label propagation on the real-object sequence of
#                              examples/track.rs (frames 1, 6, 11: prediction vs ground truth);
#   docs/live.png              the live view in headless Chromium after its self-test click.
# Only pictures derived from the features are committed, never the photos themselves (the
# track and live pictures show frames composited from CC0/BSD photos for illustration).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"
scripts/fetch-assets.sh >/dev/null
use_fetched_ffmpeg
ensure_venv
cargo build --release --locked -p dinoedge --bin dinoedge -p dinoedge-examples --example track 2>&1 | tail -n 1 >&2
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

# --- tracking: prediction (filled) and ground truth (outline) on three frames.
"$REPO_ROOT/target/release/examples/track" "$MODEL" "$TMP/track" | tee "$TMP/track.txt" >&2
"$DINOEDGE_VENV/bin/python" - "$TMP/track" "$REPO_ROOT/docs/track-real.png" "$(head -n 1 "$TMP/track.txt")" <<'PY'
import sys
import numpy as np
from PIL import Image, ImageDraw
d, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
H, tiles = 220, []
for i in [1, 6, 11]:
    im = np.asarray(Image.open(f"{d}/gt/frames/{i:05d}.jpg").convert("RGB")).astype(np.float32)
    pred = np.asarray(Image.open(f"{d}/pred/{i:05d}.png")) > 0
    gt = np.asarray(Image.open(f"{d}/gt/masks/{i:05d}.png")) > 0
    im[pred] = 0.45 * im[pred] + 0.55 * np.array([255, 40, 200])
    edge = gt & ~(np.roll(gt, 1, 0) & np.roll(gt, -1, 0) & np.roll(gt, 1, 1) & np.roll(gt, -1, 1))
    edge = edge | np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
    im[edge] = [255, 255, 0]
    t = Image.fromarray(im.astype(np.uint8))
    tiles.append(t.resize((round(t.width * H / t.height), H), Image.BILINEAR))
canvas = Image.new("RGB", (sum(t.width for t in tiles) + 6 * (len(tiles) - 1), H + 22), "white")
x = 0
for t in tiles:
    canvas.paste(t, (x, 22))
    x += t.width + 6
ImageDraw.Draw(canvas).text((4, 5), title + "  (magenta: prediction, yellow: ground truth)", fill="black")
canvas.save(out, optimize=True)
print(out)
PY

# --- live view: frames of the same sequence, first mask tracked, a click by the page's self-test.
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -n "$CHROME" ]; then
  "$BIN" live --model "$MODEL" --frames "$TMP/track/gt/frames" --mask "$TMP/track/gt/masks/00000.png" \
    --loop --fps 4 --size 224 --display-width 360 --serve 127.0.0.1:0 --duration 90 2>"$TMP/live.err" &
  LIVE=$!
  trap 'kill "$LIVE" 2>/dev/null || true; rm -rf "$TMP"' EXIT
  for _ in $(seq 60); do grep -q "http://" "$TMP/live.err" && break; sleep 1; done
  URL=$(grep -o "http://127.0.0.1:[0-9]*/" "$TMP/live.err" | head -n 1 || true)
  if [ -z "$URL" ]; then
    echo "the live server did not start: $(tail -n 3 "$TMP/live.err")" >&2
    exit 1
  fi
  "$CHROME" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --user-data-dir="$TMP/chrome" --window-size=1180,760 --virtual-time-budget=30000 \
    --screenshot="$REPO_ROOT/docs/live.png" "${URL}?selftest=1" >/dev/null 2>&1
  kill "$LIVE" 2>/dev/null || true
  wait "$LIVE" 2>/dev/null || true
  echo "$REPO_ROOT/docs/live.png"
else
  echo "SKIPPED: docs/live.png (install chromium)" >&2
fi
