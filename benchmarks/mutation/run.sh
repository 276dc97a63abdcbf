#!/usr/bin/env bash
# Mutation testing of cfebm's core modules with mutmut 3 (pinned in the `mutation` extra).
#
#   bash benchmarks/mutation/run.sh                  # model, sampling, growth, training, checkpoint
#   bash benchmarks/mutation/run.sh cfebm/growth.py  # only these files (globs as in only_mutate)
#
# Works in a scratch copy (MUTATION_DIR, default /tmp/cfebm-mutation) so that mutmut's mutants/
# never lands in the checkout; reruns there reuse mutmut's cache of finished mutants. One worker,
# at the lowest priority: the machine is shared. Prints the per-module table of
# benchmarks/RESULTS.md, section "Mutation testing" (summarize.py) and leaves mutmut's own results for `mutmut show NAME`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="${MUTATION_DIR:-/tmp/cfebm-mutation}"
py="$repo/.venv/bin/python"
"$py" -c "import mutmut" 2>/dev/null || "$repo/.venv/bin/pip" install -q -e "$repo[dev,mutation]"

mkdir -p "$work"
rm -rf "$work/cfebm" "$work/tests"
cp -r "$repo/cfebm" "$repo/tests" "$work/"
find "$work/cfebm" "$work/tests" -name __pycache__ -prune -exec rm -rf {} +
# The repository's pyproject plus the mutmut section; file arguments replace only_mutate.
"$py" - "$repo" "$work" "$@" <<'PY'
import json, re, sys
from pathlib import Path
repo, work, files = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
section = (repo / "benchmarks/mutation/mutmut.toml").read_text()
if files:
    section = re.sub(r"^only_mutate = \[.*?\]", f"only_mutate = {json.dumps(files)}", section,
                     flags=re.S | re.M)
(work / "pyproject.toml").write_text((repo / "pyproject.toml").read_text() + "\n" + section)
PY

cd "$work"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
start=$(date +%s)
nice -n 19 "$repo/.venv/bin/mutmut" run --max-children 1 || true   # non-zero when mutants survive
echo "mutmut run: $(( $(date +%s) - start )) s in $work"
nice -n 19 "$repo/.venv/bin/mutmut" results --all true > results.txt
"$py" "$repo/benchmarks/mutation/summarize.py" results.txt
