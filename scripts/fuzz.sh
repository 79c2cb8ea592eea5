#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser (fuzz/fuzz_targets/*.rs) with libFuzzer through
# cargo-fuzz, on the stable toolchain (no sanitizer instrumentation: `-s none`; the targets
# themselves assert the invariants, and a panic, abort, timeout or out-of-memory is a crash).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 20 s, every target
#
# Each target starts from its committed corpus (fuzz/corpus/TARGET, the audit's hostile
# inputs and valid seeds), writes new inputs to a scratch corpus, and the script prints how
# many inputs each target ran and what it found. A crash fails the script and leaves its
# input in fuzz/artifacts/TARGET/ (add it to the corpus once fixed). Targets run one per
# core at once (DINOEDGE_FUZZ_JOBS overrides the count).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-20}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(config safetensors onnx y4m mask cache_index checkpoint http)
fi
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "[fuzz] installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  # A debug build of the tool: it only drives cargo and libFuzzer, and builds in half the time.
  cargo install --locked --quiet --debug cargo-fuzz --version "$CARGO_FUZZ_VERSION" || exit 3
fi
SCRATCH=$(mktemp -d)
# Interrupted: stop the fuzzers still running before their scratch corpus goes.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$SCRATCH"' EXIT
# One build for every target.
t0=$(date +%s)
cargo fuzz build --fuzz-dir fuzz -s none --features libfuzzer -O >/dev/null 2>"$SCRATCH/build.log" \
  || { tail -n 30 "$SCRATCH/build.log" >&2; exit 1; }
echo "[fuzz] built ${#TARGETS[@]} targets in $(( $(date +%s) - t0 )) s"

# One target: its summary line in $SCRATCH/TARGET.line, exit status 1 on a crash.
fuzz_target() {
  local t=$1 log="$SCRATCH/$1.log" found runs cov new rc=0
  mkdir -p "$SCRATCH/$t"
  if cargo fuzz run --fuzz-dir fuzz -s none --features libfuzzer -O "$t" "$SCRATCH/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECS" -rss_limit_mb=2500 -timeout=20 -print_final_stats=1 >"$log" 2>&1; then
    found="nothing"
  else
    found="CRASH: $(grep -m1 -E 'panicked at|ERROR: libFuzzer|deadly signal|out-of-memory|timeout' "$log" || echo 'see log')"
    rc=1
    tail -n 40 "$log" >&2
  fi
  runs=$(grep -m1 -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+' || echo "?")
  new=$(find "$SCRATCH/$t" -type f | wc -l)
  printf '[fuzz] %-12s %10s execs in %s s, coverage %5s edges, %4s new corpus inputs, found %s\n' \
    "$t" "$runs" "$SECS" "$cov" "$new" "$found" >"$SCRATCH/$t.line"
  return $rc
}

# libFuzzer is single-threaded: one target per core.
JOBS=${DINOEDGE_FUZZ_JOBS:-$(nproc)}
status=0
pids=()
for t in "${TARGETS[@]}"; do
  fuzz_target "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$JOBS" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
for t in "${TARGETS[@]}"; do cat "$SCRATCH/$t.line" 2>/dev/null || echo "[fuzz] $t: no summary (the run died)"; done
exit $status
