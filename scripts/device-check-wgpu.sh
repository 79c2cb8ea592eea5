#!/usr/bin/env bash
# GPU-machine check of the wgpu backend (see ../shared/DEVICE.md). Runs, on the device:
#   1. the wgpu parity suite (every fixture family, f32 and f16 weights) against the CPU
#      reference, and the backend op suite (runtime/tests/backend_ops.rs: every op on odd
#      shapes, f32 and f16) on the GPU's adapter;
#   2. ViT-S/16 at 224, batch 1 and 64, f32 and f16, through `dinoedge bench --backend wgpu`,
#      on a random-weight DINOv3 ViT-S/16 written there with transformers' save_pretrained;
#   3. the same on the CPU backend and, when the binary has it, the CUDA backend (ratios).
# Logs go to $OUT (default ./device-out). Build here first (no cargo on the device):
#   scripts/device-check-wgpu.sh --build      # stripped release binaries into .device/wgpu (< 64 MiB)
# then, from the device tool, carry `.device/wgpu` and `.gl` and run:
#   scripts/device-check-wgpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--build" ]; then
  exec scripts/device-build.sh wgpu wgpu_parity backend_ops
fi

OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"

# Vulkan loader on the GPU machine (DEVICE.md): carried .debs, NVIDIA ICD.
if [ -d .gl ] && ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
BIN=${BIN:-.device/wgpu/dinoedge}
[ -x "$BIN" ] || BIN=target/release/dinoedge

{
  echo "== adapters"; "$BIN" info --backend wgpu
} >"$OUT/adapters.log" 2>&1 || true
tail -n 3 "$OUT/adapters.log"

echo "== parity (fixtures vs CPU reference)"
PARITY=${PARITY:-.device/wgpu/wgpu_parity}
if [ -x "$PARITY" ]; then
  DINOEDGE_FIXTURES="$PWD/fixtures" DINOEDGE_REQUIRE_WGPU=1 "$PARITY" --nocapture >"$OUT/parity.log" 2>&1 && echo "parity: ok" || echo "parity: FAILED (see parity.log)"
  grep -E "test result" "$OUT/parity.log" || true
fi
OPS=${OPS:-.device/wgpu/backend_ops}
if [ -x "$OPS" ]; then
  DINOEDGE_REQUIRE_WGPU=1 "$OPS" wgpu_f32_and_f16 --nocapture >"$OUT/backend-ops.log" 2>&1 && echo "backend ops: ok" || echo "backend ops: FAILED (see backend-ops.log)"
  grep -E "^wgpu|worst|test result" "$OUT/backend-ops.log" || true
fi

echo "== ViT-S/16 benchmark"
MODEL="$OUT/vits16"
if [ ! -f "$MODEL/config.json" ]; then
  python3 - "$MODEL" <<'PY' >"$OUT/model.log" 2>&1
import sys, torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel
torch.manual_seed(0)
cfg = DINOv3ViTConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                      num_register_tokens=4, patch_size=16)
DINOv3ViTModel(cfg).save_pretrained(sys.argv[1])
PY
fi
for backend in ${BACKENDS:-cpu wgpu cuda}; do
  for precision in f32 f16; do
    for batch in ${BATCHES:-1 64}; do
      line=$("$BIN" bench "$MODEL" --backend "$backend" --precision "$precision" --size 224 --batch "$batch" --iters "${ITERS:-20}" --warmup "${WARMUP:-5}" 2>>"$OUT/bench.err" | tail -n1) || line="{\"backend\":\"$backend\",\"error\":\"unavailable\"}"
      echo "$line" | tee -a "$OUT/bench.jsonl"
    done
  done
done
