"""Per-module kill rates from ``mutmut results --all true`` output (see run.sh).

    python benchmarks/mutation/summarize.py results.txt

Prints a Markdown table (module, mutants, killed, timeout, survived, no tests, other, killed %)
followed by the names of the mutants that were not killed. A timeout counts as killed (the
mutant changed behaviour enough to hang the tests), as mutmut itself counts it.
"""

import collections
import re
import sys

KILLED = {"killed", "timeout"}


def main(path: str) -> None:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    alive = []
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        m = re.match(r"\s*(cfebm\.\w+)\.(\S+): (.+)$", line)
        if not m:
            continue
        module, name, status = m.group(1), m.group(2), m.group(3).strip()
        counts[module][status] += 1
        if status not in KILLED:
            alive.append(f"{module}.{name}: {status}")
    print("| module | mutants | killed | timeout | survived | no tests | other | killed % |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    total = collections.Counter()
    for module in sorted(counts):
        c = counts[module]
        total.update(c)
        print(_row(module, c))
    print(_row("**total**", total))
    print("\nnot killed:")
    print("\n".join(alive) or "(none)")


def _row(name: str, c: collections.Counter) -> str:
    n = sum(c.values())
    known = {"killed", "timeout", "survived", "no tests"}
    other = sum(v for k, v in c.items() if k not in known)
    killed = c["killed"] + c["timeout"]
    return (f"| {name} | {n} | {c['killed']} | {c['timeout']} | {c['survived']} | "
            f"{c['no tests']} | {other} | {100 * killed / max(n, 1):.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
