#!/usr/bin/env bash
# Paper-scale measurements on one GPU, as one command: 224³ training-step time and memory (bf16 autocast and fp32),
# generation throughput, the FID extractor, synthetic-cohort cost per volume, and the full file-to-file path with
# data-parallel training across processes (benchmarks/paper_path_check.py). Results: JSON lines under $OUT, a log of
# every step in $OUT/log.txt. Each step has its own time limit and the whole script a deadline, so a slow step is
# cut short and reported instead of eating the machine's time.
#
#   OUT=benchmarks/results/gpu bash benchmarks/gpu_paper_scale.sh                      # on the GPU machine
#   DEVICE=cpu SIZE=32 MEM_SIZES=32 GEN_VOLUMES=2 GEN_N=1 PATH_ARGS="--profile smoke --iterations 4 \
#       --gen-volumes 4 --gen-shards 2" OUT=/tmp/gpu_dry bash benchmarks/gpu_paper_scale.sh   # dry run on a CPU
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-224}
MEM_SIZES=${MEM_SIZES:-64 128 224}
GEN_VOLUMES=${GEN_VOLUMES:-16}
GEN_N=${GEN_N:-6}
PATH_ARGS=${PATH_ARGS:---gen-volumes 32 --gen-shards 8}
DEADLINE_S=${DEADLINE_S:-420}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
START=$SECONDS

step() {  # step NAME LIMIT_S CMD...: run with a limit, skipped when the deadline would pass
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE_S - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then echo "=== $name: SKIPPED (deadline, ${left} s left)" | tee -a "$LOG"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (t=$((SECONDS - START)) s, limit ${limit} s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
  tail -n 4 "$LOG" | sed 's/^/    /'
}

{ date -u; nvidia-smi 2>&1 | head -15; nproc; free -g | head -2
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
} >>"$LOG" 2>&1
cat "$LOG"

OFF=(--set ctsgan.bf16=false --set gan3d.bf16=false)
step throughput_bf16 120 $PY -m ctsgan_lib.cli bench throughput --profile paper --device "$DEVICE" --size "$SIZE" \
  --gen-sizes "$SIZE" --gen-volumes "$GEN_VOLUMES" --out "$OUT/throughput.jsonl"
step memory_bf16 110 $PY -m ctsgan_lib.cli bench memory --profile paper --device "$DEVICE" --sizes $MEM_SIZES \
  --batch 4 --out "$OUT/memory.jsonl"
step paper_path 150 $PY benchmarks/paper_path_check.py --device "$DEVICE" --size "$SIZE" $PATH_ARGS \
  --out "$OUT/paper_path.jsonl"
step generate_cohort 60 $PY benchmarks/generate_cohort.py --sizes "$SIZE" --n "$GEN_N" --batch 4 --device "$DEVICE" \
  --out "$OUT/generate_cohort.jsonl"
step throughput_fp32 60 $PY -m ctsgan_lib.cli bench throughput --profile paper --device "$DEVICE" --size "$SIZE" \
  --gen-sizes "$SIZE" --gen-volumes "$GEN_VOLUMES" --skip fid "${OFF[@]}" --out "$OUT/throughput.jsonl"
step memory_fp32 60 $PY -m ctsgan_lib.cli bench memory --profile paper --device "$DEVICE" --sizes "$SIZE" \
  --batch 4 --no-configured "${OFF[@]}" --out "$OUT/memory.jsonl"
echo "=== done in $((SECONDS - START)) s" | tee -a "$LOG"
