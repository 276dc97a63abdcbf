#!/usr/bin/env bash
# Each paper preset's time on one GPU: per-iteration times at every stage at the preset's own
# batches and precision (fp32, TF32 convolutions), the peak memory a stage held, and the whole
# schedule's hours from them (benchmarks/throughput.py --batch 0). About 5 minutes on an H200.
#   bash benchmarks/gpu_presets.sh                   # on the GPU machine, from the repository root
#   DEVICE=cpu OUT=/tmp/gpu-dry bash benchmarks/gpu_presets.sh   # plumbing only: tiny batches
source "$(dirname "$0")/gpu_env.sh"
PRESETS="cifar10 imagenet32 celeba64 celebahq128 celebahq256 celebahq512 translate-photo"
if [ "$DEVICE" = cuda ]; then
  ARGS=(--batch 0 --repeats 10)
else  # every stage of every preset at 2 images, one step: that the presets run, nothing more
  ARGS=(--batch 2 --repeats 1 --stages 0,1)
fi
for preset in $PRESETS; do
  echo "== $preset"
  timeout 90 "$PY" benchmarks/throughput.py --device "$DEVICE" --preset "$preset" --modes fp32 \
    "${ARGS[@]}" 2>&1 | grep -v -i warn | tee "$OUT/$preset.md"
done
