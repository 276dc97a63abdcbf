#!/usr/bin/env bash
# Mutation testing of cfebm with mutmut 3 (pinned in the `mutation` extra).
#
#   bash benchmarks/mutation/run.sh --group apps --sample 30  # 30 per module of a group of
#                                                             # groups.toml, against its tests
#   bash benchmarks/mutation/run.sh --group apps --sample 30 --recheck  # its survivors again
#   bash benchmarks/mutation/run.sh --sample 30 'cfebm/apps/*' # ... against every test file
#   bash benchmarks/mutation/run.sh cfebm/growth.py            # every mutant of these files
#
# --sample K [--seed S] first lets mutmut generate every mutant and learn which tests reach
# which function (an instrumented pass over the selected tests, kept in MUTATION_DIR for later
# runs), then runs K mutants per module drawn by sample.py (seeded per module, so a group's
# draw is the whole package's draw there). --group NAME takes the modules and the test files
# from groups.toml: the traced pass then takes minutes, not the whole suite's twenty. A sampled
# run records each result in the committed ledger (ledger.py, benchmarks/results/mutation.json)
# and skips the drawn mutants the ledger already has for the source as it is, so a run spread
# over sessions adds up; --recheck runs the drawn mutants no test has killed yet against the
# tests as they are now (the ledger keeps both results); `ledger.py table` prints the per-module table of
# benchmarks/RESULTS.md. MAX_CHILDREN (default 1) sets mutmut's workers: 2 on an otherwise
# idle 2-core machine.
#
# Works in a scratch copy (MUTATION_DIR, default /tmp/cfebm-mutation[/GROUP]) so that mutmut's
# mutants/ never lands in the checkout; reruns there reuse mutmut's cache of finished mutants.
# At the lowest priority: the machine may be shared. Leaves mutmut's own results for
# `mutmut show NAME`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
py="$repo/.venv/bin/python"
tools="$repo/benchmarks/mutation"
sample=0 seed=13 group="" recheck=""
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --sample) sample="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --group) group="$2"; shift 2 ;;
    --recheck) recheck="--recheck"; shift ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
work="${MUTATION_DIR:-/tmp/cfebm-mutation${group:+/$group}}"
tests=()
if [[ -n "$group" ]]; then
  (( $# == 0 )) || { echo "run.sh: --group takes its modules from groups.toml, not $*" >&2; exit 2; }
  mapfile -t modules < <("$py" "$tools/ledger.py" group "$group" modules)
  mapfile -t tests < <("$py" "$tools/ledger.py" group "$group" tests)
  set -- "${modules[@]}"
fi
"$py" -c "import mutmut" 2>/dev/null || "$repo/.venv/bin/pip" install -q -e "$repo[dev,mutation]"

mkdir -p "$work"
rm -rf "$work/cfebm" "$work/tests"
cp -r "$repo/cfebm" "$repo/tests" "$work/"
find "$work/cfebm" "$work/tests" -name __pycache__ -prune -exec rm -rf {} +
# The repository's pyproject plus the mutmut section; file arguments replace only_mutate.
# The group's test files, if any, replace the selection of every test file.
TESTS="${tests[*]}" "$py" - "$repo" "$work" "$@" <<'PY'
import json, os, re, sys
from pathlib import Path
repo, work, files = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
tests = os.environ["TESTS"].split()
section = (repo / "benchmarks/mutation/mutmut.toml").read_text()
if files:
    section = re.sub(r"^only_mutate = \[.*?\]", f"only_mutate = {json.dumps(files)}", section,
                     flags=re.S | re.M)
if tests:
    section = re.sub(r"^pytest_add_cli_args_test_selection = \[.*?\]",
                     f"pytest_add_cli_args_test_selection = {json.dumps(tests)}", section,
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
  "$py" "$tools/sample.py" mutants "$sample" "$seed" "$@" > names.txt
  # mutmut reruns every mutant it is named, finished or not: name only those without a result
  # here or in the ledger, so that a stopped run resumes where it stopped, in any session.
  "$py" "$tools/ledger.py" known names.txt . > ledgered.txt
  if [[ -n "$recheck" ]]; then
    # --recheck: the drawn mutants that no test has killed yet, against today's tests
    "$py" "$tools/ledger.py" known names.txt . --alive > todo.txt
    cp todo.txt names.txt
  else
    "${mutmut[@]}" results --all true > results.txt
    grep -Fxf names.txt <(sed -n 's/^ *\(.*\): not checked$/\1/p' results.txt) \
      | grep -vFxf ledgered.txt > todo.txt || true
  fi
  echo "sampled $(wc -l < names.txt) mutants ($sample per module, seed $seed);" \
       "$(wc -l < ledgered.txt) in the ledger, $(wc -l < todo.txt) to run ${recheck:+again}"
  run_facts=$(cd "$repo/benchmarks" && "$py" -c "import json, sys, time, record
print(json.dumps({'date': time.strftime('%Y-%m-%d'), 'machine': record.machine(),
                  'commit': sys.argv[1], 'seed': int(sys.argv[2]), 'sample': int(sys.argv[3]),
                  'children': int(sys.argv[4])}))" "$(git -C "$repo" rev-parse --short HEAD)" \
                  "$seed" "$sample" "$children")
  record() {
    "${mutmut[@]}" results --all true > results.txt &&
      "$py" "$tools/ledger.py" record results.txt names.txt . --group "${group:-files}" \
        --run "$run_facts" $recheck || true
  }
  # The ledger learns each result within five minutes: a session may end mid-run.
  ( while sleep 300; do record > /dev/null 2>&1; done ) &
  recorder=$!
  trap 'kill $recorder 2>/dev/null || true' EXIT
  mapfile -t names < todo.txt
  if (( ${#names[@]} > 0 )); then
    "${mutmut[@]}" run --max-children "$children" "${names[@]}" || true
  fi
  kill $recorder 2>/dev/null || true
  record
else
  "${mutmut[@]}" run --max-children "$children" || true   # non-zero when mutants survive
fi
echo "mutmut run: $(( $(date +%s) - start )) s in $work"
if (( sample > 0 )); then
  "$py" "$tools/ledger.py" table ${group:+"$group"}
else
  "${mutmut[@]}" results --all true > results.txt
  "$py" "$tools/summarize.py" results.txt
fi
