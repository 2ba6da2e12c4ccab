#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine:
#   ./dev.sh app    install everything, then start the app on the shipped demo model
#   ./dev.sh test   install everything (plus Chromium for browser tests), then run the test suite
# Extra arguments go to the app / pytest.
# An installed checkout restarts in a few seconds: freshness is a stamp file (.venv/.unetviz-installed)
# newer than pyproject.toml, not a round of imports.
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-app}"
shift || true
say() { echo "[unetviz] $*"; }

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing system packages: ${missing[*]} (apt, about a minute)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

if command -v apt-get >/dev/null; then
  apt_install graphviz
  [ "$what" = test ] && apt_install chromium
fi

PY="${PYTHON:-python3}"
STAMP=.venv/.unetviz-installed
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  # torch first, pinned to the CPU build, so the project's open range is already satisfied and
  # pip does not fetch a multi-GB CUDA build. Set UNETVIZ_TORCH to choose another version.
  if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    say "installing torch ${UNETVIZ_TORCH:-2.13.0} (CPU build, ~200 MB: 1-3 minutes)"
    .venv/bin/pip install -q --progress-bar off "torch==${UNETVIZ_TORCH:-2.13.0}"
  fi
  say "installing unetviz and its dependencies (gradio, diffusers, playwright, ...: 1-2 minutes)"
  .venv/bin/pip install -q --progress-bar off -e '.[dev]'
  touch "$STAMP"
  say "installed"
fi

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
  TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
case "$what" in
  app)
    say "starting the app (it prints its address when the page is ready)"
    exec .venv/bin/python app.py "$@"
    ;;
  test) exec .venv/bin/python -m pytest -q "$@" ;;
  *) echo "usage: ./dev.sh app|test [args]" >&2; exit 2 ;;
esac
