"""``cfebm train``, ``cfebm info`` and ``cfebm presets``.

    cfebm train --preset quickstart --run-dir runs/qs [--set growth.lr=[1e-3,1e-3]] [--resume]
    cfebm info runs/qs/checkpoints/latest.pt
    cfebm info fmnist32-2h           # a packaged model: also its model card
    cfebm info my-model/             # an export folder: also its card (README.md)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from cfebm import __version__
from cfebm.cli.common import FORMATTER, CLIError, count, describe_schedule, non_negative
from cfebm.config import Config, apply_overrides, load_preset, preset_names, to_dict
from cfebm.files import config_of, read
from cfebm.growth import total_images
from cfebm.model import count_parameters
from cfebm.runtime import resolve_device
from cfebm.sampling import step_size_at
from cfebm.share import CARD_FILE, EXPORT_FILE, PRETRAINED, model_card
from cfebm.train import distributed
from cfebm.train.budget import evaluation_seconds, fit_schedule
from cfebm.train.loop import run_training
from cfebm.trained import load

DEFAULT_PRESET = "quickstart"

log = logging.getLogger(__name__)


def _next_run_dir(root: Path, preset: str) -> Path:
    """runs/00007-<preset>: one more than the highest number already there."""
    numbers = [int(p.name[:5]) for p in root.glob("[0-9][0-9][0-9][0-9][0-9]-*")]
    return root / f"{max(numbers, default=-1) + 1:05d}-{preset}"


def _latest_checkpoint(run_dir: str | None, direction: str | None) -> Path | None:
    """The checkpoint a resumed run takes its config from: ``run_dir``'s own, or with
    ``--direction both`` the first of its two models' (``run_dir/ab``, ``run_dir/ba``)."""
    if not run_dir:
        return None
    folders = [Path(run_dir)] + ([Path(run_dir) / d for d in ("ab", "ba")]
                                 if direction == "both" else [])
    return next((f / "checkpoints" / "latest.pt" for f in folders
                 if (f / "checkpoints" / "latest.pt").exists()), None)


def cmd_train(args: argparse.Namespace) -> None:
    latest = _latest_checkpoint(args.run_dir, args.direction)
    if args.resume and latest is None:
        if args.preset is None:
            raise CLIError(f"--resume: {args.run_dir or 'no --run-dir'} holds no checkpoint to "
                           "continue; pass --preset to start a new run there")
        log.info("no checkpoint in %s: starting a new %s run", args.run_dir, args.preset)
    if args.resume and latest is not None:
        cfg = config_of(read(latest))  # continue with the run's own config (plus any --set)
    else:
        cfg = load_preset(args.preset or DEFAULT_PRESET)
    cfg = apply_overrides(cfg, args.set)
    if args.minutes is not None:  # the run records its budget: a resumed run keeps it
        cfg = replace(cfg, run=replace(cfg.run, minutes=args.minutes))
    minutes = cfg.run.minutes
    with distributed.process_group(cfg.train.device) as shard:  # torchrun: one rank of many
        if minutes and args.fit and not args.dry_run and latest is None:
            cfg = _fitted(cfg, minutes, shard)
        run_dir = shard.broadcast(Path(args.run_dir) if args.run_dir  # rank 0 numbers it
                                  else _next_run_dir(Path("runs"), args.preset or DEFAULT_PRESET))
        for direction_dir, direction_cfg in translation_runs(cfg, run_dir, args.direction):
            if args.dry_run:
                print(json.dumps(to_dict(direction_cfg), indent=2))
                continue
            if shard.is_main:
                log.info("run directory: %s", direction_dir)
            state = run_training(direction_cfg, direction_dir, resume=args.resume,
                                 stop_at=args.stop_at,
                                 time_budget=60.0 * minutes if minutes else None,
                                 progress=not args.no_progress, shard=shard)
            if shard.is_main:
                print(f"trained to {state.n_images} images; samples in "
                      f"{direction_dir / 'samples'}, checkpoint "
                      f"{direction_dir / 'checkpoints' / 'latest.pt'}")


