#!/usr/bin/env bash
# Issue 41's side-by-side on this machine: cfebm's fmnist32 preset and the diffusion baseline
# (benchmarks/diffusion.py), each trained for the same wall-clock minutes, one after the other
# (never together: both are timed), scored alike (FMNIST-FID, KID and class coverage of N samples
# against the 10,000 test images) and timed per sample; then one Markdown table.
#
#   bash benchmarks/side_by_side.sh [OUT] [MINUTES] [SEED]     # runs/side-by-side-s0 30 0
#   N_LARGE=10000 bash benchmarks/side_by_side.sh runs/sbs-s1 30 1    # also 10,000 samples each
#
# Needs the bench extra (.venv/bin/pip install -e .[bench]: diffusers) and a quiet machine: the
# budget is wall clock, so anything else running shortens both runs. PYTHON picks the
# interpreter (default .venv/bin/python); PRESET another cfebm preset, for a smoke run only
# (PRESET=quickstart N=8 bash benchmarks/side_by_side.sh /tmp/sbs 0.25). Writes OUT/log.txt and
# OUT/table.md beside the runs; refuses an OUT that exists. docs/notebook/diffusion-baseline.md
# says what each step does.
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${3:-0}"
out="${1:-runs/side-by-side-s$seed}"
minutes="${2:-30}"
n="${N:-2000}"
n_large="${N_LARGE:-0}"
python="${PYTHON:-.venv/bin/python}"
preset="${PRESET:-fmnist32}"
if [ -e "$out" ]; then
  echo "side_by_side: $out exists; name a new folder" >&2
  exit 1
fi
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
echo "side_by_side: $preset and diffusion, $minutes minutes each, seed $seed, N=$n" \
  "N_LARGE=$n_large, $(date -u)"

echo "== 1/4 cfebm train --preset $preset --minutes $minutes"
"$python" -m cfebm.cli train --preset "$preset" --minutes "$minutes" --run-dir "$out/cfebm" \
  --set "train.seed=$seed" --no-progress
echo "== 2/4 cfebm eval (test split, fmnist features)"
for size in "$n" "$n_large"; do
  if [ "$size" -gt 0 ]; then
    "$python" -m cfebm.cli eval "$out/cfebm" --n "$size" --features fmnist --nn-samples 0 \
      --no-progress --json "$out/cfebm-eval-$size.json"
  fi
done
echo "== 3/4 cfebm sampling time ($n samples)"
"$python" benchmarks/side_by_side.py time "$out/cfebm" --n "$n" --json "$out/cfebm-sampling.json"
echo "== 4/4 the diffusion baseline, $minutes minutes"
"$python" benchmarks/diffusion.py --minutes "$minutes" --out "$out/diffusion" --seed "$seed" \
  --n "$n" --n-large "$n_large"
echo
"$python" benchmarks/side_by_side.py table "$out" --n "$n" --n-large "$n_large" \
  --label "cfebm $preset" | tee "$out/table.md"
