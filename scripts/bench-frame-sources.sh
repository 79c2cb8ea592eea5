#!/usr/bin/env bash
# The GStreamer frame source against the folder source on the same clip and model, in one run:
# the JPEG frames of FRAMES_DIR as they are, muxed into MJPEG/AVI, and re-encoded to H.264/MP4
# (x264), each through `dinoedge live --bench` (capture = the source's time per frame, the
# latency it adds; fps end to end), ROUNDS times interleaved. Needs a dinoedge built with
# --features gstreamer and gst-launch-1.0 with -good, -ugly and -libav plugins.
#
#   scripts/bench-frame-sources.sh BIN MODEL FRAMES_DIR [ROUNDS] [-- extra live args]
set -euo pipefail
BIN=${1:?usage: bench-frame-sources.sh BIN MODEL FRAMES_DIR [ROUNDS]} MODEL=${2:?} FRAMES=${3:?}
ROUNDS=${4:-3}
shift $(( $# < 4 ? $# : 4 )); [ "${1:-}" = -- ] && shift
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
N=$(ls "$FRAMES"/*.jpg | wc -l)
mkdir "$WORK/frames"
i=0; for f in $(ls "$FRAMES"/*.jpg | sort); do ln -s "$(realpath "$f")" "$WORK/frames/$(printf %05d $i).jpg"; i=$((i+1)); done
gst-launch-1.0 -q multifilesrc location="$WORK/frames/%05d.jpg" index=0 stop-index=$((N-1)) caps=image/jpeg,framerate=10/1 \
  ! jpegparse ! avimux ! filesink location="$WORK/clip.avi" >/dev/null
gst-launch-1.0 -q multifilesrc location="$WORK/frames/%05d.jpg" index=0 stop-index=$((N-1)) caps=image/jpeg,framerate=10/1 \
  ! jpegdec ! videoconvert ! x264enc ! mp4mux ! filesink location="$WORK/clip.mp4" >/dev/null
echo "# $N frames of $FRAMES; $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
for r in $(seq "$ROUNDS"); do
  for src in folder avi mp4; do
    case $src in
      folder) args=(--frames "$WORK/frames") ;;
      avi) args=(--gst "filesrc location=$WORK/clip.avi ! decodebin") ;;
      mp4) args=(--gst "filesrc location=$WORK/clip.mp4 ! decodebin") ;;
    esac
    "$BIN" live --model "$MODEL" "${args[@]}" --bench --bench-frames "$N" "$@" 2>/dev/null \
      | python3 -c "import json,sys; j=json.loads(sys.stdin.read()); m=j['stage_ms']; print(json.dumps({'round': $r, 'source': '$src', 'frames': j['frames'], 'fps': round(j['fps'],2), 'capture_ms': round(m['capture'],2), 'preprocess_ms': round(m['preprocess'],2), 'forward_ms': round(m['forward'],2)}))"
  done
done | tee "$WORK/runs.jsonl"
python3 - "$WORK/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
med = lambda src, k: statistics.median(r[k] for r in runs if r["source"] == src)
base_fps, base_cap = med("folder", "fps"), med("folder", "capture_ms")
print("| source | capture ms (median of runs) | added vs folder | fps end to end | fps / folder's |")
print("|---|---|---|---|---|")
for src, name in [("folder", "JPEG folder (image crate)"), ("avi", "GStreamer: MJPEG/AVI, decodebin"), ("mp4", "GStreamer: H.264/MP4 (x264), decodebin")]:
    c, f = med(src, "capture_ms"), med(src, "fps")
    print(f"| {name} | {c:.2f} | {c - base_cap:+.2f} | {f:.2f} | {f / base_fps:.3f} |")
PY
