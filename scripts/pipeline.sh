#!/usr/bin/env bash
# The whole jaxchat pipeline, stage by stage (run through `bash run_all.sh [options]`).
#
#   bash run_all.sh                     tiny preset: CPU, offline, embedded data, <= 30 minutes on 2 cores
#   bash run_all.sh --preset tiny_v1    the same stages with nanochat V1's model, optimizer and packing
#   bash run_all.sh --preset d20        nanochat's speedrun recipe on an 8-GPU node (FineWeb-edu, hub data)
#   bash run_all.sh --preset d20 --dry-run   print every stage's command and the derived shapes/steps/tokens
#   bash run_all.sh --preset master     nanochat master's model and recipe at the tiny size: SFT from base, no RL
#   bash run_all.sh --force             rerun stages whose output already exists
#   WANDB_RUN=name bash run_all.sh ...  also log the training stages to Weights & Biases (the track extra)
#
# A stage whose report section ($JAXCHAT_BASE_DIR/report/<section>.json, written by jaxchat.stage.finish when it
# is done) exists is skipped, so an interrupted run continues from the last finished stage; a failed stage stops
# the run and names its log ($JAXCHAT_BASE_DIR/report/logs/<section>.log).
# Multi-host: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or run under SLURM) and start
# this script on every host with a shared $JAXCHAT_BASE_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${JAXCHAT_VENV_PYTHON:-$ROOT/.venv/bin/python}"
PRESET=tiny
FORCE=0
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET="$2"; shift 2 ;;
    --preset=*) PRESET="${1#*=}"; shift ;;
    --force) FORCE=1; shift ;;
    --dry-run|--dry_run) DRY=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "pipeline: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -f "configs/$PRESET.toml" ] || { echo "pipeline: no preset configs/$PRESET.toml (have: $(ls configs | sed 's/.toml//' | tr '\n' ' '))" >&2; exit 2; }

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
BASE="$("$PY" -c 'from jaxchat.common import base_dir; print(base_dir())')"
REPORT="$BASE/report"
# Every stage is a new process that compiles the same few step functions again (train step, prefill,
# decode loop): JAX's persistent compilation cache turns the repeats into disk reads (measured: a tiny
# chat_eval 59 s -> 41 s). JAX_COMPILATION_CACHE_DIR= (set, empty) opts out.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR-$BASE/xla_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}"
LOGS="$REPORT/logs"
mkdir -p "$LOGS"
P="--preset=$PRESET"
RUN="${WANDB_RUN:+--run=$WANDB_RUN}"  # follow the training stages on Weights & Biases (nanochat's WANDB_RUN)
RESUME="--resume"  # within-stage resume from checkpoints; --force starts stages afresh over the old ones
[ "$FORCE" = 1 ] && RESUME="--overwrite"
# What the preset runs: a GPU preset ([mesh] accelerator) downloads its corpus first; midtraining runs when SFT
# starts from it ([sft] source = "mid"), chat RL unless [pipeline] rl = false (nanochat master's recipe: neither).
FLAGS="$("$PY" -c "from jaxchat import config as C
c = C.load(['mesh', 'sft', 'base', 'pipeline'], ['$P'])
src = c.base.source if c.base.source == 'climbmix' else 'fineweb'  # the shard set a GPU preset downloads
print(int(c.mesh.accelerator), int(c.sft.source == 'mid'), int(c.pipeline.rl), src)")"
read -r GPU_PRESET RUN_MID RUN_RL SRC <<< "$FLAGS"

