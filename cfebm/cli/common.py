"""Flags and checks shared by the ``cfebm`` subcommands, each defined once."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from cfebm.share import PRETRAINED
from cfebm.trained import TrainedModel, load


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Options with their defaults where a default says something; a description and the
    examples after them (``epilog``, cli/help.py) as they are written, line by line.

    argparse's own ArgumentDefaultsHelpFormatter appends "(default: X)" to every option, so a
    flag read "(default: False)", ``--no-fit`` "(default: True)", and an option whose help
    already states its default ("the EMA when kept") stated it twice, the second time as None.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        silent = (action.default is None or action.default is argparse.SUPPRESS
                  or isinstance(action.default, bool) or action.default == [])
        takes_default = action.option_strings or action.nargs in (argparse.OPTIONAL,
                                                                  argparse.ZERO_OR_MORE)
        if silent or not takes_default or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


FORMATTER = HelpFormatter


class CLIError(ValueError):
    """A command-line value that cannot be used; printed as one line."""


def count(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def non_negative(text: str) -> float:
    """An argparse type: a float >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def image_file(text: str) -> str:
    """An argparse type: a file name whose extension names an image format PIL writes."""
    Image.init()
    suffix = Path(text).suffix.lower()
    if suffix not in Image.registered_extensions():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an image file name; end it in .png (or .jpg, .webp, ...)")
    return text


def add_model(p: argparse.ArgumentParser) -> None:
    """The model argument and how to load it: MODEL, --no-ema, --device."""
    p.add_argument("model", help="a training checkpoint (.pt), an export (a .safetensors file "
                   "or an export folder), a run folder (its checkpoints/latest.pt), a Hugging "
                   "Face Hub repo id (owner/name, with cfebm[hub]) or a packaged model's name "
                   f"({', '.join(sorted(PRETRAINED))})")
    p.add_argument("--no-ema", action="store_true",
                   help="use the trained weights, not the EMA (default: the EMA when kept)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


STEPS_HELP = ("Langevin steps per chain (per scale with --cascade; default: the training "
              "schedule's)")


def add_chains(p: argparse.ArgumentParser, cascade: bool = True,
               steps_help: str = STEPS_HELP) -> None:
    """How chains run: --steps, --noise, --seed, --batch-size (and --cascade)."""
    p.add_argument("--steps", type=count(0), help=steps_help)
    p.add_argument("--noise", type=non_negative,
                   help="test-time noise level η0 (default: training's)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--batch-size", type=count(1), default=250, help="chains per batch")
    if cascade:
        p.add_argument("--cascade", action="store_true",
                       help="sample through every coarse stage in turn (A.8) instead of "
                       "Algorithm 2; always on for models trained with sampler.init=cascade or "
                       "frozen")


def load_model(args: argparse.Namespace) -> TrainedModel:
    return load(args.model, ema=False if args.no_ema else None, device=args.device)


def describe_schedule(schedule: list[tuple[int, int]]) -> str:
    return " -> ".join(f"{r}px×{t}" for r, t in schedule)
