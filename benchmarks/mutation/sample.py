"""Draw a seeded random sample of mutmut's mutants, the same number from each module.

    python benchmarks/mutation/sample.py MUTANTS_DIR K SEED > names.txt

Reads the ``*.py.meta`` files mutmut writes next to its mutated copies (one key per mutant in
``exit_code_by_key``) and prints ``K`` names per module, drawn with ``random.Random(SEED)``
from the sorted names, so a rerun with the same seed and the same source picks the same mutants.
A module with fewer than ``K`` mutants contributes all of them. Used by ``run.sh --sample K``:
a stratified sample makes the per-module kill rate an unbiased estimate (``summarize.py`` adds
its 95% interval) at a cost that fits an hour on 2 cores, where the full run takes several.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path


def sample_names(mutants_dir: Path, k: int, seed: int) -> list[str]:
    """``k`` mutant names per module under ``mutants_dir``, seeded; sorted for reading."""
    metas = sorted(Path(mutants_dir).rglob("*.py.meta"))
    if not metas:
        raise SystemExit(f"no mutmut meta files under {mutants_dir}: run mutmut once first")
    rng = random.Random(seed)
    chosen = []
    for meta in metas:
        names = sorted(json.loads(meta.read_text())["exit_code_by_key"])
        chosen += names if len(names) <= k else rng.sample(names, k)
    return sorted(chosen)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    print("\n".join(sample_names(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
