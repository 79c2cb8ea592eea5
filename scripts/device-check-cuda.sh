#!/usr/bin/env bash
# GPU-machine check of the CUDA backend (see ../shared/DEVICE.md). Runs, on the device:
#   1. the CUDA parity suite (runtime/tests/cuda.rs): every fixture family against
#      transformers in f32 at every layer (direct run, graph capture, graph replay), f16 and
#      bf16 mean patch cosine against the CPU (tensor-core and CUDA-core attention, head dim
#      16); the random ViT-S/16 (4 registers, head dim 64) at 224, 448 and 224x320 in f16 /
#      bf16 with both attention kernels, each against the CPU; then the backend op suite
#      (runtime/tests/backend_ops.rs: every op on odd shapes, head dims 16-128, f32 / f16 /
#      bf16) and the training op suite (runtime/tests/cuda_training_ops.rs: every backward
#      kernel against the CPU). The emulated runs are CI's, so only the GPU runs here;
#   2. ViT-S/16 (random weights, transformers save_pretrained) through `dinoedge bench --backend
#      cuda`: fp16 batch 1 and 64 at 224, batch 1 at 448, fp32 batch 1; PyTorch eager on the
#      same model, shapes and card in the same run (tools/torch_bench.py) -> ratios;
#   3. ViT-7B/16 (random bf16, 5 GB shards, 13.4 GB): PyTorch bf16 batch 32 at 224 first (then
#      its process exits), then `dinoedge info --backend cuda` (memory plan) and `dinoedge bench
#      --precision bf16 --batch 32` under /usr/bin/time (host peak RSS: no f32 copy on the host),
#      then its tensor-core attention (head dim 128) against the CUDA-core kernel.
# Logs go to $OUT (default ./device-out); summary.txt has the ratios. Build here first:
#   scripts/device-check-cuda.sh --build      # stripped release binaries into .device/cuda (< 64 MiB)
# then, from the device tool (carry `.device/cuda`), in two calls to stay under 600 s each:
#   SKIP_7B=1 scripts/device-check-cuda.sh    # steps 1-2 (about 3 min)
#   ONLY_7B=1 scripts/device-check-cuda.sh    # step 3 (about 5 min: 13.4 GB written and read)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--build" ]; then
  exec scripts/device-build.sh cuda cuda backend_ops cuda_training_ops dinoedge-distill:cuda_trainer
fi

OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"

BIN=${BIN:-.device/cuda/dinoedge}
PARITY=${PARITY:-.device/cuda/cuda}
OPS=${OPS:-.device/cuda/backend_ops}
# The emulator's runs are CI's; here only the GPU.
export DINOEDGE_CUDA_DEVICES=cuda
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.txt"
touch "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1 || true
say "gpu: $(cat "$OUT/gpu.txt")"
"$BIN" info --backend cuda fixtures/hf/dinov3_mlp >"$OUT/info.log" 2>&1 || true
grep -E "^(library|device)" "$OUT/info.log" | tee -a "$SUMMARY" || true

S="$OUT/vits16"
if [ "${ONLY_7B:-0}" != 1 ]; then
[ -f "$S/config.json" ] || timeout 120 $PY tools/torch_bench.py make "$S" --arch vits16 >"$OUT/make-vits16.log" 2>&1 || say "making ViT-S/16 FAILED (make-vits16.log)"
echo "== 1. parity (fixtures and ViT-S/16 vs CPU reference)"
if DINOEDGE_CUDA_MODELS="$S" DINOEDGE_FIXTURES="$PWD/fixtures" DINOEDGE_REQUIRE_CUDA=1 DINOEDGE_REQUIRE_NVRTC=1 timeout 240 "$PARITY" --nocapture >"$OUT/parity.log" 2>&1; then
  say "parity: ok"
else
  say "parity: FAILED (see parity.log)"
fi
grep -E "^(cuda |test result|device:)" "$OUT/parity.log" | tail -n 40 >>"$SUMMARY" || true
grep -E "test result" "$OUT/parity.log" || true
if DINOEDGE_REQUIRE_CUDA=1 timeout 120 "$OPS" cuda_emulated_and_gpu_every_precision --nocapture >"$OUT/backend-ops.log" 2>&1; then
  say "backend ops: ok"
else
  say "backend ops: FAILED (see backend-ops.log)"
fi
grep -E "^cuda|worst" "$OUT/backend-ops.log" >>"$SUMMARY" || true
if DINOEDGE_REQUIRE_CUDA=1 timeout 60 "${TRAIN_OPS:-.device/cuda/cuda_training_ops}" --nocapture >"$OUT/training-ops.log" 2>&1; then
  say "training ops: ok"
