"""The ``cfebm`` command line: each subcommand parses, calls one library function and saves.

    cfebm train --preset quickstart --run-dir runs/qs [--set growth.lr=[1e-3,1e-3]] [--resume]
    cfebm sample runs/qs/checkpoints/latest.pt --n 64 --out samples.png [--cascade]
    cfebm info runs/qs/checkpoints/latest.pt
    cfebm presets
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from cfebm import __version__, cli_eval
from cfebm.checkpoint import CheckpointError, config_of, load_sampler, read
from cfebm.config import ConfigError, apply_overrides, load_preset, preset_names, to_dict
from cfebm.data import DataError
from cfebm.growth import growth_at, total_images
from cfebm.model import EnergyNet, count_parameters, frozen
from cfebm.runner import RunError, run_training
from cfebm.sampling import sample, sampling_schedule
from cfebm.training import resolve_device
from cfebm.viz import save_grid, save_images

USER_ERRORS = (ConfigError, CheckpointError, DataError, RunError, ValueError, FileNotFoundError)


def _next_run_dir(root: Path, preset: str) -> Path:
    """runs/00007-<preset>: one more than the highest number already there."""
    numbers = [int(p.name[:5]) for p in root.glob("[0-9][0-9][0-9][0-9][0-9]-*")]
    return root / f"{max(numbers, default=-1) + 1:05d}-{preset}"


def cmd_train(args: argparse.Namespace) -> None:
    latest = Path(args.run_dir) / "checkpoints" / "latest.pt" if args.run_dir else None
    if args.resume and latest is not None and latest.exists():
        cfg = config_of(read(latest))  # continue with the run's own config (plus any --set)
    else:
        cfg = load_preset(args.preset)
    cfg = apply_overrides(cfg, args.set)
    if args.dry_run:
        print(json.dumps(to_dict(cfg), indent=2))
        return
    run_dir = Path(args.run_dir) if args.run_dir else _next_run_dir(Path("runs"), args.preset)
    logging.info("run directory: %s", run_dir)
    budget = None if args.minutes is None else 60.0 * args.minutes
    state = run_training(cfg, run_dir, resume=args.resume, stop_at=args.stop_at,
                         time_budget=budget, progress=not args.no_progress)
    print(f"trained to {state.n_images} images; samples in {run_dir / 'samples'}, "
          f"checkpoint {run_dir / 'checkpoints' / 'latest.pt'}")


def cmd_sample(args: argparse.Namespace) -> None:
    if args.n < 1 or (args.steps is not None and args.steps < 0):
        raise ValueError("--n must be >= 1 and --steps >= 0")
    device = resolve_device(args.device)
    model = load_sampler(args.checkpoint, ema=not args.no_ema, device=device)
    schedule = sampling_schedule(model.growth, steps=args.steps, cascade=args.cascade,
                                 init=model.cfg.sampler.init)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with frozen(model.net):
        x = sample(model.net, args.n, schedule, model.cfg.sampler, noise_std=args.noise,
                   beta=model.growth.beta, coarse=model.coarse, generator=generator,
                   device=device)
    out = save_grid(x, args.out, scale=args.scale)
    print(f"wrote {args.n} samples ({' -> '.join(f'{r}px×{t}' for r, t in schedule)}) to {out}")
    if args.each:
        paths = save_images(x, args.each)
        print(f"wrote {len(paths)} image files to {args.each}")


def cmd_info(args: argparse.Namespace) -> None:
    ckpt = read(args.checkpoint)
    cfg = config_of(ckpt)
    growth = growth_at(int(ckpt["n_images"]), cfg.growth)
    net = EnergyNet(cfg.model)
    m = cfg.model
    lines = [
        f"file            {args.checkpoint} ({Path(args.checkpoint).stat().st_size / 1e6:.1f} MB)",
        f"cfebm version   {ckpt['version']} (reading with {__version__})",
        f"progress        {ckpt['n_images']:,} / {total_images(cfg.growth):,} images",
        f"stage           {growth.stage} of {len(cfg.growth.resolutions)} "
        f"({growth.resolution}x{growth.resolution}, beta {growth.beta:.3f})",
        f"model           c={m.channels}, {m.image_channels} channel(s), up to "
        f"{m.max_resolution}x{m.max_resolution}, {m.activation}, spectral_norm={m.spectral_norm}, "
        f"residual={m.residual}, head={m.head}",
        f"parameters      {count_parameters(net):,} in total, "
        f"{count_parameters(net, m.max_resolution):,} used at {m.max_resolution}x{m.max_resolution}",
        f"EMA weights     {'yes' if ckpt['ema'] is not None else 'no'}",
        f"sampler         init={cfg.sampler.init}, {len(ckpt.get('coarse', []))} frozen coarse "
        f"model(s), step {cfg.sampler.step_size:g}, noise {cfg.sampler.noise_std:g} "
        f"({cfg.sampler.noise_schedule})",
        f"recoveries      {ckpt['recoveries']} (learning-rate scale {ckpt['lr_scale']})",
        f"data            {cfg.data.dataset}",
        "schedule        " + ", ".join(
            f"{r}px: {n:,} img, fade {f:,}, batch {b}, lr {lr:g}, T={t}" for r, n, f, b, lr, t in zip(
                cfg.growth.resolutions, cfg.growth.stage_images, cfg.growth.fade_images,
                cfg.growth.batch_size, cfg.growth.lr, cfg.growth.n_steps)),
    ]
    print("\n".join(lines))
    if args.config:
        print(json.dumps(to_dict(cfg), indent=2))


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="cfebm", description=__doc__.split("\n")[0],
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"cfebm {__version__}")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an energy-based model coarse to fine", formatter_class=fmt)
    p.add_argument("--preset", default="quickstart",
                   help=f"configuration preset, one of {preset_names()}")
    p.add_argument("--run-dir", help="output folder (default: runs/NNNNN-<preset>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. growth.lr=[1e-3,1e-3] (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    p.add_argument("--stop-at", type=int, help="stop after this many training images")
    p.add_argument("--minutes", type=float,
                   help="stop after this many minutes of training iterations (a time budget)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a checkpoint (Algorithm 2)",
                       formatter_class=fmt)
    p.add_argument("checkpoint", help="a training checkpoint (.pt)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--out", default="samples.png", help="the grid image to write")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--steps", type=int, help="Langevin steps (per scale with --cascade; "
                   "default: the training schedule's)")
    p.add_argument("--noise", type=float, help="test-time noise level η0 (default: training's)")
    p.add_argument("--cascade", action="store_true",
                   help="sample through every coarse stage in turn (A.8) instead of Algorithm 2; "
                   "always on for models trained with sampler.init=cascade or frozen")
    p.add_argument("--each", metavar="DIR", help="also write one PNG per sample into DIR")
    p.add_argument("--scale", type=int, default=2, help="enlarge the grid this many times")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("info", help="describe a checkpoint", formatter_class=fmt)
    p.add_argument("checkpoint")
    p.add_argument("--config", action="store_true", help="also print the full config")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("presets", help="list the configuration presets", formatter_class=fmt)
    p.set_defaults(func=lambda _: print("\n".join(preset_names())))
    cli_eval.add_commands(sub)  # fid-ref, eval
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
