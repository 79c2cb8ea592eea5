#!/usr/bin/env bash
# GPU-machine check of distillation on CUDA (issue #8). Runs, on the device:
#   1. the CUDA trainer's parity suite (distill/tests/cuda_trainer.rs on the GPU): every
#      parameter's gradient of three fixture students (ViTs with plain and gated MLP,
#      registers, RoPE, heads, Gram and intermediate terms; a 4-stage ConvNeXt with its
#      depthwise convs) against float64 PyTorch autograd, in f32 GEMMs
#      (< 1e-4), recomputing (< 1e-4) and bf16 GEMMs (< 5e-2); 20 AdamW steps against the CPU
#      trainer (loss < 1e-4, weights and EMA < 1e-4);
#   2. the student step of vit-s16, vit-ti16 and convnext-tiny at 224, batch 128, bf16
#      (`dinoedge distill bench-step --backend cuda`) against the same step in PyTorch AMP
#      (tools/torch_train_bench.py: transformers' DINOv3ViTModel / DINOv3ConvNextModel, SDPA
#      attention, fused AdamW, EMA) on the same card -> ratio;
#   3. a random-weight teacher (ViT-7B/16 in bf16 by default, ARCH=vits16 for a quick run)
#      made by transformers' save_pretrained (tools/torch_bench.py make), 64 synthetic images;
#      `distill cache-teacher --teacher-backend cuda --teacher-precision bf16`: teacher img/s;
#   4. online distillation into two students at once (--student vit-ti16 --student vit-s16),
#      teacher and students on the GPU (--backend cuda): step img/s and held-out cosine;
#   5. the same two students from the cache of step 3.
# Logs go to $OUT (default ./device-out-distill); summary.txt has the numbers. Build here
# first (the same binaries as the CUDA check):
#   scripts/device-check-cuda.sh --build
# then, from the device tool (carry `.device/cuda`), in two calls under 600 s each:
#   ONLY_TRAINER=1 scripts/device-check-distill.sh   # steps 1-2 (about 2 min)
#   SKIP_TRAINER=1 scripts/device-check-distill.sh   # steps 3-5 (about 5 min with the 7B)
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

if [ "${SKIP_TRAINER:-0}" != 1 ]; then
echo "== 1. CUDA trainer parity (gradients vs PyTorch autograd, 20 steps vs the CPU trainer)"
if DINOEDGE_TRAINER_DEVICES=cuda DINOEDGE_REQUIRE_CUDA=1 DINOEDGE_FIXTURES="$PWD/fixtures" timeout 240 \
    "${TRAINER_TEST:-.device/cuda/cuda_trainer}" --nocapture --test-threads 1 >"$OUT/trainer-parity.log" 2>&1; then
  say "trainer parity: ok"
else
  say "trainer parity: FAILED (see trainer-parity.log)"
fi
grep -E "^(cuda|device:|test result)" "$OUT/trainer-parity.log" | tee -a "$SUMMARY" || true

echo "== 2. student steps (vit-s16, vit-ti16, convnext-tiny), batch 128 at 224, bf16: dinoedge vs PyTorch AMP"
for spec in "vit-s16 128" "vit-ti16 128" "convnext-tiny 128"; do
  set -- $spec
  if timeout 200 "$BIN" distill bench-step --backend cuda --student "$1" --batch "$2" --size 224 --precision bf16 \
      --iters 10 --warmup 3 >"$OUT/bench-$1.json" 2>"$OUT/bench-$1.err"; then
    ours=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["median_ms"])' "$OUT/bench-$1.json")
  else
    ours=nan; say "bench-step $1 FAILED (bench-$1.err): $(tail -n3 "$OUT/bench-$1.err" | tr '\n' ' ')"
    # The peer still needs the student's config: a one-step CPU run prints it.
    "$BIN" distill bench-step --student "$1" --batch 1 --size 32 --iters 1 --warmup 0 >"$OUT/bench-$1.json" 2>/dev/null || true
  fi
  if timeout 200 $PY tools/torch_train_bench.py "$OUT/bench-$1.json" --device cuda --batch "$2" --size 224 \
      --iters 10 --warmup 3 >"$OUT/torch-$1.json" 2>"$OUT/torch-$1.err"; then
    peer=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["median_ms"])' "$OUT/torch-$1.json")
  else
    peer=nan; say "pytorch $1 FAILED (torch-$1.err): $(tail -n3 "$OUT/torch-$1.err" | tr '\n' ' ')"
  fi
  say "$(printf '%-9s step b%s 224px bf16: dinoedge %8.1f ms | pytorch amp %8.1f ms | throughput ratio %5.2fx (target >= 1.0)' "$1" "$2" "$ours" "$peer" "$($PY -c "import sys; print(float(sys.argv[1]) / float(sys.argv[2]))" "$peer" "$ours")")"
