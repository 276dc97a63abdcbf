#!/usr/bin/env bash
# Set up cfebm in ./.venv on a fresh machine with python3 (>= 3.11).
#   bash scripts/setup.sh        the library and the `cfebm` command
#   bash scripts/setup.sh dev    also the test and metrics dependencies
# Fashion-MNIST, the default dataset, comes from Debian's dataset-fashion-mnist package when
# apt-get can install it; otherwise torchvision downloads it on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; } \
      >/dev/null 2>&1; then
    echo "setup: could not install dataset-fashion-mnist; torchvision will download Fashion-MNIST"
  fi
fi

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
echo "setup: cfebm installed in $(pwd)/.venv"
