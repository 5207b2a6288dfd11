#!/usr/bin/env bash
# jaxchat: the single entry point.
#
#   bash run_all.sh setup          create/refresh .venv (idempotent; fast when nothing changed)
#   bash run_all.sh test           setup, then the whole test suite
#   bash run_all.sh [--preset P]   setup, then the whole pipeline (default preset: tiny, CPU, offline)
#
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"

log() { printf '[run_all %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

pick_python() {
  for py in "${JAXCHAT_PYTHON:-}" python3.12 python3.11 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "run_all.sh: need Python >= 3.11 (set JAXCHAT_PYTHON=/path/to/python)" >&2
  return 1
}

setup() {
  local py stamp want extras="${JAXCHAT_EXTRAS:-dev}"
  py="$(pick_python)"
  # The stamp records what decides the install: the pinned files, the Python version and the extras.
  # It is up to date when the first two match and it already has every extra asked for.
  want="$(cat pyproject.toml requirements-data.txt | sha256sum | cut -c1-16)|$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  stamp="$VENV/.jaxchat-setup"
  if [ -f "$stamp" ] && [ -x "$VENV/bin/python" ] && [ "$(cut -d'|' -f1,2 "$stamp")" = "$want" ]; then
    local have missing=0 e
    have="$(cut -d'|' -f3 "$stamp")"
    for e in ${extras//,/ }; do case ",$have," in *",$e,"*) ;; *) missing=1 ;; esac; done
    if [ "$missing" = 0 ]; then log "setup: .venv is up to date"; return 0; fi
    extras="$have,$extras"
  fi
  log "setup: creating/refreshing .venv with $py ($("$py" --version))"
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=24" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -m pip install -q -e ".[$extras]" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-data.txt 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c 'import jax, flax, optax, orbax.checkpoint, grain, sentencepiece, jaxchat' \
    || { echo "run_all.sh: setup failed: the imports above did not work" >&2; return 1; }
  echo "$want|$extras" > "$stamp"
  log "setup: done ($("$VENV/bin/python" -c 'import jax; print("jax", jax.__version__)'))"
}

browser() {
  # The web test drives a real headless Chromium (Debian's package). Installed when we can (root + apt);
  # without it that one test skips and says why.
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "test: installing chromium + chromium-driver for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
      || log "test: could not install chromium; the browser test will be skipped"
  fi
}

run_tests() {
  # the interop extra (CPU torch, tiktoken, safetensors) lets the nanochat-parity tests run
  JAXCHAT_EXTRAS="${JAXCHAT_EXTRAS:-dev,interop}" setup
  browser
  log "test: running the suite (8 emulated CPU devices)"
  "$VENV/bin/python" -m pytest -q "$@"
}

case "${1:-}" in
  setup) shift; setup "$@" ;;
  test) shift; run_tests "$@" ;;
  *) setup; exec bash "$ROOT/scripts/pipeline.sh" "$@" ;;
esac
