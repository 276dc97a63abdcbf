"""Per-module kill rates from ``mutmut results --all true`` output (see run.sh).

    python benchmarks/mutation/summarize.py results.txt [names.txt]

Prints a Markdown table (module, mutants, killed, timeout, survived, no tests, other, killed %,
and the 95% Wilson interval of the kill rate) followed by the names of the mutants that were not
killed. With ``names.txt`` (from ``sample.py``) only those mutants count: a sampled run leaves the
others "not checked". A timeout counts as killed (the
mutant changed behaviour enough to hang the tests), as mutmut itself counts it.
"""

import collections
import math
import re
import sys
from pathlib import Path

KILLED = {"killed", "timeout"}


def main(path: str, only: str | None = None) -> None:
    wanted = set(Path(only).read_text().split()) if only else None
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    sizes: collections.Counter = collections.Counter()
    alive = []
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        # cfebm.train.step.x_train_step__mutmut_54, cfebm.train.step.xǁTrainStateǁautocast__mutmut_5:
        # the module is every dotted part before the function's (which starts with "x_" or "xǁ")
        m = re.match(r"\s*(cfebm(?:\.\w+)*?)\.(xǁ\S+|x_\S+): (.+)$", line)
        if not m:
            continue
        module, name, status = m.group(1), m.group(2), m.group(3).strip()
        sizes[module] += 1
        if wanted is not None and f"{module}.{name}" not in wanted:
            continue
        counts[module][status] += 1
        if status not in KILLED:
            alive.append(f"{module}.{name}: {status}")
    print("| module | mutants | killed | timeout | survived | no tests | other | killed % "
          "| 95% interval |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    total = collections.Counter()
    for module in sorted(counts):
        c = counts[module]
        total.update(c)
        print(_row(module, c))
    print(_row("**total**", total))
    if wanted is not None:
        print("\n" + _weighted(counts, sizes))
    print("\nnot killed:")
    print("\n".join(alive) or "(none)")


def _row(name: str, c: collections.Counter) -> str:
    n = sum(c.values())
    known = {"killed", "timeout", "survived", "no tests"}
    other = sum(v for k, v in c.items() if k not in known)
    killed = c["killed"] + c["timeout"]
    low, high = wilson(killed, n)
    return (f"| {name} | {n} | {c['killed']} | {c['timeout']} | {c['survived']} | "
            f"{c['no tests']} | {other} | {100 * killed / max(n, 1):.1f} | "
            f"{100 * low:.0f}–{100 * high:.0f} |")


def _weighted(counts: dict[str, collections.Counter], sizes: collections.Counter) -> str:
    """The stratified sample's estimate of the kill rate over every mutant of the modules."""
    rate = {m: (c["killed"] + c["timeout"]) / max(sum(c.values()), 1) for m, c in counts.items()}
    n = sum(sizes[m] for m in counts)
    estimate = sum(rate[m] * sizes[m] for m in counts) / max(n, 1)
    parts = ", ".join(f"{m.rsplit('.', 1)[-1]} {sizes[m]}" for m in sorted(counts))
    return f"weighted by module size: {100 * estimate:.1f}% of all {n} mutants ({parts})"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion ``k / n`` (0–1 when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


if __name__ == "__main__":
    main(*sys.argv[1:3])