say() { printf '\n[pipeline %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# stage NAME SECTION command...: skipped when report/SECTION.json exists (unless --force)
stage() {
  local name="$1" marker="$2"; shift 2
  if [ "$DRY" = 1 ]; then
    printf '  %-22s %s\n' "$name" "$*"
    return 0
  fi
  if [ "$FORCE" = 0 ] && [ -f "$REPORT/$marker.json" ]; then
    say "$name: already done ($REPORT/$marker.json), skipping (--force reruns)"
    return 0
  fi
  local log="$LOGS/$marker.log" t0
  t0=$(date +%s)
  say "$name: $* (log: $log)"
  if ! "$@" 2>&1 | tee "$log"; then
    say "FAILED: $name after $(( $(date +%s) - t0 ))s. Log: $log"
    exit 1
  fi
  say "$name: done in $(( $(date +%s) - t0 ))s"
}

# Multi-host: process 0 writes the report and downloads; the others wait for its completion marker before any
# stage lists shards (tok_train trains on process 0 only, the others wait for its tokenizer).
RANK="${JAX_PROCESS_ID:-${SLURM_PROCID:-0}}"
if [ "$DRY" = 1 ]; then
  echo "jaxchat pipeline, preset $PRESET (dry run): stages and commands"
else
  say "preset $PRESET, base dir $BASE"
  # keep finished stages' sections unless --force (an interrupted run continues where it stopped)
  if [ "$RANK" = 0 ]; then "$PY" -m jaxchat.report reset "$P" $([ "$FORCE" = 1 ] || echo --keep-sections); fi
fi

if [ "$GPU_PRESET" = 1 ]; then
  # As nanochat: the shards the tokenizer reads first (its [tokenizer] max_chars), the rest in the background.
  SHARDS="$("$PY" -c "from jaxchat.corpus import shards_needed; print(shards_needed('$PRESET'))" 2>/dev/null || echo 240)"
  TOK_SHARDS="$("$PY" -c "from jaxchat import config as C; from jaxchat.corpus import shards_for_chars
print(shards_for_chars(C.load(['tokenizer'], ['$P']).tokenizer.max_chars, source='$SRC'))")"
  if [ "$DRY" = 1 ]; then
    printf '  %-22s %s\n' download "$PY -m jaxchat.corpus download --source $SRC -n $TOK_SHARDS, then -n $SHARDS in the background"
  elif [ "$RANK" = 0 ]; then
    "$PY" -m jaxchat.corpus download --source "$SRC" -n "$TOK_SHARDS"
    "$PY" -m jaxchat.corpus download --source "$SRC" -n "$SHARDS" > "$LOGS/download.log" 2>&1 &
    DOWNLOAD_PID=$!
  fi
fi

stage tok_train      tokenizer-training     "$PY" -m scripts.tok_train "$P"
stage tok_eval       tokenizer-evaluation   "$PY" -m scripts.tok_eval
if [ "${DOWNLOAD_PID:-}" != "" ]; then say "waiting for the $SRC download"; wait "$DOWNLOAD_PID"; fi
if [ "$GPU_PRESET" = 1 ] && [ "$DRY" = 0 ] && [ "$RANK" != 0 ]; then
  say "waiting for process 0's $SRC download ($SHARDS shards)"
  "$PY" -m jaxchat.corpus wait --source "$SRC" -n "$SHARDS"
fi
if [ "$DRY" = 1 ]; then
  DEV=""; [ "$GPU_PRESET" = 1 ] && DEV="--devices=8"
  "$PY" -m scripts.base_train "$P" --dry_run $DEV 2>/dev/null | grep "dry run" || true
fi
stage base_train     base-model-training    "$PY" -m scripts.base_train "$P" $RESUME $RUN
stage base_loss      base-model-loss        "$PY" -m scripts.base_loss "$P"
stage base_eval      base-model-evaluation  "$PY" -m scripts.base_eval "$P"
if [ "$RUN_MID" = 1 ]; then
  stage mid_train      midtraining            "$PY" -m scripts.mid_train "$P" $RESUME $RUN
  stage chat_eval_mid  chat-evaluation-mid    "$PY" -m scripts.chat_eval "$P" --source=mid
elif [ "$DRY" = 0 ]; then say "no midtraining: this preset's SFT starts from its [sft] source"; fi
stage chat_sft       chat-sft               "$PY" -m scripts.chat_sft "$P" $RESUME $RUN
stage chat_eval_sft  chat-evaluation-sft    "$PY" -m scripts.chat_eval "$P" --source=sft
if [ "$RUN_RL" = 1 ]; then
  stage chat_rl        chat-rl                "$PY" -m scripts.chat_rl "$P" $RESUME $RUN
  stage chat_eval_rl   chat-evaluation-rl     "$PY" -m scripts.chat_eval "$P" --source=rl
elif [ "$DRY" = 0 ]; then say "no chat RL: the preset sets [pipeline] rl = false"; fi
if [ "$DRY" = 1 ]; then
  printf '  %-22s %s\n' report "$PY -m jaxchat.report generate"
  exit 0
fi
if [ "$RANK" = 0 ]; then "$PY" -m jaxchat.report generate; fi

cat <<EOF

Done. The report: $REPORT/report.md
Chat with your model:
  .venv/bin/python -m scripts.chat_cli                 # terminal (the SFT model; -i rl for the RL one)
  .venv/bin/python -m scripts.chat_web                 # browser: http://127.0.0.1:8000
EOF
