#!/usr/bin/env bash
# The whole study at the `study` profile (64³, 1,000 phantom patients, the full 6 × 3 × 3 Fig 3b grid) on one GPU, as
# one command, everything it writes in one folder: OUT/data/, OUT/runs/ (executed notebooks, run_manifest.json),
# OUT/figures/study/ (every figure and table, MANIFEST.md with the per-stage times) and OUT/study_log.txt.
# Target: about 8 minutes on one H200-class GPU (budgets estimated, not yet measured; see ctsgan_lib/configs/study.yaml).
#
#   benchmarks/run_study.sh /scratch/study                       # on the GPU machine (DEVICE=cuda)
#   DEVICE=cpu benchmarks/run_study.sh /tmp/study_dry \
#       --set data.n_patients=48 --set data.workers=2 --set nodules.iterations=4 --set nodules.realism_steps=4 \
#       --set ctsgan.iterations=3 --set gan3d.iterations=3 --set generate.n_volumes=16 --set fidelity.n_pairs=2 \
#       --set fidelity.volumes_per_source=3 --set fidelity.pooled_volumes=3 --set fidelity.domain_steps=4 \
#       --set fidelity.calibration_slices=32 --set classifier.n_synthetic=16 --set classifier.n_real_train=0 \
#       --set classifier.epochs=1 --set classifier.finetune_epochs=1 --set classifier.workers=1
#                                                                # dry run of the same path on a CPU (minutes)
# Extra arguments are passed to `ctsgan reproduce` (e.g. --set KEY=VALUE, --pretrained).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: benchmarks/run_study.sh OUT [--set KEY=VALUE ...]}
shift
DEVICE=${DEVICE:-cuda}
CTSGAN=${CTSGAN:-.venv/bin/ctsgan}
mkdir -p "$OUT"
export CTSGAN_ROOT
CTSGAN_ROOT=$(cd "$OUT" && pwd)
LOG="$CTSGAN_ROOT/study_log.txt"
{ date -u; echo "commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"; nproc
  if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1; fi
  echo "ctsgan reproduce --profile study $*"; } | tee "$LOG"
START=$SECONDS
run() { "$CTSGAN" reproduce --profile study --no-progress "$@" 2>&1 | tee -a "$LOG"; }
run --only 01 "$@"
run --only 02 --param device="$DEVICE" "$@"          # notebook 02 defaults to the CPU; the others pick CUDA
run --only 03 04 05 06 07 "$@"
echo "study done in $((SECONDS - START)) s; figures: $CTSGAN_ROOT/figures/study/ (MANIFEST.md)" | tee -a "$LOG"
