#!/usr/bin/env bash
# GPU-machine check of distillation (issue #8), for what exists so far: the teacher on the
# CUDA backend, the students on the machine's CPU cores (the CUDA student trainer is not
# built yet, so the issue's gradient-parity and PyTorch-AMP step comparisons are not here).
#   1. a random-weight teacher (ViT-7B/16 in bf16 by default, ARCH=vits16 for a quick run)
#      made by transformers' save_pretrained (tools/torch_bench.py make), and 64 synthetic
#      images (PPM, no PIL needed);
#   2. `distill cache-teacher --teacher-backend cuda --teacher-precision bf16`: teacher img/s;
#   3. online distillation into two students at once (--student vit-ti16 --student vit-s16),
#      teacher on the GPU: step img/s (teacher + both students), 10 steps;
#   4. the same two students from the cache of step 2.
# Logs go to $OUT (default ./device-out-distill); summary.txt has the numbers. Build here
# first (the same binaries as the CUDA check):
#   scripts/device-check-cuda.sh --build
# then, from the device tool (carry `.device/cuda`): scripts/device-check-distill.sh
# (about 5 min with the 7B: 13.4 GB written, then read three times).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/device-out-distill}"
mkdir -p "$OUT"
BIN=${BIN:-.device/cuda/dinoedge}
PY=${PYTHON:-python3}
ARCH=${ARCH:-vit7b16}
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1 || true
say "gpu: $(cat "$OUT/gpu.txt"); cpu cores: $(nproc)"

T="$OUT/teacher-$ARCH"
# save_pretrained writes config.json first: a teacher is complete once make has finished.
if [ ! -f "$T/.made" ]; then
  rm -rf "$T"
  flag=(); [ "$ARCH" = vit7b16 ] && flag=(--dtype bf16)
  if timeout 300 $PY tools/torch_bench.py make "$T" --arch "$ARCH" "${flag[@]}" >"$OUT/make-teacher.log" 2>&1; then
    touch "$T/.made"
  else
    rm -rf "$T"
    say "making the $ARCH teacher FAILED (make-teacher.log)"
  fi
fi

D="$OUT/images"
if [ ! -d "$D" ]; then
  $PY - "$D" <<'EOF'
import os, sys
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
for i in range(64):
    w, h = 256 + 16 * (i % 4), 224 + 16 * (i % 3)
    px = bytearray()
    for y in range(h):
        for x in range(w):
            box = (x + 7 * i) % 97 < 40 and (y + 3 * i) % 83 < 35
            r, g, b = (x * 255 // w, y * 255 // h, (i * 37) % 256)
            px += bytes((255 - r, b, g) if box else (r, g, b))
    with open(os.path.join(d, f"img{i:03}.ppm"), "wb") as f:
        f.write(b"P6 %d %d 255\n" % (w, h) + bytes(px))
EOF
fi

# TEACHER_BACKEND=cpu runs the same logic without a GPU (how the script was checked).
TB=${TEACHER_BACKEND:-cuda}
prec=bf16; [ "$ARCH" = vit7b16 ] || prec=f16; [ "$TB" = cuda ] || prec=f32
common=(--teacher "$T" --teacher-backend "$TB" --teacher-precision "$prec" --data "$D" --size 224 --holdout 0.2 --threads "$(nproc)")

echo "== 2. cache-teacher on the GPU"
rm -rf "$OUT/cache"
if timeout 300 "$BIN" distill cache-teacher "${common[@]}" --out "$OUT/cache" --views 2 --batch 16 >"$OUT/cache.log" 2>"$OUT/cache.err"; then
  say "cache-teacher $ARCH $TB $prec: $(tail -n1 "$OUT/cache.log")"
  say "teacher views/s (decode, augment, forward, f16 shards): $(tail -n1 "$OUT/cache.log" | $PY -c 'import json,sys; d=json.load(sys.stdin); print(round(d["train_images"] * d["views"] / d["seconds"], 1))')"
else
  say "cache-teacher FAILED (cache.err): $(tail -n3 "$OUT/cache.err" | tr '\n' ' ')"
fi

run_two() { # name extra-args...
  local name=$1; shift
  rm -rf "$OUT/$name"
  if timeout 400 "$BIN" distill "${common[@]}" --student vit-ti16 --student vit-s16 --out "$OUT/$name" \
      --steps 10 --batch 16 --log-every 5 --eval-images 8 --checkpoint-every 100 "$@" >"$OUT/$name.log" 2>"$OUT/$name.err"; then
    for s in vit-ti16 vit-s16; do
      say "$name $s: $($PY -c 'import json,sys
r = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
d = {x["out"].rsplit("/", 1)[-1]: x for x in r}[sys.argv[2]]
print("loss %.4f, step img/s %.1f (teacher and both students), held-out patch cosine %.4f" % (d["last"]["loss"], d["last"]["img_per_s"], (d.get("holdout_end") or {}).get("holdout_patch_cos", float("nan"))))' "$OUT/$name.log" "$s")"
    done
  else
    say "$name FAILED ($name.err): $(tail -n3 "$OUT/$name.err" | tr '\n' ' ')"
  fi
}
echo "== 3. two students, teacher online on the GPU"
run_two online
echo "== 4. two students from the cache"
if [ -f "$OUT/cache/index.json" ]; then run_two cached --cache "$OUT/cache"; else say "cached: skipped (no cache)"; fi
echo "== summary"
cat "$SUMMARY"
