#!/usr/bin/env bash
# Issue 25 ([gpu-speed]): before/after CT-SGAN generation and training speed on one GPU, one command, a few minutes
# on one H200 at the paper's widths and 224³. JSON lines go to $OUT/gpu_speed.jsonl (benchmarks/gpu_speed.py says
# what each record holds); a log of every step to $OUT/gpu_speed_log.txt. Each step has its own time limit and the
# whole script a deadline, so a slow step (e.g. torch.compile) is cut short and reported, not left to eat the lease.
#
#   bash benchmarks/gpu_speed.sh                                   # on the GPU machine: benchmarks/results/gpu/
#   DRY_RUN=1 bash benchmarks/gpu_speed.sh                         # CPU dry run at 32³, smoke widths, to /tmp
#
# The dry run only proves every path runs; its numbers mean nothing and never go into benchmarks/results/gpu/.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ "${DRY_RUN:-0}" = 1 ]; then
  OUT=${OUT:-$(mktemp -d /tmp/gpu_speed_dry.XXXXXX)}
  DEVICE=cpu; SIZE=32
  GEN_ARGS=${GEN_ARGS:---widths smoke --gen-volumes 4 --gen-batch 2 --slice-batches 16 60 --repeats 1 --cpu-bf16 --no-compile --profile-ops 6}
  TRAIN_ARGS=${TRAIN_ARGS:---widths smoke --train-steps 1 --train-batch 2 --cpu-bf16}
  DEADLINE_S=${DEADLINE_S:-600}
else
  OUT=${OUT:-benchmarks/results/gpu}
  DEVICE=${DEVICE:-cuda}; SIZE=${SIZE:-224}
  GEN_ARGS=${GEN_ARGS:---widths paper --gen-volumes 48 --gen-batch 16 --slice-batches 1024 2048 --repeats 2}
  TRAIN_ARGS=${TRAIN_ARGS:---widths paper --train-steps 5}
  DEADLINE_S=${DEADLINE_S:-420}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
JSONL="$OUT/gpu_speed.jsonl"
LOG="$OUT/gpu_speed_log.txt"
START=$SECONDS

step() {  # step NAME LIMIT_S CMD...: run with a limit, skipped when the deadline would pass
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE_S - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then echo "=== $name: SKIPPED (deadline, ${left} s left)" | tee -a "$LOG"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (t=$((SECONDS - START)) s, limit ${limit} s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
}

{ date -u; command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | head -15; nproc
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
} >>"$LOG" 2>&1
# generation first (the 6 ms/volume goal), then training (the 0.1 s/step goal); separate processes, separate limits
step generate 300 $PY benchmarks/gpu_speed.py --device "$DEVICE" --size "$SIZE" --skip train $GEN_ARGS --out "$JSONL"
step train 150 $PY benchmarks/gpu_speed.py --device "$DEVICE" --size "$SIZE" --skip generate $TRAIN_ARGS --out "$JSONL"
echo "=== done in $((SECONDS - START)) s; records: $JSONL" | tee -a "$LOG"