done
echo "== 2b. data parallel through NCCL, one rank (the same losses as without NCCL)"
# NCCL from the wheel PyTorch brings (libnccl.so.2), on the loader path.
NCCL_SO=$($PY -c 'import glob, site; c = [p for d in site.getsitepackages() for p in glob.glob(d + "/nvidia/**/libnccl.so*", recursive=True)]; print(c[0] if c else "")' 2>/dev/null || true)
NCCL_LIB="$OUT/nccl-lib"
mkdir -p "$NCCL_LIB"
[ -n "$NCCL_SO" ] && ln -sf "$NCCL_SO" "$NCCL_LIB/libnccl.so.2"
say "nccl: ${NCCL_SO:-not found in the Python packages}"
printf '%s' '{"model_type":"dinov3_vit","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":128,"patch_size":16,"num_register_tokens":4,"rope_theta":100.0}' >"$OUT/tiny.json"
tiny=(distill --teacher fixtures/hf/dinov2 --student "$OUT/tiny.json" --data "$D" --size 32 --batch 8 --steps 6 --holdout 0.2 \
  --log-every 1 --eval-images 0 --backend cuda --precision f32)
rm -rf "$OUT/dp-plain" "$OUT/dp-nccl" "$OUT/dp-rdv"
if timeout 120 "$BIN" "${tiny[@]}" --out "$OUT/dp-plain" >"$OUT/dp-plain.log" 2>&1 &&
   LD_LIBRARY_PATH="$NCCL_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" DINOEDGE_RANK=0 DINOEDGE_WORLD_SIZE=1 \
   DINOEDGE_RENDEZVOUS="$OUT/dp-rdv" timeout 120 "$BIN" "${tiny[@]}" --out "$OUT/dp-nccl" >"$OUT/dp-nccl.log" 2>&1; then
  say "nccl one rank: $(grep -o 'data parallel[^)]*)' "$OUT/dp-nccl.log" | head -n1); losses $($PY -c 'import json,sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1]) if "\"loss\"" in l]
b = [json.loads(l)["loss"] for l in open(sys.argv[2]) if "\"loss\"" in l]
print("equal" if a == b and a else "DIFFER %s vs %s" % (a, b))' "$OUT/dp-plain/metrics.jsonl" "$OUT/dp-nccl/metrics.jsonl")"
else
  say "nccl one rank FAILED (dp-plain.log, dp-nccl.log): $(tail -q -n2 "$OUT/dp-plain.log" "$OUT/dp-nccl.log" 2>/dev/null | tr '\n' ' ')"
fi
fi

[ "${ONLY_TRAINER:-0}" = 1 ] && { echo "== summary"; cat "$SUMMARY"; exit 0; }

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


# TEACHER_BACKEND=cpu runs the same logic without a GPU (how the script was checked).
TB=${TEACHER_BACKEND:-cuda}
prec=bf16; [ "$ARCH" = vit7b16 ] || prec=f16; [ "$TB" = cuda ] || prec=f32
common=(--teacher "$T" --teacher-backend "$TB" --teacher-precision "$prec" --data "$D" --size 224 --holdout 0.2 --threads "$(nproc)")
# STUDENT_BACKEND=cpu (with TEACHER_BACKEND=cpu) runs steps 3-5 without a GPU.
students=(--backend "${STUDENT_BACKEND:-cuda}")

echo "== 3. cache-teacher on the GPU"
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
      --steps 10 --batch 16 --log-every 5 --eval-images 8 --checkpoint-every 100 "${students[@]}" "$@" >"$OUT/$name.log" 2>"$OUT/$name.err"; then
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
echo "== 4. two students, teacher and students on the GPU"
run_two online
echo "== 5. two students from the cache, on the GPU"
if [ -f "$OUT/cache/index.json" ]; then run_two cached --cache "$OUT/cache"; else say "cached: skipped (no cache)"; fi
echo "== summary"
cat "$SUMMARY"
