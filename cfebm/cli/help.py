"""What ``cfebm`` says about itself: its commands grouped by task, and examples for each.

``cfebm`` alone prints ``overview``; every ``cfebm CMD --help`` ends with the examples of
``EXAMPLES[CMD]`` (``epilog``). tests/test_cli_help.py parses every example with the real
parser, so none of them can name a flag that does not exist.
"""

from __future__ import annotations

import argparse
import shutil
import textwrap

# Each group of commands, in the order a user meets them.
GROUPS = {
    "train": ("train", "presets", "prepare"),
    "sample": ("sample", "interpolate", "noise-sweep"),
    "evaluate": ("eval", "fid-ref", "ais"),
    "apply": ("denoise", "inpaint", "superres", "ood", "translate"),
    "share": ("export", "info"),
}

# One or two example lines per command: `cfebm ...  # what it does`.
EXAMPLES = {
    "cfebm": (
        "cfebm sample fmnist32-2h --n 64 --out samples.png   # the packaged model, no training",
        "cfebm train --preset quickstart --run-dir runs/quickstart   # about 5 minutes on a CPU",
    ),
    "train": (
        "cfebm train --preset fmnist32 --minutes 30 --run-dir runs/f32   # fitted to 30 minutes",
        "cfebm train --run-dir runs/f32 --resume   # continue exactly where it stopped",
    ),
    "presets": ("cfebm presets",),
    "prepare": (
        "cfebm prepare --preset celebahq256 --out data/celebahq256-cache",
        "cfebm train --preset celebahq256 --set data.cache=data/celebahq256-cache",
    ),
    "sample": (
        "cfebm sample fmnist32-2h --n 64 --out samples.png   # as trained (Algorithm 2)",
        "cfebm sample fmnist32-2h --class sneaker --n 16 --out sneakers.png   # steered (--and B)",
    ),
    "interpolate": ("cfebm interpolate fmnist32-2h --pairs 2 --points 11 --out interpolate.png",),
    "noise-sweep": ("cfebm noise-sweep fmnist32-2h --n 8 --etas 0,0.015,0.03 --out sweep.png",),
    "eval": (
        "cfebm eval fmnist32-2h --n 2000 --features fmnist --nn-samples 0   # test split",
        "cfebm eval runs/f32 --split validation --n 1000   # to choose between checkpoints",
    ),
    "fid-ref": (
        "cfebm fid-ref --dataset fashion_mnist --split test --features fmnist --out ref.npz",
        "cfebm eval runs/f32 --n 10000 --features fmnist --ref ref.npz",
    ),
    "ais": ("cfebm ais fmnist32-2h --temperatures 100 --chains 20 --n 100 --out ais.json",),
    "denoise": (
        "cfebm denoise fmnist32-2h --sigma 0.2 --out denoise.png",
        "cfebm denoise fmnist32-2h --images my_images/ --out mine.png   # your own images",
    ),
    "inpaint": ("cfebm inpaint fmnist32-2h --mask centre --completions 5 --out inpaint.png",),
    "superres": (
        "cfebm superres fmnist32-2h --factor 4 --completions 3 --out superres.png   # 8x8 -> 32x32",
    ),
    "ood": (
        "cfebm ood fmnist32-2h --ood uniform constant interp vflip invert --out runs/ood",
        "cfebm ood fmnist32-2h --ood mnist --score all   # MNIST files in ~/.cache/cfebm/data",
    ),
    "translate": (
        "cfebm train --preset translate-fmnist --run-dir runs/tr   # sneakers to ankle boots",
        "cfebm translate runs/tr --n 16 --out runs/tr/translated",
    ),
    "export": (
        "cfebm export runs/f32 --out f32-model   # a folder a model hub takes: weights, config, card",
        "cfebm export runs/f32 --out f32.safetensors   # one file",
    ),
    "info": (
        "cfebm info fmnist32-2h   # a packaged model, with its model card",
        "cfebm info runs/f32 --config",
    ),
}


def epilog(command: str) -> str | None:
    """The examples that end ``cfebm COMMAND --help`` (``"cfebm"``: the top-level help)."""
    lines = EXAMPLES.get(command)
    return None if lines is None else "examples:\n" + "\n".join(f"  {x}" for x in lines)


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands' parsers of ``parser``, by name."""
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def overview(parser: argparse.ArgumentParser) -> str:
    """What ``cfebm`` alone prints: its commands by task, each with its one-line description."""
    found = commands(parser)
    width = max(map(len, found)) + 4
    columns = max(60, min(100, shutil.get_terminal_size().columns))
    usage = f"usage: {parser.prog} COMMAND [options]   ({parser.prog} COMMAND --help: its options"
    lines = [usage + " and examples)", "", parser.description or "", ""]
    for group, names in GROUPS.items():
        lines.append(f"{group}:")
        lines += [textwrap.fill(found[name].description, columns, initial_indent=f"  {name:<{width - 2}}",
                                subsequent_indent=" " * width) for name in names]
    return "\n".join(lines + ["", epilog("cfebm")])
