# Shared set-up of the GPU scripts (sourced by gpu.sh and gpu_presets.sh): strict mode, the
# repository root, OUT (tables), DEVICE (cuda, or cpu for a dry run) and PY (the interpreter).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
