"""The package's layout holds: imports run one way (cli → apps and train → TrainedModel → guides →
the method → config, with data and metrics beside them), no module imports another inside a
function, and no two modules import each other through any chain.

Read from the source with ``ast`` (every ``import`` and ``from ... import`` of a ``cfebm``
module, wherever it sits), so the test sees what a reader sees, not what happens to be loaded.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cfebm"

# Each part of the package and the parts it may import (itself always included).
METHOD = {"config", "growth", "model", "sampling", "chains", "runtime", "files"}
ALLOWED = {
    "method": set(),
    "data": {"method"},
    "metrics": {"method", "data"},
    "viz": {"method", "data"},
    "guides": {"method", "data"},
    "trained": {"method", "data", "guides"},
    "apps": {"method", "data", "metrics", "trained", "guides", "viz"},
    "train": {"method", "data", "metrics", "trained", "guides", "viz"},
    "cli": {"method", "data", "metrics", "trained", "guides", "viz", "apps", "train"},
    "package": {"trained"},
}


def part(module: str) -> str:
    """The part of the package ``module`` ("cfebm.train.loop") belongs to."""
    names = module.split(".")[1:]
    if not names:
        return "package"
    if names[0] in METHOD:
        return "method"
    if names[0] == "share":  # TrainedModel's sharing: exports, cards, packaged models, the Hub
        return "trained"
    return names[0]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        names = ["cfebm", *path.relative_to(PACKAGE).with_suffix("").parts]
        if names[-1] == "__init__":
            names.pop()
        out[".".join(names)] = path
    return out


def imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported cfebm module, whether the import sits inside a function) for every import
    that runs (those under ``if TYPE_CHECKING:`` serve annotations only)."""
    tree, found = ast.parse(path.read_text()), []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue  # annotations only: never imported at run time
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names
                             if a.name.split(".")[0] == "cfebm")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - child.level + 1]
                                    + ([base] if base else []))
                if base.split(".")[0] == "cfebm":
                    for a in child.names:  # "from cfebm.train import loop" imports a module
                        sub = f"{base}.{a.name}"
                        found.append((sub if sub in MODULES else base, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module):
    mine = part(module)
    for target, _ in imports(MODULES[module], module):
        theirs = part(target)
        if target == "cfebm" or theirs == mine:
            continue  # the package's __version__; a part's own modules
        assert theirs in ALLOWED[mine], f"{module} ({mine}) imports {target} ({theirs})"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_hides_inside_a_function(module):
    hidden = [target for target, inside in imports(MODULES[module], module) if inside]
    assert not hidden, f"{module} imports {hidden} inside a function"


def test_no_import_cycles():
    graph = {m: {t for t, _ in imports(p, m) if t in MODULES and t != m and t != "cfebm"}
             for m, p in MODULES.items()}
    done, stack = set(), []

    def walk(m: str) -> None:
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        stack.append(m)
        for t in sorted(graph[m]):
            walk(t)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        walk(m)


def test_the_checker_sees_a_violation(tmp_path):
    """What the rules must catch, they catch: an app importing the trainer inside a function is
    both an upward import and a hidden one (the checker itself is tested)."""
    app = tmp_path / "app.py"
    app.write_text("import torch\n\ndef f():\n    from cfebm.train import loop\n")
    found = imports(app, "cfebm.apps.app")
    assert found == [("cfebm.train.loop", True)]
    assert part(found[0][0]) not in ALLOWED[part("cfebm.apps.app")]
