"""The 32² recipe search: many `fmnist32` variants at one modelled CPU budget, run side by side.

Each variant is the base recipe plus a few overrides. Its schedule is laid out so that the whole
run costs a fixed number of *modelled* seconds on our 2-core CPU (``--budget-minutes``, 30 by
default): the last stage is made as long as the budget allows, so every variant gets the same
compute whatever its T, batch or stage lengths. The cost model (``cpu_seconds``) is the measured
bf16 + channels-last Langevin-step times of ``benchmarks/throughput.py`` per resolution,
scaled once to the first 30-minute trial of issue 11 (123,136 images in 1,800 s).

This lets the search run on a GPU, many variants at once, and its winners then be checked on the
CPU itself (``cfebm train --preset fmnist32 --minutes 30``). Every variant logs a 500-sample FID
every 6,400 images (through the fades too) and ends with FMNIST-FID, KID and class coverage of
2,000 samples drawn as trained, from the EMA and from the trained weights, all against the
validation split (a search chooses; before issue 35 it scored the test split). ``BASE`` pins the
search's recipe (constant lr, EMA 0.99, Algorithm 2 chains), so its rows stay reproducible as
the preset moves on. ``curves`` plots the in-training FID of the sweep's runs, or of any runs
given as ``--runs LABEL=DIR``.

    python benchmarks/recipe_sweep.py run --out runs/sweep --parallel 16 --wall-minutes 7
    python benchmarks/recipe_sweep.py one base --out runs/sweep --wall-minutes 7
    python benchmarks/recipe_sweep.py report --out runs/sweep
    python benchmarks/recipe_sweep.py curves --out runs/curves --runs "preset=runs/f32" "other=runs/x"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from launch import run_parallel

from cfebm.config import Config, apply_overrides, load_preset
from cfebm.growth import growth_at, stage_starts
from cfebm.metrics.evaluate import at_resolution, class_predictor, evaluate_samples, make_extractor
from cfebm.metrics.reference import compute_reference
from cfebm.train.loop import RunError, run_training
from cfebm.trained import TrainedModel
from cfebm.viz import read_metrics, save_grid

# The quick start's settings carried to 32² (issue 11's first trial: FID 112 at 30 minutes).
BASE = [
    "model.max_resolution=32", "growth.resolutions=[8, 16, 32]",
    "growth.batch_size=[64, 64, 64]", "growth.lr=[3e-3, 3e-3, 1e-3]",
    "growth.n_steps=[15, 25, 30]", "growth.fade_images=[0, 12_800, 12_800]",
    "growth.stage_images=[19_200, 44_800, 1_000_000]", "train.ema_decay=0.99",
    "growth.lr_decay=none", "sampler.init=noise",
]
SINGLE_32 = ["growth.resolutions=[32]", "growth.batch_size=[64]", "growth.lr=[1e-3]",
             "growth.n_steps=[30]", "growth.fade_images=[0]", "growth.stage_images=[1_000_000]"]
# name: (overrides on BASE, modelled budget as a multiple of --budget-minutes, seed)
VARIANTS: dict[str, tuple[list[str], float, int]] = {
    "base": ([], 1, 0),
    "base-seed1": ([], 1, 1),
    "lr32-2e-3": (["growth.lr=[3e-3, 3e-3, 2e-3]"], 1, 0),
    "T32-20": (["growth.n_steps=[15, 25, 20]"], 1, 0),
    "T32-40": (["growth.n_steps=[15, 25, 40]"], 1, 0),
    "step-2": (["sampler.step_size=2.0"], 1, 0),
    "equalized-lr": (["model.equalized_lr=true"], 1, 0),
    "clamp-at-end": (["sampler.clamp_every_step=false"], 1, 0),
    "eta0-0.03": (["sampler.eta0=0.03"], 1, 0),
    "noise-a2": (["sampler.noise_schedule=a2", "sampler.eta0=0.02"], 1, 0),
    "long-16": (["growth.stage_images=[19_200, 76_800, 1_000_000]"], 1, 0),
    "batch32-32": (["growth.batch_size=[64, 64, 32]"], 1, 0),
    "no-smooth": (["sampler.smooth=false"], 1, 0),
    "single-32": (SINGLE_32, 1, 0),
    "base-2h": ([], 4, 0),
    "base-seed2": ([], 1, 2),
    "base-seed3": ([], 1, 3),
    "equalized-lr-seed1": (["model.equalized_lr=true"], 1, 1),
    "equalized-lr-seed2": (["model.equalized_lr=true"], 1, 2),
    "equalized-lr-seed3": (["model.equalized_lr=true"], 1, 3),
    "eqlr-lr32-2e-3": (["model.equalized_lr=true", "growth.lr=[3e-3, 3e-3, 2e-3]"], 1, 0),
    "eqlr-eta0-0.03": (["model.equalized_lr=true", "sampler.eta0=0.03"], 1, 0),
    "eqlr-no-smooth": (["model.equalized_lr=true", "sampler.smooth=false"], 1, 0),
    # For the next lent GPU: the fade question, Table 9(d) with 3 seeds, the 2-hour schedule.
    "eqlr-no-smooth-seed1": (["model.equalized_lr=true", "sampler.smooth=false"], 1, 1),
    "eqlr-no-smooth-seed2": (["model.equalized_lr=true", "sampler.smooth=false"], 1, 2),
    "eqlr-cascade": (["model.equalized_lr=true", "sampler.init=cascade"], 1, 0),
    "eqlr-frozen": (["model.equalized_lr=true", "sampler.init=frozen"], 1, 0),
    "eqlr-fade32-25k": (["model.equalized_lr=true", "growth.fade_images=[0, 12_800, 25_600]"],
                        1, 0),
    "eqlr-single-32": (["model.equalized_lr=true", *SINGLE_32], 1, 0),
    "eqlr-single-32-seed1": (["model.equalized_lr=true", *SINGLE_32], 1, 1),
    "eqlr-single-32-seed2": (["model.equalized_lr=true", *SINGLE_32], 1, 2),
    "eqlr-2h": (["model.equalized_lr=true"], 4, 0),
    # Linear lr decay to 0 over the last stage (issue 11, session 5): the budget's end is the
    # schedule's end, so the decay finishes even when the wall clock cuts nothing.
    "eqlr-decay": (["model.equalized_lr=true", "growth.lr_decay=linear"], 1, 0),
    "eqlr-decay-seed1": (["model.equalized_lr=true", "growth.lr_decay=linear"], 1, 1),
    "eqlr-decay-2h": (["model.equalized_lr=true", "growth.lr_decay=linear"], 4, 0),
    "single-32-2h": (SINGLE_32, 4, 0),
}

# bf16 + channels-last seconds per Langevin step at batch 64 on our CPU (RESULTS.md, throughput)
STEP_SECONDS = {8: 0.0038, 16: 0.0136, 32: 0.0716}
# Measured/modelled time of the first 30-minute trial (see ``calibration``).
TRIAL_IMAGES, TRIAL_SECONDS = 123_136, 1800.0


def iteration_cost(cfg: Config, n_images: int) -> tuple[float, int]:
    """Unscaled model seconds of the training iteration at ``n_images``, and its batch size.

    T(s)+1 steps of the current resolution (the chain plus the loss's forward and backward) and,
    during a fade, the coarse chain's ⌊T(s−1)(1−β)⌋ steps at half resolution (or, for the
    cascade inits, every coarser stage's T steps).
    """
    g = growth_at(n_images, cfg.growth)
    steps = (g.n_steps + 1) * STEP_SECONDS[g.resolution]
    if cfg.sampler.init != "noise":  # the cascade runs every coarser stage's chain too
        steps += sum(t * STEP_SECONDS[r] for r, t in g.cascade[:-1])
    elif g.fading and cfg.sampler.smooth:
        steps += int(g.n_steps_coarse * (1 - g.beta)) * STEP_SECONDS[g.resolution // 2]
    return steps * g.batch_size / 64, g.batch_size


def modelled_images(cfg: Config, seconds: float, scale: float) -> int:
    """Images a run of ``cfg`` sees in ``seconds`` of CPU time under the cost model."""
    n, spent = 0, 0.0
    while True:
        cost, batch = iteration_cost(cfg, n)
        if spent + cost * scale > seconds:
            return n
        spent, n = spent + cost * scale, n + batch


def calibration() -> float:
    """The factor that makes the model give the first trial's 123,136 images in 1,800 s."""
    cfg = apply_overrides(load_preset("fmnist32"), BASE)
    unscaled, n = 0.0, 0
    while n < TRIAL_IMAGES:
        cost, batch = iteration_cost(cfg, n)
        unscaled, n = unscaled + cost, n + batch
    return TRIAL_SECONDS / unscaled


def config_of(name: str, budget_minutes: float, data_root: str) -> tuple[Config, int]:
    """The variant's config with its last stage cut to the budget, and its total images."""
    overrides, multiple, seed = VARIANTS[name]
    extra = [f"train.seed={seed}", "eval.every=6_400", "eval.n=500",
             "run.sample_every=1_000_000", "run.checkpoint_every=1_000_000"]
    if data_root:
        extra.append(f"data.root={data_root!r}")
    if torch.cuda.is_available():  # no bf16 casts: they are extra kernels on a GPU
        extra += ["train.precision=fp32", "train.channels_last=false"]
    cfg = apply_overrides(load_preset("fmnist32"), [*BASE, *overrides, *extra])
    total = modelled_images(cfg, 60 * budget_minutes * multiple, calibration())
    last_start = stage_starts(cfg.growth)[-2]
    last = max(total - last_start, cfg.growth.batch_size[-1])
    stages = [*cfg.growth.stage_images[:-1], last]
    return apply_overrides(cfg, [f"growth.stage_images={stages}"]), last_start + last


def run_one(name: str, out: Path, args: argparse.Namespace) -> dict:
    """Train one variant (until its schedule ends or the wall clock runs out), then score it."""
    torch.set_num_threads(1)
    started = time.time()
    cfg, total = config_of(name, args.budget_minutes, args.data_root)
    run_dir = out / name
    result = {"variant": name, "overrides": VARIANTS[name][0], "budget_x": VARIANTS[name][1],
              "seed": cfg.train.seed, "planned_images": total,
              "stage_images": list(cfg.growth.stage_images),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    wall = 60 * args.wall_minutes - args.eval_seconds
    try:
        state = run_training(cfg, run_dir, time_budget=wall, progress=False)
    except RunError as e:
        result.update(diverged=True, error=str(e))
        (run_dir / "result.json").write_text(json.dumps(result, indent=2))
        return result
    g = state.growth
    result.update(diverged=False, images=state.n_images, completed=state.n_images >= total,
                  recoveries=state.record.recoveries, train_seconds=state.record.train_seconds,
                  stage=g.stage, resolution=g.resolution, beta=g.beta)
    device = state.device
    extractor = at_resolution(make_extractor("fmnist", dataset="fashion_mnist", channels=1,
                                             device=device), g.resolution)
    # a search chooses: it scores against the validation split, never the test split
    ref = compute_reference(cfg.data, "validation", extractor, resolution=g.resolution,
                            image_channels=1, device=device)
    models = {"model": TrainedModel.from_state(state, ema=False)}
    if state.ema is not None:
        models["ema"] = TrainedModel.from_state(state)
    for key, model in models.items():
        batches = model.sample_batches(args.eval_n, seed=cfg.train.seed)
        metrics, kept = evaluate_samples(
            batches, ref, extractor, keep=64,
            classifier=class_predictor("fashion_mnist", 1, extractor, g.resolution))
        save_grid(kept, run_dir / f"eval_{key}.png", scale=max(1, 64 // g.resolution))
        result[key] = {"fid": metrics.fid, "kid": metrics.kid, "kid_std": metrics.kid_std,
                       "coverage": metrics.coverage}
        model.export(run_dir / f"{key}.safetensors")
    result["wall_seconds"] = time.time() - started
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def run_all(out: Path, args: argparse.Namespace) -> None:
    """Every variant in its own process, ``--parallel`` at a time."""
    jobs = [([sys.executable, __file__, "one", name, "--out", str(out),
              "--wall-minutes", str(args.wall_minutes), "--eval-n", str(args.eval_n),
              "--eval-seconds", str(args.eval_seconds),
              "--budget-minutes", str(args.budget_minutes), "--data-root", args.data_root],
             out / f"{name}.log") for name in args.variants or VARIANTS]
    run_parallel(jobs, args.parallel)
    report(out)


def report(out: Path) -> None:
    """A Markdown table of every result.json under ``out``, best trained-weights FID first."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
    lines = [("| variant | budget | images (planned) | done | final res (β) | FID EMA 0.99 | "
             "FID trained | KID trained | classes (trained) | recoveries |"),
             "|---|---|---|---|---|---|---|---|---|---|"]

    def key(r: dict) -> float:
        return r.get("model", {}).get("fid", float("inf"))

    for r in sorted(rows, key=key):
        head = f"| {r['variant']} | {30 * r['budget_x']:g} min "
        if r.get("diverged"):
            lines.append(head + f"| — ({r['planned_images']:,}) | diverged |" + " — |" * 6)
            continue
        m, e = r["model"], r.get("ema", {})
        cov = (m.get("coverage") or {}).get("n_covered", "—")
        lines.append(head + f"| {r['images']:,} ({r['planned_images']:,}) | "
                     f"{'yes' if r['completed'] else 'no'} | {r['resolution']}² ({r['beta']:.2f})"
                     f" | {e.get('fid', float('nan')):.1f} | {m['fid']:.1f} | "
                     f"{m['kid']:.2f} ± {m['kid_std']:.2f} | {cov} | {r['recoveries']} |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    print(table)


def runs_by_prefix(outs: list[Path], groups: dict[str, str]) -> dict[str, list[Path]]:
    """label -> the run folders in ``outs`` named ``prefix`` or ``prefix-seedN`` (prefix -> label)."""
    return {label: [d for out in outs for d in sorted(out.iterdir())
                    if d.is_dir() and (d.name == prefix or d.name.startswith(prefix + "-seed"))]
            for prefix, label in groups.items()}


def plot_curves(groups: dict[str, list[Path]], path: Path) -> None:
    """In-training FID (the runs' ``eval.n`` samples, as trained) against images seen,
    through every fade of the ``fmnist32`` schedule, one colour per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for k, (label, runs) in enumerate(groups.items()):
        for i, run in enumerate(runs):
            rows = [r for r in read_metrics(run / "metrics.jsonl") if "eval_fid" in r]
            ax.plot([r["n_images"] / 1000 for r in rows], [r["eval_fid"] for r in rows],
                    color=f"C{k}", alpha=0.8, marker=".", label=label if i == 0 else None)
    for x, text in ((19.2, "fade into 16²"), (64, "fade into 32²")):
        ax.axvspan(x, x + 12.8, color="0.9")
        ax.text(x + 0.5, ax.get_ylim()[1] * 0.9, text, fontsize=7)
    ax.set_xlabel("training images (thousands)")
    ax.set_ylabel("FMNIST-FID, 500 samples, as trained")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "one", "report", "plan", "curves"])
    parser.add_argument("variant", nargs="?", help="with 'one': the variant to run")
    parser.add_argument("--variants", nargs="*", help="with 'run': a subset of the variants")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--budget-minutes", type=float, default=30.0,
                        help="modelled CPU minutes of a variant with budget multiple 1")
    parser.add_argument("--wall-minutes", type=float, default=7.0,
                        help="wall-clock cap per variant, its evaluation included")
    parser.add_argument("--eval-seconds", type=float, default=60.0,
                        help="wall-clock kept back from training for the final evaluation")
    parser.add_argument("--eval-n", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--data-root", default="")
    parser.add_argument("--runs", nargs="*", metavar="LABEL=DIR",
                        help="with 'curves': plot these run folders instead of the sweep's")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "one":
        print(json.dumps(run_one(args.variant, args.out, args)))
    elif args.command == "run":
        run_all(args.out, args)
    elif args.command == "plan":
        for name in args.variants or VARIANTS:
            cfg, total = config_of(name, args.budget_minutes, args.data_root)
            print(f"{name:14s} {total:>9,} images  stages {list(cfg.growth.stage_images)}")
    elif args.command == "curves":  # --runs, else the sweep's runs in --out and --variants
        groups: dict[str, list[Path]] = {}
        for label, run in (item.split("=", 1) for item in args.runs or []):
            groups.setdefault(label, []).append(Path(run))
        plot_curves(groups or runs_by_prefix(
            [args.out, *map(Path, args.variants or [])],
            {"base": "base recipe", "equalized-lr": "+ equalised lr"}), args.out / "fid_curves.png")
    else:
        report(args.out)


if __name__ == "__main__":
    main()
