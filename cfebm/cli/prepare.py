"""``cfebm prepare``: decode a dataset once into a memory-mapped cache that training reads.

    cfebm prepare --preset celebahq256 --out data/celebahq256-cache
    cfebm train --preset celebahq256 --set data.cache=data/celebahq256-cache
"""

from __future__ import annotations

import argparse

from cfebm.cli.common import FORMATTER
from cfebm.config import apply_overrides, load_preset, preset_names
from cfebm.data import SPLITS
from cfebm.data.prepare import prepare


def cmd_prepare(args: argparse.Namespace) -> None:
    cfg = apply_overrides(load_preset(args.preset), args.set)
    manifest = prepare(cfg.data, args.out, resolution=cfg.model.max_resolution,
                       channels=cfg.model.image_channels, splits=args.splits,
                       progress=not args.no_progress)
    print(f"cache ready: {manifest}; train with --set data.cache={args.out}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="decode a dataset once into a memory-mapped uint8 cache",
                       formatter_class=FORMATTER)
    p.add_argument("--preset", required=True,
                   help=f"the run's preset (its [data] and model resolution), one of "
                   f"{preset_names()}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. data.root=DIR (repeatable)")
    p.add_argument("--out", required=True, help="cache folder (an interrupted prepare resumes)")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                   help="which splits to write")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_prepare)
