"""The command line explains itself: ``cfebm`` alone lists its commands by task and exits 0,
and every ``cfebm COMMAND --help`` ends with examples that the real parser accepts (parsed as
tests/test_docs.py parses the documentation's commands: abbreviated flags refused)."""

import pytest
from test_docs import ParseError, check, commands_in

from cfebm.cli import build_parser, main
from cfebm.cli.help import EXAMPLES, GROUPS, commands

COMMANDS = sorted(commands(build_parser()))


def test_every_command_has_examples_and_a_group():
    grouped = [c for names in GROUPS.values() for c in names]
    assert sorted(grouped) == COMMANDS, "each command in exactly one group"
    assert list(GROUPS) == ["train", "sample", "evaluate", "apply", "share"]
    assert sorted(EXAMPLES) == sorted([*COMMANDS, "cfebm"])
    assert all(1 <= len(lines) <= 2 for lines in EXAMPLES.values())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_ends_with_its_examples_as_written(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out.rstrip("\n")
    expected = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])
    assert out.endswith(expected)  # not re-wrapped into a paragraph
    flat = " ".join(out.split())   # help wraps lines anywhere
    for empty in ("(default: None)", "(default: False)", "(default: True)", "(default: [])"):
        assert empty not in flat   # a default that says nothing is not shown
    for option in flat.split(" --")[1:]:   # nor one the option's own help already states
        assert option.count("(default:") <= 1, option


def test_help_shows_the_defaults_that_say_something(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    flat = " ".join(capsys.readouterr().out.split())
    assert "chains per batch (default: 250)" in flat
    assert "random seed (default: 0)" in flat
    assert "(default: the EMA when kept)" in flat   # stated by the help itself, once


@pytest.mark.parametrize("command", ["cfebm", *COMMANDS])
def test_every_example_parses_with_the_real_parser(command):
    found = [argv for line in EXAMPLES[command] for argv in commands_in(line)]
    assert len(found) == len(EXAMPLES[command]), "one cfebm command per example line"
    for argv in found:
        check(argv, complete=True)
    # a command's own help shows that command at work
    assert command == "cfebm" or command in {argv[0] for argv in found}


def test_the_checker_refuses_a_misspelt_example():
    (argv,) = commands_in("cfebm export runs/f32 --outt f32-model   # a typo")
    with pytest.raises(ParseError):
        check(argv, complete=True)


def test_cfebm_alone_lists_the_commands_by_task(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    headings = [line[:-1] for line in out.splitlines() if line.endswith(":") and
                not line.startswith(" ")]
    assert headings[:5] == list(GROUPS) and headings[5] == "examples"
    listed = [line.split()[0] for line in out.splitlines()  # not a wrapped line's rest
              if line.startswith("  ") and not line.startswith("   ")
              and not line.startswith("  cfebm")]
    assert listed == [c for names in GROUPS.values() for c in names]
    for line in EXAMPLES["cfebm"]:
        assert f"  {line}" in out


def test_top_level_help_ends_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.rstrip().endswith(EXAMPLES["cfebm"][-1])
