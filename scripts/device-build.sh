#!/usr/bin/env bash
# Builds the binaries a GPU-machine check carries (no cargo there, see ../shared/DEVICE.md):
# the dinoedge CLI with FEATURE and each TEST as a standalone binary, stripped, into
# .device/FEATURE, checked against the device tool's 64 MiB carry limit. A TEST is a runtime
# test name, or PACKAGE:TEST for another crate's.
#
#   scripts/device-build.sh FEATURE TEST...    # e.g. cuda cuda dinoedge-distill:cuda_trainer
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURE=${1:?usage: device-build.sh FEATURE TEST...}
shift
[ $# -ge 1 ] || { echo "usage: device-build.sh FEATURE TEST..." >&2; exit 2; }
D=.device/$FEATURE
mkdir -p "$D"
# No debug info (the release profile keeps line tables).
export CARGO_PROFILE_RELEASE_DEBUG=false
cargo build --release --locked -p dinoedge --features "$FEATURE" --bin dinoedge
cp target/release/dinoedge "$D/dinoedge"
strip "$D/dinoedge"
for spec in "$@"; do
  case $spec in
    *:*) pkg=${spec%%:*}; test=${spec#*:} ;;
    *) pkg=dinoedge-runtime; test=$spec ;;
  esac
  exe=$(cargo test --release --locked -p "$pkg" --features "$FEATURE" --test "$test" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("executable")]' | tail -n1)
  cp "$exe" "$D/$test"
  strip "$D/$test"
done
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
size=$(du -sm "$D" | cut -f1)
echo "built $D ($size MiB): $(ls "$D" | tr '\n' ' ')"
if [ "$size" -ge 64 ]; then
  echo "$D is $size MiB: over the device tool's 64 MiB carry limit" >&2
  exit 1
fi
