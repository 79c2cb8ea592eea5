#!/usr/bin/env bash
# The live pipeline, per stage, on the real-object tracking sequence of examples/track.rs
# (40 frames of 868x600 with its first-frame mask), in masks mode: `dinoedge live --bench`
# with the stages in turn and overlapped, without views and with all three drawn, ROUNDS
# times interleaved, each round also timing the forward alone (`dinoedge bench` at the
# pipeline's input size); then `dinoedge track` at 480. Prints one JSON line per run and a
# Markdown table of medians:
#   fwd_alone_ms   the forward alone, this round;
#   of_forward     end-to-end fps / the forward-alone rate;
#   outside        (1000 / fps - fwd_alone_ms) / fwd_alone_ms: the wall time per frame not
#                  explained by the forward, as a fraction of it;
#   stage medians  inside the pipeline (capture runs on the source's own thread).
# Give BASE (an older dinoedge binary) to time it in the same run.
#
#   scripts/bench-live.sh BIN MODEL [ROUNDS] [BASE]
set -euo pipefail
BIN=${1:?usage: bench-live.sh BIN MODEL [ROUNDS] [BASE]} MODEL=${2:?}
ROUNDS=${3:-3} BASE=${4:-}
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
(cd "$REPO_ROOT" && cargo build --release --locked -q -p dinoedge-examples --example track)
"$REPO_ROOT/target/release/examples/track" "$MODEL" "$WORK/clip" 40 >/dev/null
F=$WORK/clip/gt/frames K=$WORK/clip/gt/masks/00000.png
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; model $MODEL" >&2
[ -f "$MODEL/config.json" ] || { echo "no config.json in $MODEL" >&2; exit 1; }
P=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(c.get('patch_size', 16))" "$MODEL/config.json")
run() { # name bin args...
  local name=$1 bin=$2; shift 2
  "$bin" live --model "$MODEL" --frames "$F" --mask "$K" --bench --bench-frames 40 \
    --threads 2 --size 224 "$@" 2>/dev/null | tail -n 1 \
    | python3 -c "import json,sys; j=json.loads(sys.stdin.read()); m=j['stage_ms']; a=$ALONE; print(json.dumps({'run': '$name', 'fps': round(j['fps'],2), 'fwd_alone_ms': round(a,1), 'of_forward': round(j['fps']*a/1e3,3), 'outside': round((1e3/j['fps']-a)/a,3), 'capture': round(m['capture'],1), 'preprocess': round(m['preprocess'],1), 'forward': round(m['forward'],1), 'propagate': round(m['propagate'],1), 'post': round(m['post'],1)}))"
}
# The pipeline's input size: the grid of one run times the patch.
GRID=$("$BIN" live --model "$MODEL" --frames "$F" --bench --bench-frames 1 --threads 2 --size 224 2>/dev/null | tail -n 1 | python3 -c "import json,sys; g=json.loads(sys.stdin.read())['grid']; print(g[0]*$P, g[1]*$P)")
set -- $GRID; IH=$1 IW=$2
for r in $(seq "$ROUNDS"); do
  ALONE=$("$BIN" bench "$MODEL" --height "$IH" --width "$IW" --threads 2 2>/dev/null | tail -n 1 \
    | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['median_ms'])")
  [ -n "$BASE" ] && run base "$BASE"
  run "in turn, no views" "$BIN" --overlap off
  run "overlapped, no views" "$BIN" --overlap on
  run "in turn, all views" "$BIN" --overlap off --bench-views
  run "overlapped, all views" "$BIN" --overlap on --bench-views
done | tee "$WORK/runs.jsonl"
python3 - "$WORK/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
keys = ["fps", "fwd_alone_ms", "of_forward", "outside", "capture", "preprocess", "forward", "propagate", "post"]
print("| run | " + " | ".join(keys) + " |")
print("|---" * (len(keys) + 1) + "|")
for name in dict.fromkeys(r["run"] for r in runs):
    rs = [r for r in runs if r["run"] == name]
    print(f"| {name} | " + " | ".join(f"{statistics.median(r[k] for r in rs):g}" for k in keys) + " |")
PY
for b in $BASE "$BIN"; do
  "$b" track --model "$MODEL" --frames "$F" --mask "$K" --out "$WORK/track-$(basename "$b")" \
    --size 480 --threads 2 2>&1 | tail -n 1
done
