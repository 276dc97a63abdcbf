#!/usr/bin/env bash
# The 32² recipe search (benchmarks/recipe_sweep.py) on one lent GPU, in one call of about 9
# minutes: every variant in its own process, side by side. Needs the Fashion-MNIST IDX files in
# .gpu/fmnist/ (carried; ignored by git). Results come back as tarballs under $OUT.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"
WALL="${WALL:-7}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

# MPS lets the processes' small kernels run at once instead of time-slicing the GPU.
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
if timeout 20 nvidia-cuda-mps-control -d &&
   timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
  echo "MPS: on"
else
  echo quit | timeout 20 nvidia-cuda-mps-control
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  echo "MPS: off"
  timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item(); print('cuda ok')"
fi

start=$(date +%s)
python3 benchmarks/recipe_sweep.py run --out /tmp/sweep --parallel "${PARALLEL:-16}" --wall-minutes "$WALL" ${VARIANTS:+--variants $VARIANTS} \
  --eval-seconds "${EVAL_SECONDS:-75}" --data-root .gpu/fmnist
echo "sweep wall seconds: $(( $(date +%s) - start ))"
nvidia-smi --query-gpu=memory.used --format=csv

cd /tmp/sweep
tar czf "$OUT/results.tar.gz" results.md ./*.log ./*/result.json ./*/metrics.jsonl ./*/eval_*.png
# Weights in tarballs of at most 5 runs (about 14 MB each).
ls -d ./*/ | xargs -n 5 | nl -w1 | while read -r k dirs; do
  tar cf "$OUT/weights$k.tar" $(for d in $dirs; do ls "$d"*.safetensors; done 2>/dev/null)
done
ls -la "$OUT"
