"""The README and the documentation pages say only what the code accepts.

Every ``cfebm …`` command in README.md and docs/*.md (code blocks, and inline code in the README's
command table and the pages) is parsed, not run, by the real command-line parser
(``cfebm.cli.build_parser``): a misspelt subcommand or flag, or a value outside a flag's choices,
fails here. Commands run as ``python -m cfebm.cli`` (under torchrun) count too. The lab notebook
(docs/notebook/) is history, written against the code of its day, so its commands are not
checked; its links are. Every relative link and image in README.md, benchmarks/RESULTS.md and
docs/ must point at a file that exists, and an anchor into a Markdown page at one of its
headings (the site's slugs; ``mkdocs build --strict`` checks the same for the site).
"""

from __future__ import annotations

import argparse
import functools
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

from cfebm.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if "notebook" not in p.parts)
LINKED = PAGES + [ROOT / "benchmarks" / "RESULTS.md"] + sorted((DOCS / "notebook").glob("*.md"))

FENCE = re.compile(r"^( *)(```+|~~~+)(.*?)\n(.*?)^\1\2[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"(?<!`)`((?:\.venv/bin/)?cfebm [^`]+)`(?!`)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SHELLS = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|"}


class ParseError(Exception):
    pass


def _raise(self: argparse.ArgumentParser, message: str) -> None:
    raise ParseError(f"{self.prog}: {message}")


def strip_code(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def shell_blocks(text: str) -> list[str]:
    return [m.group(4) for m in FENCE.finditer(text) if m.group(3).strip().lower() in SHELLS]


def cfebm_args(segment: list[str]) -> list[str] | None:
    """The arguments after ``cfebm`` (or ``-m cfebm.cli``) in one shell command, else None."""
    for i, token in enumerate(segment):
        if token == "cfebm.cli" and i > 0 and segment[i - 1] == "-m":
            return segment[i + 1:]
        if Path(token).name == "cfebm" and not token.endswith("/"):
            return segment[i + 1:]
    return None


def commands_in(source: str) -> list[list[str]]:
    """Every cfebm command in a shell snippet, as argv lists (continuations joined, comments
    dropped, ``a && b`` split)."""
    source = source.replace("\\\n", " ")
    found = []
    for line in source.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote in prose-like text: not a command
            continue
        segment: list[str] = []
        for token in tokens + [";"]:
            if token in SEPARATORS:
                args = cfebm_args(segment)
                if args is not None:
                    found.append(args)
                segment = []
            else:
                segment.append(token)
    return found


def documented_commands() -> list[tuple[str, list[str], bool]]:
    """(where, argv, complete) for every command: ``complete`` is False for inline code in
    prose, which may name a command without its required arguments (`cfebm sample`)."""
    out = []
    for page in PAGES:
        text = page.read_text()
        where = str(page.relative_to(ROOT))
        for block in shell_blocks(text):
            out += [(where, argv, True) for argv in commands_in(block)]
        for m in INLINE.finditer(FENCE.sub("", text)):
            out += [(where, argv, False) for argv in commands_in(" ".join(m.group(1).split()))]
    return out


@functools.cache
def strict_parser() -> argparse.ArgumentParser:
    """The CLI's parser with abbreviated flags refused, so the docs spell every flag out."""
    parser = build_parser()
    parsers = [parser]
    while parsers:
        p = parsers.pop()
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
    return parser


INCOMPLETE = ("the following arguments are required", "expected one argument")


def check(argv: list[str], complete: bool) -> None:
    """Parse ``argv`` with the real parser; raise ParseError on what the parser refuses."""
    if "-h" in argv or "--help" in argv:
        return
    saved = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _raise
    try:
        strict_parser().parse_args(argv)
    except ParseError as e:
        if complete or not any(reason in str(e) for reason in INCOMPLETE):
            raise
    finally:
        argparse.ArgumentParser.error = saved


def test_the_pages_hold_commands_to_check():
    commands = documented_commands()
    pages = {where for where, _, _ in commands}
    assert "README.md" in pages and "docs/getting-started.md" in pages
    assert len(commands) > 50
    # the README's first screen: set up, sample the packaged model, train the quick start
    readme = [argv for where, argv, _ in commands if where == "README.md"]
    assert ["sample", "fmnist32-2h"] in readme
    assert ["train", "--preset", "quickstart", "--run-dir", "runs/quickstart"] in readme


def test_every_documented_command_parses():
    failures = []
    for where, argv, complete in documented_commands():
        try:
            check(argv, complete)
        except ParseError as e:
            failures.append(f"{where}: cfebm {shlex.join(argv)}\n    {e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("line", [
    "cfebm smaple fmnist32-2h",                          # a misspelt subcommand
    "cfebm sample fmnist32-2h --nn 3",                   # a misspelt flag
    "cfebm eval fmnist32-2h --features imagenet",        # a value outside the choices
    ".venv/bin/cfebm train --preset quickstart --minute 30",   # argparse would take it: refused
    "cfebm ood fmnist32-2h --ood uniform --outt runs/ood",
    "bash scripts/setup.sh && .venv/bin/cfebm trian --preset quickstart",
    "torchrun --nproc-per-node 8 -m cfebm.cli train --preset tiny --run-dirr runs/x",
])
def test_a_typo_in_a_documented_command_fails(line):
    (argv,) = commands_in(line)
    with pytest.raises(ParseError):
        check(argv, complete=False)


def test_a_prose_mention_may_leave_out_required_arguments_but_a_code_block_may_not():
    check(["sample"], complete=False)
    check(["eval", "--ref"], complete=False)
    with pytest.raises(ParseError):
        check(["sample"], complete=True)


def slug(heading: str) -> str:
    """The site's anchor for a heading (toc with pymdownx.slugs.slugify(case="lower"))."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # links keep their text
    text = re.sub(r"[`*]", "", text)
    text = unicodedata.normalize("NFC", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.MULTILINE)}


def test_every_relative_link_points_at_a_file_that_exists():
    failures = []
    for page in LINKED:
        for m in LINK.finditer(strip_code(page.read_text())):
            target = m.group(1)
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # web addresses and links within the page
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve()
            where = f"{page.relative_to(ROOT)}: {target}"
            if not file.exists():
                failures.append(f"{where}: no such file")
            elif (anchor and file.suffix == ".md" and file.name not in ("api.md", "results.md")
                  and anchor not in anchors(file)):
                failures.append(f"{where}: no heading with this anchor in {file.name}")
    assert not failures, "\n".join(failures)