def _fitted(cfg: Config, minutes: float, shard: distributed.Shard) -> Config:
    """``cfg`` with its schedule fitted to ``minutes`` on this machine (``cfebm.train.budget``); as it
    is under torchrun (the ranks would time differently) and for translation runs."""
    if shard.world > 1 or cfg.task.kind != "generate":
        log.info("--minutes: the schedule is not fitted (%s)",
                 "several processes" if shard.world > 1 else "translation run")
        return cfg
    log.info("--minutes %g: timing a few iterations of every stage to fit the schedule", minutes)
    begin = time.perf_counter()
    fitted, f, costs = fit_schedule(cfg, minutes, resolve_device(cfg.train.device))
    per_stage = ", ".join(f"{r}² {c.grown:.2f} s" for r, c in zip(cfg.growth.resolutions, costs))
    per_stage += f" per iteration, timed in {time.perf_counter() - begin:.0f} s"
    if cfg.eval.every:
        per_stage += (f"; in-training evaluations about "
                      f"{evaluation_seconds(fitted.growth, costs, cfg.eval) / 60:.1f} min")
    batches = fitted.growth.batch_size
    if f < 1.0 or batches != cfg.growth.batch_size:
        log.warning("the schedule does not fit %g minutes here (%s at batch %s): batches %s "
                    "-> %s (the recipe's iterations on fewer images), then every stage and fade "
                    "scaled by %.3f to %s images (--no-fit keeps it as it is and stops wherever "
                    "the time runs out)", minutes, per_stage, list(batches),
                    list(cfg.growth.batch_size), list(batches), f,
                    list(fitted.growth.stage_images))
    else:
        log.info("the schedule fits %g minutes here (%s)", minutes, per_stage)
    return fitted


def translation_runs(cfg: Config, run_dir: Path, direction: str | None) -> list[tuple[Path, Config]]:
    """The runs one ``cfebm train`` makes: the config as given, or for ``--direction`` ab or ba
    its translation in that direction, or for ``both`` one model per direction in
    ``run_dir/ab`` and ``run_dir/ba``."""
    if direction is None:
        return [(run_dir, cfg)]
    if cfg.task.kind != "translate":
        raise CLIError("--direction is for translation presets (task.kind = 'translate')")
    if direction != "both":
        return [(run_dir, replace(cfg, task=replace(cfg.task, direction=direction)))]
    return [(run_dir / d, replace(cfg, task=replace(cfg.task, direction=d))) for d in ("ab", "ba")]


def _steps(cfg: Config) -> str:
    """The Langevin step at each of the schedule's resolutions (``sampling.step_size_at``)."""
    return "/".join(f"{step_size_at(r, cfg.sampler):g}" for r in cfg.growth.resolutions) + \
        " at " + "/".join(f"{r}²" for r in cfg.growth.resolutions)


