"""The ``cfebm`` command line: each subcommand parses, calls the library and saves.

``cfebm`` alone lists the commands by task (train / sample / evaluate / apply / share); every
``cfebm COMMAND --help`` ends with examples (cli/help.py).

    cfebm train --preset quickstart --run-dir runs/qs      (cli/train.py: train, info, presets)
    cfebm sample MODEL --n 64 --out samples.png            (cli/sample.py: sample, export)
    cfebm eval MODEL --features fmnist                     (cli/evaluate.py: fid-ref, eval)
    cfebm prepare --preset P --out DIR                     (cli/prepare.py: the image cache)
    cfebm translate MODEL --input DIR --out DIR            (cli/translate.py)
    cfebm ais MODEL --temperatures 100 --chains 50         (cli/ais.py: likelihood bounds)

Errors the user can fix (bad flags, files, configs, data) print one line and exit with 2; any
other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cfebm import __version__
from cfebm.cli import ais, apps, evaluate, ood, prepare, sample, train, translate
from cfebm.cli.common import FORMATTER, CLIError
from cfebm.cli.help import commands, epilog, overview
from cfebm.config import ConfigError
from cfebm.data import DataError
from cfebm.files import CheckpointError
from cfebm.guides import GuideError
from cfebm.metrics.reference import EvalError
from cfebm.train.distributed import DistributedError
from cfebm.train.loop import RunError

DESCRIPTION = ("Energy-based models learned by coarse-to-fine expanding and sampling (Zhao, Xie "
               "& Li, ICLR 2021).")
USER_ERRORS = (CLIError, ConfigError, CheckpointError, DataError, DistributedError, EvalError,
               GuideError, RunError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfebm", description=DESCRIPTION,
                                     formatter_class=FORMATTER, epilog=epilog("cfebm"))
    parser.add_argument("--version", action="version", version=f"cfebm {__version__}")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help=f"one of these ({parser.prog} alone: by task)")
    for module in (train, sample, evaluate, apps, ood, prepare, translate, ais):
        module.add_commands(sub)
    for choice in sub._choices_actions:  # the one-line help also heads the command's --help
        command = commands(parser)[choice.dest]
        command.description = command.description or choice.help
        command.epilog = epilog(choice.dest)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        print(overview(parser))
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"cfebm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
