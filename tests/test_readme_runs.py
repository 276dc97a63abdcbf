"""The README's commands run as written, not only parse (tests/test_docs.py parses them all).

Every `cfebm` command of the README that finishes in seconds on a CPU from a fresh clone is run
here through the real entry point, in a fresh folder, exactly as the README writes it: the first
screen's `cfebm sample fmnist32-2h`, `cfebm info`, `cfebm presets` and the packaged model's
chains. The others train, score 2,000 samples, or read what a fresh clone lacks (a user's run
folder, CIFAR, CelebA); CI runs the Quick start's test command.
"""

import pytest
from test_docs import documented_commands

from cfebm.cli import main

# The README's commands that run in seconds from a fresh clone, by their first words, and the
# file each must leave behind in the folder it runs in unless its --out names another (None:
# printing is all it does).
QUICK = {("sample", "fmnist32-2h"): "samples.png", ("info", "fmnist32-2h"): None,
         ("presets",): None, ("interpolate", "fmnist32-2h"): "interpolate.png",
         ("noise-sweep", "fmnist32-2h"): "noise_sweep.png"}


def readme_commands() -> list[list[str]]:
    """The README's commands (code blocks and inline code), each as argv, each once."""
    found = [argv for where, argv, _ in documented_commands() if where == "README.md"]
    return [list(a) for a in dict.fromkeys(tuple(argv) for argv in found)]


def key(argv: list[str]) -> tuple[str, ...] | None:
    return next((k for k in QUICK if tuple(argv[:len(k)]) == k), None)


def test_the_readme_holds_every_quick_command():
    """So that this file cannot silently run nothing: each of QUICK stands in the README."""
    assert set(QUICK) <= {key(argv) for argv in readme_commands()}


@pytest.mark.slow
@pytest.mark.parametrize("argv", [a for a in readme_commands() if key(a)], ids=" ".join)
def test_a_quick_readme_command_runs_as_written(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0, argv
    wrote = argv[argv.index("--out") + 1] if "--out" in argv else QUICK[key(argv)]
    if wrote is None:
        assert capsys.readouterr().out.strip()
    else:
        assert (tmp_path / wrote).is_file() and (tmp_path / wrote).stat().st_size > 0, wrote
