"""The mutation-testing tools of benchmarks/mutation draw and count what their docstrings say.

``sample.py``: K names per module, the same draw for a module whether it is sampled alone or
with the whole package, all of a module with fewer than K, only the modules the globs match.
``summarize.py``: a mutant's module is its whole dotted path (train/step and train/checkpoint
are two rows, not one "cfebm.train"), the kill rate and its Wilson interval are the textbook
ones, and the size-weighted estimate weights each module's rate by its number of mutants.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "benchmarks" / "mutation"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"mutation_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sample, summarize = _module("sample"), _module("summarize")


def _metas(root: Path, sizes: dict[str, int]) -> None:
    """mutmut's meta files for modules of the given sizes under root (mutants/)."""
    for path, n in sizes.items():
        meta = root / f"{path}.meta"
        meta.parent.mkdir(parents=True, exist_ok=True)
        dotted = path.removesuffix(".py").replace("/", ".")
        keys = {f"{dotted}.x_f__mutmut_{i}": None for i in range(1, n + 1)}
        meta.write_text(json.dumps({"exit_code_by_key": keys}))


def test_a_modules_draw_does_not_depend_on_the_other_modules(tmp_path):
    whole, group = tmp_path / "whole", tmp_path / "group"
    _metas(whole, {"cfebm/apps/ood.py": 50, "cfebm/growth.py": 40, "cfebm/apps/restore.py": 3})
    _metas(group, {"cfebm/apps/ood.py": 50})
    drawn = sample.sample_names(whole, 5, seed=13)
    ood = [n for n in drawn if n.startswith("cfebm.apps.ood.")]
    assert len(ood) == 5 and len(set(ood)) == 5
    assert sample.sample_names(group, 5, seed=13) == ood
    assert sample.sample_names(whole, 5, seed=13, globs=["cfebm/apps/ood.py"]) == ood
    restore = [n for n in drawn if n.startswith("cfebm.apps.restore.")]
    assert len(restore) == 3                         # fewer than K: all of them
    assert len(drawn) == 5 + 5 + 3
    apps = sample.sample_names(whole, 5, seed=13, globs=["cfebm/apps/*"])
    assert not any(n.startswith("cfebm.growth.") for n in apps) and len(apps) == 8
    assert sample.sample_names(whole, 5, seed=14) != drawn   # the seed changes the draw


def test_the_summary_counts_each_module_on_its_own_row(tmp_path, capsys):
    lines = ["    cfebm.train.step.x_train_step__mutmut_1: killed",
             "    cfebm.train.step.xǁTrainStateǁautocast__mutmut_2: timeout",
             "    cfebm.train.checkpoint.x_read__mutmut_3: survived",
             "    cfebm.train.checkpoint.x_read__mutmut_4: killed",
             "    cfebm.growth.x_crossed__mutmut_5: killed",
             "    cfebm.growth.x_crossed__mutmut_6: no tests"]
    results = tmp_path / "results.txt"
    results.write_text("\n".join(lines) + "\n")
    names = tmp_path / "names.txt"
    names.write_text("cfebm.train.step.x_train_step__mutmut_1\ncfebm.train.checkpoint.x_read__mutmut_3\n"
                     "cfebm.growth.x_crossed__mutmut_5\n")
    summarize.main(str(results))
    out = capsys.readouterr().out
    assert "| cfebm.train.step | 2 | 1 | 1 | 0 | 0 | 0 | 100.0 |" in out
    assert "| cfebm.train.checkpoint | 2 | 1 | 0 | 1 | 0 | 0 | 50.0 |" in out
    assert "| cfebm.growth | 2 | 1 | 0 | 0 | 1 | 0 | 50.0 |" in out
    assert "| **total** | 6 | 3 | 1 | 1 | 1 | 0 | 66.7 |" in out
    summarize.main(str(results), str(names))      # only the sampled three count
    out = capsys.readouterr().out
    assert "| cfebm.train.checkpoint | 1 | 0 | 0 | 1 | 0 | 0 | 0.0 |" in out
    # weighted by all mutants of each module (2 each): (1 * 2 + 0 * 2 + 1 * 2) / 6
    assert "weighted by module size: 66.7% of all 6 mutants" in out


def test_the_wilson_interval_is_the_textbook_one():
    low, high = summarize.wilson(8, 10)
    # Wilson (1927) for 8 of 10 at z = 1.96, computed from its formula by hand
    z, n, p = 1.96, 10, 0.8
    centre = (p + z * z / 20) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / 400) / (1 + z * z / n)
    assert math.isclose(low, centre - half) and math.isclose(high, centre + half)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert summarize.wilson(0, 0) == (0.0, 1.0)