else
  say "training ops: FAILED (see training-ops.log)"
fi

# ours MODEL PRECISION BATCH SIZE -> median ms (prints the JSON line to bench.jsonl)
ours() {
  local line
  line=$(timeout 90 "$BIN" bench "$1" --backend cuda --precision "$2" --batch "$3" --size "$4" --iters "${ITERS:-30}" --warmup "${WARMUP:-5}" 2>>"$OUT/bench.err" | tail -n1) || line='{"error":"failed"}'
  echo "$line" >>"$OUT/bench.jsonl"
  echo "$line" | $PY -c 'import json,sys; print(json.load(sys.stdin).get("median_ms","nan"))'
}
# peer MODEL DTYPE BATCH SIZE -> "forward_ms e2e_ms"
peer() {
  local line
  line=$(timeout "${PEER_TIMEOUT:-60}" $PY tools/torch_bench.py bench "$1" --dtype "$2" --batch "$3" --size "$4" 2>>"$OUT/torch.err" | tail -n1) || line='{"error":"failed"}'
  echo "$line" >>"$OUT/torch.jsonl"
  echo "$line" | $PY -c 'import json,sys; d=json.load(sys.stdin); print(d.get("forward_ms","nan"), d.get("e2e_ms","nan"))'
}
row() { # name ours_ms torch_forward torch_e2e
  say "$(printf '%-28s dinoedge %8.3f ms | pytorch eager forward %8.3f ms, with copies %8.3f ms | speedup vs with-copies %5.2fx' "$1" "$2" "$3" "$4" "$($PY -c "import sys; print(float(sys.argv[2]) / float(sys.argv[1]))" "$2" "$4")")"
}

echo "== 2. ViT-S/16"
for spec in "f16 fp16 1 224" "f16 fp16 64 224" "f16 fp16 1 448" "f32 fp32 1 224"; do
  set -- $spec
  o=$(ours "$S" "$1" "$3" "$4")
  read -r tf te < <(peer "$S" "$2" "$3" "$4")
  row "vit-s16 $1 b$3 ${4}px" "$o" "$tf" "$te"
done
fi

if [ "${SKIP_7B:-0}" != 1 ]; then
  echo "== 3. ViT-7B/16 bf16"
  B="$OUT/vit7b16"
  [ -f "$B/config.json" ] || timeout 240 $PY tools/torch_bench.py make "$B" --arch vit7b16 --dtype bf16 >"$OUT/make-vit7b.log" 2>&1 || say "making ViT-7B FAILED (make-vit7b.log)"
  du -sh "$B" 2>/dev/null | tee -a "$SUMMARY" || true
  read -r tf te < <(PEER_TIMEOUT=150 peer "$B" bf16 32 224)
  "$BIN" info --backend cuda "$B" >"$OUT/info-7b.log" 2>&1 || true
  grep -E "memory|device" "$OUT/info-7b.log" | tee -a "$SUMMARY" || true
  TIME=(); [ -x /usr/bin/time ] && TIME=(/usr/bin/time -v)
  "${TIME[@]}" timeout 200 "$BIN" bench "$B" --backend cuda --precision bf16 --batch 32 --size 224 --iters 10 --warmup 2 \
    >"$OUT/bench-7b.log" 2>"$OUT/bench-7b.err" || say "vit-7b bench FAILED (bench-7b.err)"
  o=$(tail -n1 "$OUT/bench-7b.log" | $PY -c 'import json,sys; print(json.load(sys.stdin).get("median_ms","nan"))' 2>/dev/null || echo nan)
  row "vit-7b16 bf16 b32 224px" "$o" "$tf" "$te"
  say "vit-7b host peak RSS: $(grep 'Maximum resident' "$OUT/bench-7b.err" | awk '{print $NF}') KiB"
  if DINOEDGE_CUDA_MODELS="$B" DINOEDGE_REQUIRE_CUDA=1 timeout 200 "$PARITY" tensor_core_attention_matches_at_real_sizes --nocapture >"$OUT/parity-7b.log" 2>&1; then
    say "vit-7b attention parity: ok"
  else
    say "vit-7b attention parity: FAILED (see parity-7b.log)"
  fi
  grep -E "^cuda " "$OUT/parity-7b.log" >>"$SUMMARY" || true
fi
echo "== summary"
cat "$SUMMARY"
