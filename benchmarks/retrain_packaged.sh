#!/usr/bin/env bash
# Issue 35: the packaged model's recipe retrained as `--preset fmnist32-2h` trains today (the
# last 5,000 training images held out for validation; bf16 where the CPU or GPU has it natively),
# then scored on the test split by its card's eval command, so that the card can say which of
# its numbers moved. 304,000 images: 114 minutes on 2 AVX-512 cores, about 13.3 hours on 2 AVX2
# cores (fp32). Resumable: the same command continues a stopped run exactly.
#   bash benchmarks/retrain_packaged.sh [RUN_DIR [TRAIN_OPTION ...]]   (RUN_DIR: runs/f32-2h-val)
# Writes RUN_DIR/eval-test.json, RUN_DIR/export (weights, config, card) and RUN_DIR/samples.png.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-runs/f32-2h-val}"
CFEBM="${CFEBM:-.venv/bin/cfebm}"
if [ -f "$RUN/checkpoints/latest.pt" ]; then
  "$CFEBM" train --run-dir "$RUN" --resume --no-progress "${@:2}"
else
  "$CFEBM" train --preset fmnist32-2h --run-dir "$RUN" --minutes 0 --no-progress \
    --set run.checkpoint_every=2560 "${@:2}"
fi
"$CFEBM" eval "$RUN" --n 2000 --features fmnist --nn-samples 0 --json "$RUN/eval-test.json"
"$CFEBM" export "$RUN" --out "$RUN/export"
"$CFEBM" sample "$RUN" --n 64 --out "$RUN/samples.png"
