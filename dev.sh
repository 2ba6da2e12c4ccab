#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine:
#   ./dev.sh app    install everything, then start the app on the shipped demo model
#   ./dev.sh test   install everything (plus Chromium for browser tests), then run the test suite
# Extra arguments go to the app / pytest.
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-app}"
shift || true

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "[unetviz] installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

if command -v apt-get >/dev/null; then
  apt_install graphviz
  [ "$what" = test ] && apt_install chromium
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[unetviz] creating .venv"
  "$PY" -m venv .venv
fi
# torch first, pinned to the CPU build, so the project's open range is already satisfied and
# pip does not fetch a multi-GB CUDA build. Set UNETVIZ_TORCH to choose another version.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -q "torch==${UNETVIZ_TORCH:-2.13.0}"
fi
if ! .venv/bin/python -c "import unetviz, diffusers, playwright, gradio" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.unetviz-installed ]; then
  .venv/bin/pip install -q -e '.[dev]'
  touch .venv/.unetviz-installed
fi

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
  TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
case "$what" in
  app) exec .venv/bin/python app.py "$@" ;;
  test) exec .venv/bin/python -m pytest -q "$@" ;;
  *) echo "usage: ./dev.sh app|test [args]" >&2; exit 2 ;;
esac