def cmd_info(args: argparse.Namespace) -> None:
    model = load(args.model, device="cpu")
    cfg, m, g = model.cfg, model.cfg.model, model.growth
    path = Path(model.source)
    size = f" ({path.stat().st_size / 1e6:.1f} MB)" if path.is_file() else ""
    lines = [f"file            {model.source}{size}"]
    if path.suffix == ".pt":
        ckpt = read(path)
        lines.append(f"cfebm version   {ckpt['version']} (reading with {__version__})")
        lines.append(f"recoveries      {ckpt['recoveries']} (learning-rate scale "
                     f"{ckpt['lr_scale']})")
    lines += [
        f"progress        {model.n_images:,} / {total_images(cfg.growth):,} images",
        (f"samples as      stage {g.stage} of {len(cfg.growth.resolutions)} "
        f"({g.resolution}x{g.resolution}, beta {g.beta:.3f}), "
        f"{describe_schedule(model.schedule())}"),
        (f"model           c={m.channels}, {m.image_channels} channel(s), up to "
        f"{m.max_resolution}x{m.max_resolution}, {m.activation}, spectral_norm={m.spectral_norm}, "
        f"residual={m.residual}, head={m.head}, equalized_lr={m.equalized_lr}"),
        (f"parameters      {count_parameters(model.net):,} in total, "
        f"{count_parameters(model.net, m.max_resolution):,} used at "
        f"{m.max_resolution}x{m.max_resolution}"),
        (f"weights         {model.weights} (train.ema_decay {cfg.train.ema_decay:g}), "
        f"{cfg.train.precision}"),
        (f"sampler         init={cfg.sampler.init}, {len(model.coarse)} frozen coarse "
        f"model(s), step {_steps(cfg)}, start noise {cfg.sampler.start_noise}, "
        f"η0 {cfg.sampler.eta0:g} "
        f"({cfg.sampler.noise_schedule}), smooth={cfg.sampler.smooth} (mix {cfg.sampler.mix})"),
        f"data            {cfg.data.dataset}, {_held_out(cfg.data.validation)}"
        if cfg.task.kind == "generate" else
        f"task            translate {cfg.task.pair}, direction {cfg.task.direction}",
        "schedule        " + ", ".join(
            f"{r}px: {n:,} img, fade {f:,}, batch {b}, lr {lr:g}, T={t}" for r, n, f, b, lr, t in zip(
                cfg.growth.resolutions, cfg.growth.stage_images, cfg.growth.fade_images,
                cfg.growth.batch_size, cfg.growth.lr, cfg.growth.n_steps))
        + {"none": "", "linear": ", then lr linearly to 0"}[cfg.growth.lr_decay],
    ]
    print("\n".join(lines))
    if args.config:
        print(json.dumps(to_dict(cfg), indent=2))
    card = path.parent / CARD_FILE
    if args.model in PRETRAINED:  # a packaged model: what trained it, and how it scores
        print(f"\nmodel card (cfebm/weights/{args.model}.md):\n")
        print(model_card(args.model), end="")
    elif path.name == EXPORT_FILE and card.is_file():  # an export folder's (or Hub repo's) card
        print(f"\nmodel card ({card}):\n")
        print(card.read_text(), end="")


def _held_out(validation: int) -> str:
    if not validation:
        return "trained on every training file (no validation split)"
    return f"the last {validation:,} training files held out for validation (at most a tenth)"


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an energy-based model coarse to fine",
                       formatter_class=FORMATTER)
    p.add_argument("--preset", help=f"configuration preset, one of {preset_names()} "
                   f"(default: {DEFAULT_PRESET}; with --resume, the run's own config)")
    p.add_argument("--run-dir", help="output folder (default: runs/NNNNN-<preset>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. growth.lr=[1e-3,1e-3] (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    p.add_argument("--stop-at", type=count(1), help="stop after this many training images")
    p.add_argument("--minutes", type=non_negative,
                   help="stop after this many minutes of training iterations (a time budget; "
                        "sets run.minutes, which the quickstart preset sets to "
                        f"{load_preset(DEFAULT_PRESET).run.minutes:g}; 0: none, the recipe as "
                        "it is); a new run first times its stages and, if the schedule would "
                        "not fit, halves its batches (to 16) and then shortens every stage by "
                        "one factor, so that it ends fully grown")
    p.add_argument("--no-fit", dest="fit", action="store_false",
                   help="with --minutes: keep the schedule as it is and stop when time runs out")
    p.add_argument("--direction", choices=("ab", "ba", "both"),
                   help="translation presets: translate A into B, B into A, or train both "
                   "models (in RUN_DIR/ab and RUN_DIR/ba); default: the preset's task.direction")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="describe a checkpoint or export (a packaged model or an "
                       "export folder: and print its model card)", formatter_class=FORMATTER)
    p.add_argument("model", help="a checkpoint (.pt), an export (.safetensors or a folder), a "
                   "run folder, a Hub repo id or a packaged model's name "
                   f"({', '.join(sorted(PRETRAINED))})")
    p.add_argument("--config", action="store_true", help="also print the full config")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("presets", help="list the configuration presets", formatter_class=FORMATTER)
    p.set_defaults(func=lambda _: print("\n".join(preset_names())))
