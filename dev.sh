#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine:
#   ./dev.sh app            install what the app needs (CPU torch, the app, the `sd` extra for real
#                           Stable Diffusion models), then start the app on the shipped demo model
#   ./dev.sh test           install the test tools too (plus Chromium for browser tests), run the suite
#   ./dev.sh install [app|test]   install only
# Extra arguments go to the app / pytest.
# torch is the CPU build from PyTorch's CPU wheel index (UNETVIZ_TORCH_INDEX) when it answers within
# a few seconds, else from the default index with a one-line notice; UNETVIZ_TORCH picks the version.
# An installed checkout restarts in a few seconds: freshness is a stamp file per extra
# (.venv/.unetviz-installed-app / -test) newer than pyproject.toml, not a round of imports.
set -euo pipefail

say() { echo "[unetviz] $*"; }

TORCH_VERSION="${UNETVIZ_TORCH:-2.13.0}"
TORCH_INDEX="${UNETVIZ_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
TORCH_INDEX_TIMEOUT="${UNETVIZ_TORCH_INDEX_TIMEOUT:-5}"
PY="${PYTHON:-python3}"
# how packages are installed (tests point this at `pip install --dry-run`)
PIP_INSTALL=(.venv/bin/pip install -q --progress-bar off)

# True when the index answers for torch within the timeout (proxies from the environment apply).
index_reachable() {
  "$PY" - "$1" "$TORCH_INDEX_TIMEOUT" >/dev/null 2>&1 <<'EOF'
import sys, urllib.request
url = sys.argv[1].rstrip("/") + "/torch/"
with urllib.request.urlopen(url, timeout=float(sys.argv[2])) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

# torch first, the CPU build, so the project's open range is already satisfied and pip does not
# fetch a multi-GB CUDA build.
install_torch() {
  local spec="torch==$TORCH_VERSION"
  if index_reachable "$TORCH_INDEX"; then
    say "installing $spec, the CPU build from $TORCH_INDEX (~200 MB: 1-3 minutes)"
    "${PIP_INSTALL[@]}" --index-url "$TORCH_INDEX" "$spec"
  else
    say "notice: PyTorch's CPU wheel index $TORCH_INDEX is not reachable: installing $spec from the default index (it may be a CUDA build of several GB)"
    "${PIP_INSTALL[@]}" "$spec"
  fi
}

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

# install_unetviz app|test: the venv, torch, then unetviz with the `app` extra (what the app needs) or
# the `dev` extra (the app's plus the test tools).
install_unetviz() {
  local which="$1" extra stamp
  if command -v apt-get >/dev/null; then
    apt_install graphviz
    [ "$which" = test ] && apt_install chromium
  fi
  [ "$which" = test ] && extra=dev || extra=app
  stamp=".venv/.unetviz-installed-$which"
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$PY" -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    PY=.venv/bin/python
    .venv/bin/python -c "import torch" >/dev/null 2>&1 || install_torch
    say "installing unetviz[$extra] (1-2 minutes)"
    "${PIP_INSTALL[@]}" -e ".[$extra]"
    touch "$stamp"
    say "installed ($(du -sh .venv | cut -f1) in .venv)"
  fi
}

main() {
  cd "$(dirname "$0")"
  local what="${1:-app}"
  shift || true
  export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
  case "$what" in
    app)
      install_unetviz app
      say "starting the app (it prints its address when the page is ready)"
      exec .venv/bin/python app.py "$@"
      ;;
    test)
      install_unetviz test
      exec .venv/bin/python -m pytest -q "$@"
      ;;
    install)
      install_unetviz "${1:-app}"
      ;;
    *) echo "usage: ./dev.sh app|test|install [app|test] [args]" >&2; exit 2 ;;
  esac
}

# run when executed, not when sourced (tests source it to call install_torch)
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
