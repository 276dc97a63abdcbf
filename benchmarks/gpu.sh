#!/usr/bin/env bash
# Issue 12's speed measurements on one GPU in under 8 minutes (each part under `timeout`):
#   1. Langevin steps and training iterations per stage, cifar10 at batch 64: fp32 and
#      bf16 + channels-last at every stage, then torch.compile at 32² (fp32: plain, and replayed
#      as CUDA graphs, train.cuda_graphs), with the matrix-multiply peaks of the same run
#      (benchmarks/throughput.py);
#   2. celebahq256 at its own batches and precision (fp32), every stage, and the time its whole
#      schedule takes on this GPU from those per-iteration figures;
#   3. 1-GPU torchrun: the CLI trains the tiny preset through `torchrun --nproc-per-node 1`.
# Worst case 120 + 220 + 80 + 60 s = 8 minutes; compilation (part 1b) is the slow part.
# Tables go to stdout and to $OUT/*.md. DEVICE=cpu runs the same steps on tiny settings (a dry
# run of this script's plumbing; its timings mean nothing).
#   bash benchmarks/gpu.sh                          # on the GPU machine, from the repository root
#   DEVICE=cpu OUT=/tmp/gpu-dry bash benchmarks/gpu.sh
source "$(dirname "$0")/gpu_env.sh"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  SMALL=cifar10 BIG=celebahq256 REPEATS=20 BATCH=64
else
  SMALL=tiny BIG=tiny REPEATS=2 BATCH=16
fi
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
start=$(date +%s)
part() { echo "== $1 ($(( $(date +%s) - start )) s in)"; }

part "1a. $SMALL per stage: fp32, bf16 + channels-last"
timeout 120 "$PY" benchmarks/throughput.py --device "$DEVICE" --preset "$SMALL" --batch "$BATCH" \
  --modes fp32,bf16 --repeats "$REPEATS" | tee "$OUT/throughput.md"
part "1b. $SMALL last stage: torch.compile, plain and with CUDA graphs (compilation not timed)"
timeout 220 "$PY" benchmarks/throughput.py --device "$DEVICE" --preset "$SMALL" --batch "$BATCH" \
  --modes compile,graphs --stages -1 --repeats "$REPEATS" | tee "$OUT/compile.md"
part "2. $BIG at its own batches, fp32, every stage, and its schedule's time"
timeout 80 "$PY" benchmarks/throughput.py --device "$DEVICE" --preset "$BIG" --batch 0 \
  --modes fp32 --repeats "$((REPEATS / 2))" | tee "$OUT/big.md"
part "3a. cfebm train under torchrun, 1 process"
rm -rf /tmp/gpu-torchrun
timeout 60 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m cfebm.cli train \
  --preset tiny --run-dir /tmp/gpu-torchrun --no-progress --set "train.device=\"$DEVICE\"" 2>&1 \
  | grep -v Warning | tee "$OUT/torchrun.log"
"$PY" -c "from cfebm.files import read; print('torchrun run reached', read('/tmp/gpu-torchrun/checkpoints/latest.pt')['n_images'], 'images')"
part "done"
