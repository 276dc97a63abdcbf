#!/usr/bin/env bash
# Mutation testing of cfebm with mutmut 3 (pinned in the `mutation` extra).
#
#   bash benchmarks/mutation/run.sh --sample 30                  # 30 per module, every module
#   bash benchmarks/mutation/run.sh --sample 30 'cfebm/apps/*'   # ... of one group (globs as in
#                                                                #     only_mutate), fits an hour
#   bash benchmarks/mutation/run.sh cfebm/growth.py              # every mutant of these files
#
# The full run takes many hours on 2 cores; --sample K [--seed S] first lets mutmut generate
# every mutant and learn which tests reach which function (the instrumented pass over all the
# selected tests, ~20 minutes, kept in MUTATION_DIR for later runs), then runs K mutants per
# module drawn by sample.py (seeded per module, so a group's draw is the whole package's draw
# there), and summarize.py reports each module's rate with its 95% interval and the
# size-weighted estimate over all mutants. MAX_CHILDREN (default 1) sets mutmut's workers: 2 on
# an otherwise idle 2-core machine.
#
# Works in a scratch copy (MUTATION_DIR, default /tmp/cfebm-mutation) so that mutmut's mutants/
# never lands in the checkout; reruns there reuse mutmut's cache of finished mutants. At the
# lowest priority: the machine may be shared. Prints the per-module table of
# benchmarks/RESULTS.md, section "Mutation testing" (summarize.py) and leaves mutmut's own
# results for `mutmut show NAME`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="${MUTATION_DIR:-/tmp/cfebm-mutation}"
py="$repo/.venv/bin/python"
sample=0 seed=13
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --sample) sample="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
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
mutmut=(nice -n 19 "$repo/.venv/bin/mutmut")
children="${MAX_CHILDREN:-1}"
start=$(date +%s)
if (( sample > 0 )); then
  # A name that matches no mutant: mutmut generates every mutant and collects (or loads) the
  # test coverage, then stops on "nothing matches" before running any.
  "${mutmut[@]}" run --max-children "$children" "generate-only" > generate.log 2>&1 || true
  grep -q "nothing matches" generate.log || { tail -20 generate.log; exit 1; }
  "$py" "$repo/benchmarks/mutation/sample.py" mutants "$sample" "$seed" "$@" > names.txt
  # mutmut reruns every mutant it is named, finished or not: name only those without a result,
  # so that a stopped run resumes where it stopped.
  "${mutmut[@]}" results --all true > results.txt
  grep -Fxf names.txt <(sed -n 's/^ *\(.*\): not checked$/\1/p' results.txt) > todo.txt || true
  echo "sampled $(wc -l < names.txt) mutants ($sample per module, seed $seed);" \
       "$(wc -l < todo.txt) still to run"
  mapfile -t names < todo.txt
  if (( ${#names[@]} > 0 )); then
    "${mutmut[@]}" run --max-children "$children" "${names[@]}" || true
  fi
else
  "${mutmut[@]}" run --max-children "$children" || true   # non-zero when mutants survive
fi
echo "mutmut run: $(( $(date +%s) - start )) s in $work"
"${mutmut[@]}" results --all true > results.txt
if (( sample > 0 )); then
  "$py" "$repo/benchmarks/mutation/summarize.py" results.txt names.txt
else
  "$py" "$repo/benchmarks/mutation/summarize.py" results.txt
fi
