#!/usr/bin/env bash
# DINOv3 ConvNeXt-T on dinoedge's CPU backend beside ONNX Runtime (f32, dynamic int8) on the
# same network: a random-weight ConvNeXt-T from transformers, saved as an HF directory and
# exported to ONNX by `tools/make_fixtures.py convnext-peer` (cached, never committed).
# Batch 1, same thread count, back to back in one run; prints medians and the ratios
# (below 1 means we are faster) as Markdown table rows.
#
#   scripts/bench-convnext.sh [--threads N] [--iters K] [--sizes "224 448"]
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"

THREADS=2
ITERS=20
SIZES="224 448"
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --iters) ITERS=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

ensure_torch_venv
ensure_peers_venv
cargo build --release --locked -p dinoedge --bin dinoedge 2>&1 | tail -n 1 >&2
BIN="$REPO_ROOT/target/release/dinoedge"
PEER="$CACHE_ROOT/convnext-peer"
if [ ! -f "$PEER/convnext_tiny.onnx" ] || [ ! -f "$PEER/hf/model.safetensors" ]; then
  mkdir -p "$PEER"
  "$DINOEDGE_TORCH_VENV/bin/python" tools/make_fixtures.py convnext-peer "$PEER" >&2
fi
PY="$DINOEDGE_PEERS_VENV/bin/python"
field() { "$PY" -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
ratio() { "$PY" -c "print(f'{$1 / $2:.2f}')"; }
ort() { "$PY" tools/bench_peers.py --onnx "$PEER/convnext_tiny.onnx" --peer "$1" --size "$2" --threads "$THREADS" --iters "$ITERS" 2>/dev/null | field median_ms; }
ours() { "$BIN" bench "$PEER/hf" --size "$2" --threads "$THREADS" --iters "$ITERS" --precision "$1" 2>/dev/null | field median_ms; }

echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model:   random-weight DINOv3 ConvNeXt-T (28M), batch 1, threads $THREADS, $ITERS iters, medians in ms"
echo "| size | ORT f32 | ORT int8 | dinoedge f32 | dinoedge bf16 | dinoedge int8 | f32 / ORT f32 | int8 / ORT int8 | int8 / our f32 |"
echo "|---|---|---|---|---|---|---|---|---|"
for size in $SIZES; do
  of=$(ort ort "$size")
  oi=$(ort ort-int8 "$size")
  df=$(ours f32 "$size")
  db=$(ours bf16 "$size")
  di=$(ours int8 "$size")
  printf '| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %s | %s | %s |\n' "$size" "$of" "$oi" "$df" "$db" "$di" \
    "$(ratio "$df" "$of")" "$(ratio "$di" "$oi")" "$(ratio "$di" "$df")"
done
