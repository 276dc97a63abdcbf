"""Draw a seeded random sample of mutmut's mutants, the same number from each module.

    python benchmarks/mutation/sample.py MUTANTS_DIR K SEED [GLOB ...] > names.txt

Reads the ``*.py.meta`` files mutmut writes next to its mutated copies (one key per mutant in
``exit_code_by_key``) and prints ``K`` names per module, drawn from the sorted names with a
generator seeded by SEED and the module's path, so a rerun with the same seed and the same
source picks the same mutants, and a module's draw does not depend on which other modules were
generated (a run over one group, e.g. ``cfebm/apps/*``, draws what the whole package's run
draws there). A module with fewer than ``K`` mutants contributes all of them. ``GLOB`` s (as in
mutmut's ``only_mutate``, e.g. ``cfebm/apps/*``) keep only the modules they match: mutants/
keeps the other modules' files from earlier runs. Used by ``run.sh --sample K``:
a stratified sample makes the per-module kill rate an unbiased estimate (``summarize.py`` adds
its 95% interval) at a cost that fits an hour on 2 cores, where the full run takes several.
"""

from __future__ import annotations

import fnmatch
import json
import random
import sys
from pathlib import Path


def sample_names(mutants_dir: Path, k: int, seed: int, globs: list[str] = ()) -> list[str]:
    """``k`` mutant names per module under ``mutants_dir`` (of the modules ``globs`` match, or
    all), seeded; sorted for reading."""
    mutants_dir = Path(mutants_dir)
    metas = [m for m in sorted(mutants_dir.rglob("*.py.meta"))
             if not globs or any(fnmatch.fnmatch(source_of(m, mutants_dir), g) for g in globs)]
    if not metas:
        raise SystemExit(f"no mutmut meta files under {mutants_dir}: run mutmut once first")
    chosen = []
    for meta in metas:
        names = sorted(json.loads(meta.read_text())["exit_code_by_key"])
        rng = random.Random(f"{seed}:{source_of(meta, mutants_dir)}")
        chosen += names if len(names) <= k else rng.sample(names, k)
    return sorted(chosen)


def source_of(meta: Path, mutants_dir: Path) -> str:
    """The module's path in the repository, e.g. "cfebm/apps/ood.py", of its meta file."""
    return meta.relative_to(mutants_dir).as_posix().removesuffix(".meta")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    print("\n".join(sample_names(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                 sys.argv[4:])))
