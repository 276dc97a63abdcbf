"""The committed record of mutation results, so that a sampled run spread over sessions adds up.

    python benchmarks/mutation/ledger.py record RESULTS NAMES SOURCE --group G --run TEXT
    python benchmarks/mutation/ledger.py known NAMES SOURCE [--alive]  # names recorded (alive)
    python benchmarks/mutation/ledger.py fate NAME TEXT           # what became of a survivor
    python benchmarks/mutation/ledger.py table [GROUP]            # the per-module table
    python benchmarks/mutation/ledger.py group GROUP modules|tests  # groups.toml, for run.sh

A run's mutmut cache lives in a scratch folder that does not outlive a session here; the ledger
(``benchmarks/results/mutation.json``) keeps, per module, the SHA-256 of the source the mutants
were made from, the number of mutants mutmut made of it, and each drawn mutant's status with the
run that measured it (date, machine, commit, command). A mutant's name (``x_f__mutmut_7``)
means the same edit only of the same source, so a module whose source changed starts afresh:
``record`` drops its old results, and ``known`` lists only names recorded for the source as it
is now (``run.sh`` skips those). ``fate`` notes what became of a survivor (the test that now
kills it, or why it is equivalent); the table counts a survivor with an "equivalent" fate apart.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import functools
import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

from summarize import KILLED, wilson

LEDGER = Path(__file__).resolve().parents[1] / "results" / "mutation.json"
GROUPS = Path(__file__).with_name("groups.toml")
NAME = re.compile(r"(cfebm(?:\.\w+)*?)\.(?:xǁ|x_)\S*__mutmut_\d+$")


def load(path: Path = LEDGER) -> dict:
    """The ledger: ``{"runs": [...], "modules": {path: {"sha256", "size", "mutants"}}}``."""
    return json.loads(path.read_text()) if path.is_file() else {"runs": [], "modules": {}}


def save(ledger: dict, path: Path = LEDGER) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ledger, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def module_path(name: str, source: Path) -> str:
    """The file under ``source`` a mutant's name comes from: ``cfebm.apps.ood.x_f__mutmut_1``
    is ``cfebm/apps/ood.py``, and ``cfebm.metrics.ais.x_f__mutmut_1`` the package's
    ``__init__.py`` (mutmut drops "__init__" from names)."""
    m = NAME.match(name)
    if not m:
        raise ValueError(f"not a mutmut mutant name: {name!r}")
    dotted = m.group(1).replace(".", "/")
    for candidate in (f"{dotted}.py", f"{dotted}/__init__.py"):
        if (source / candidate).is_file():
            return candidate
    raise ValueError(f"no module for {name!r} under {source}")


@functools.cache  # once per module, not once per mutant: a process reads a fixed scratch copy
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_results(text: str) -> dict[str, str]:
    """``mutmut results --all true`` lines as ``{name: status}``, unchecked ones left out."""
    out = {}
    for line in text.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and NAME.match(name) and status != "not checked":
            out[name] = status
    return out


def record(ledger: dict, results: dict[str, str], names: list[str], source: Path,
           run: dict, recheck: bool = False) -> int:
    """Adds the results of ``names`` (made from the sources under ``source``) as ``run``;
    returns how many were added. A module whose source differs from the recorded one starts
    afresh. ``size`` is the number of mutants mutmut made of the module (its meta file).
    ``recheck``: the names are survivors run again against new tests; their result goes to
    ``after``, and the first result stays."""
    # one run.sh run records its progress several times: one entry for all of them
    run_id = ledger["runs"].index(run) if run in ledger["runs"] else len(ledger["runs"])
    added = 0
    for name in names:
        if name not in results:
            continue
        path = module_path(name, source)
        digest = sha256(source / path)
        entry = ledger["modules"].get(path)
        if entry is None or entry["sha256"] != digest:
            entry = ledger["modules"][path] = {"sha256": digest, "size": None, "mutants": {}}
        meta = source / "mutants" / f"{path}.meta"
        if meta.is_file():
            entry["size"] = len(json.loads(meta.read_text())["exit_code_by_key"])
        result = {"status": results[name], "run": run_id}
        if recheck and name in entry["mutants"] and entry["mutants"][name]["status"] != "no tests":
            entry["mutants"][name]["after"] = result
        else:
            entry["mutants"][name] = result
        added += 1
    if added and run_id == len(ledger["runs"]):
        ledger["runs"].append(run)
    return added


def known(ledger: dict, names: list[str], source: Path, alive: bool = False) -> list[str]:
    """The ``names`` already recorded for their module's source as it is under ``source``;
    ``alive``: only those no test has killed yet (first run or recheck). A mutant that no
    selected test reached ("no tests") is left out: it runs again, as the selection may have
    grown."""
    out = []
    for name in names:
        path = module_path(name, source)
        entry = ledger["modules"].get(path)
        if not entry or name not in entry["mutants"] or entry["sha256"] != sha256(source / path):
            continue
        if entry["mutants"][name]["status"] == "no tests":
            continue  # a fact about the group's test selection, not the mutant: run it again
        if not alive or _final(entry["mutants"][name]) not in KILLED:
            out.append(name)
    return out


def _final(mutant: dict) -> str:
    """A mutant's latest status: its recheck's, if it had one."""
    return mutant.get("after", mutant)["status"]


def set_fate(ledger: dict, name: str, text: str) -> None:
    for entry in ledger["modules"].values():
        if name in entry["mutants"]:
            entry["mutants"][name]["fate"] = text
            return
    raise SystemExit(f"ledger: {name} is not recorded")


def table(ledger: dict, modules: list[str] | None = None) -> str:
    """The per-module Markdown table: mutants run, killed at once, killed by the tests their
    survival prompted, argued equivalent, still alive; the kill rate first and now (over the
    non-equivalent ones, with its 95% Wilson interval); then both estimates over every mutant of
    the modules, each module's rate weighted by its size; then the mutants not killed at once."""
    rows = [("| module | run | killed | killed after new tests | equivalent | alive | killed % "
             "| 95% interval | killed % now |"),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    total, first, now, size_sum, alive = collections.Counter(), 0.0, 0.0, 0, []
    for path in sorted(modules or ledger["modules"]):
        entry = ledger["modules"].get(path)
        if not entry:
            continue
        c = collections.Counter()
        for name, m in sorted(entry["mutants"].items()):
            c[_kind(m)] += 1
            if m["status"] not in KILLED:
                alive.append(f"{name}: {m['status']} → {_kind(m)}"
                             + (f" ({m['fate']})" if "fate" in m else ""))
        total.update(c)
        rows.append(_row(path, c))
        if entry["size"]:
            n = sum(c.values()) - c["equivalent"]
            first += entry["size"] * c["killed"] / max(n, 1)
            now += entry["size"] * (c["killed"] + c["killed after new tests"]) / max(n, 1)
            size_sum += entry["size"]
    rows.append(_row("**total**", total))
    rows.append(f"\nweighted by module size over all {size_sum} mutants: "
                f"{100 * first / max(size_sum, 1):.1f}% at once, "
                f"{100 * now / max(size_sum, 1):.1f}% now")
    return "\n".join(rows + ["\nnot killed at once:"] + (alive or ["(none)"]))


def _kind(m: dict) -> str:
    """One mutant's column in the table."""
    if m["status"] in KILLED:
        return "killed"
    if m.get("fate", "").startswith("equivalent"):
        return "equivalent"
    return "killed after new tests" if _final(m) in KILLED else "alive"


def _row(name: str, c: collections.Counter) -> str:
    n = sum(c.values()) - c["equivalent"]
    low, high = wilson(c["killed"], n)
    later = c["killed"] + c["killed after new tests"]
    return (f"| {name} | {n + c['equivalent']} | {c['killed']} | {c['killed after new tests']} "
            f"| {c['equivalent']} | {c['alive']} | {100 * c['killed'] / max(n, 1):.1f} | "
            f"{100 * low:.0f}–{100 * high:.0f} | {100 * later / max(n, 1):.1f} |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("results"), r.add_argument("names"), r.add_argument("source")
    r.add_argument("--group", required=True), r.add_argument("--run", required=True)
    r.add_argument("--recheck", action="store_true")
    k = sub.add_parser("known")
    k.add_argument("names"), k.add_argument("source")
    k.add_argument("--alive", action="store_true")
    f = sub.add_parser("fate")
    f.add_argument("name"), f.add_argument("text")
    t = sub.add_parser("table")
    t.add_argument("group", nargs="?")
    g = sub.add_parser("group")
    g.add_argument("group"), g.add_argument("part", choices=["modules", "tests"])
    args = parser.parse_args(argv)
    if args.command == "group":
        print("\n".join(groups(args.group)[args.part]))
        return
    ledger = load()
    if args.command == "record":
        names = Path(args.names).read_text().split()
        results = parse_results(Path(args.results).read_text())
        run = {**json.loads(args.run), "group": args.group}
        n = record(ledger, results, names, Path(args.source), run, args.recheck)
        save(ledger)
        print(f"ledger: {n} results recorded in {LEDGER}")
    elif args.command == "known":
        names = Path(args.names).read_text().split()
        for name in known(ledger, names, Path(args.source), args.alive):
            print(name)
    elif args.command == "fate":
        set_fate(ledger, args.name, args.text)
        save(ledger)
    else:
        print(table(ledger, group_modules(args.group, ledger) if args.group else None))


def groups(name: str | None = None) -> dict:
    """groups.toml: every group, or the one called ``name`` (its modules and tests)."""
    table = tomllib.loads(GROUPS.read_text())
    if name is None:
        return table
    if name not in table:
        raise SystemExit(f"ledger: no group {name!r} (groups.toml has {', '.join(table)})")
    return table[name]


def group_modules(group: str, ledger: dict) -> list[str]:
    """The recorded modules that ``group`` of groups.toml mutates."""
    globs = groups(group)["modules"]
    return [p for p in ledger["modules"] if any(fnmatch.fnmatch(p, g) for g in globs)]


if __name__ == "__main__":
    main(sys.argv[1:])
