"""Fixed-budget sample quality on Fashion-MNIST: CF-EBM against its ablations.

Every variant trains for the same wall-clock budget of training iterations (evaluations, grids
and checkpoints are not counted) and is then scored by FMNIST-FID, KID and class coverage of
``--eval-n`` samples (drawn as the variant was trained, from the EMA and from the trained
weights) against the test split at its final resolution.

- main (32²): (a) CF-EBM 8 → 16 → 32, with the chains started as in the paper, by the cascade
  or by the frozen cascade of A.8, against (b) the same network trained at 32² only
  (Table 9(d)); all log a small-sample FID during training for the FID-against-time plot.
- ablations (16², a shorter budget): activations (Table 8) and the components of Table 9(a)–(c).

Runs go two at a time, one thread each, so a pair shares the 2 cores evenly.

    python benchmarks/quality.py run --out runs/quality          # all variants, then the report
    python benchmarks/quality.py report --out runs/quality       # tables and plot again
    python benchmarks/quality.py run --out runs/t9d --variants cf-ebm single-32 \
        --seeds 0 1 2 --minutes-main 25 --eval-n 500 --ttq-fid 200 150 120   # Table 9(d)
    python benchmarks/quality.py fades runs/a runs/b    # any runs' fades, like for like
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from launch import run_parallel

from cfebm.config import Config, apply_overrides, load_preset, saved_config
from cfebm.growth import growth_at
from cfebm.metrics.evaluate import at_resolution, class_predictor, evaluate_samples, make_extractor
from cfebm.metrics.reference import compute_reference
from cfebm.train.loop import RunError, run_training
from cfebm.trained import TrainedModel
from cfebm.viz import read_metrics, save_grid


def last_stage_only(preset: str) -> list[str]:
    """Overrides that train ``preset``'s network at its last resolution only, with that
    stage's batch size, learning rate and Langevin steps, for as long as the budget allows."""
    g = load_preset(preset).growth
    return [f"growth.resolutions=[{g.resolutions[-1]}]", f"growth.batch_size=[{g.batch_size[-1]}]",
            f"growth.lr=[{g.lr[-1]}]", f"growth.n_steps=[{g.n_steps[-1]}]",
            "growth.fade_images=[0]", "growth.stage_images=[100_000_000]"]


LONG = ["growth.stage_images=[12_800, 32_000, 100_000_000]"]
MAIN = {  # 32², the main budget
    "cf-ebm": ("fmnist32", [
        "growth.fade_images=[0, 12_800, 9_600]", *LONG,
        "eval.every=6_400", "eval.n=500"]),
    "cf-ebm-cascade": ("fmnist32", [
        "growth.fade_images=[0, 12_800, 9_600]", *LONG, "sampler.init=cascade",
        "eval.every=6_400", "eval.n=500"]),
    "cf-ebm-frozen": ("fmnist32", [
        "growth.fade_images=[0, 12_800, 9_600]", *LONG, "sampler.init=frozen",
        "eval.every=6_400", "eval.n=500"]),
    "single-32": ("fmnist32", [
        *last_stage_only("fmnist32"), "eval.every=6_400", "eval.n=500"]),
}
ABLATIONS = {  # 16², the shorter budget; "swish" is the full model of Table 9(c)
    "swish": [],
    "relu": ["model.activation=relu"],
    "leaky_relu": ["model.activation=leaky_relu"],
    "gelu": ["model.activation=gelu"],
    "celu": ["model.activation=celu"],
    "basic (no SN, no residual)": ["model.spectral_norm=false", "model.residual=false"],
    "+SN (no residual)": ["model.residual=false"],
}
VARIANTS = {**MAIN,
            **{k: ("quickstart", ["growth.stage_images=[19_200, 100_000_000]", *v])
               for k, v in ABLATIONS.items()}}


def config_of(name: str, seed: int) -> Config:
    preset, overrides = VARIANTS[name]
    return apply_overrides(load_preset(preset), [*overrides, f"train.seed={seed}"])


def slug(name: str, seed: int = 0) -> str:
    """The run folder of a variant; seeds other than 0 get their own."""
    base = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    return base if seed == 0 else f"{base}-seed{seed}"


def run_one(name: str, out: Path, minutes: float, eval_n: int, seed: int) -> dict:
    """Train one variant within its budget, evaluate it, write ``result.json``."""
    torch.set_num_threads(1)
    cfg, run_dir = config_of(name, seed), out / slug(name, seed)
    result = {"variant": name, "minutes": minutes, "seed": seed, "eval_n": eval_n}
    try:
        state = run_training(cfg, run_dir, time_budget=60 * minutes, progress=False)
    except RunError as e:
        result.update(diverged=True, error=str(e))
        (run_dir / "result.json").write_text(json.dumps(result, indent=2))
        return result
    growth = state.growth
    resolution = growth.resolution
    extractor = at_resolution(make_extractor("fmnist", dataset="fashion_mnist", channels=1),
                              resolution)
    ref = compute_reference(cfg.data, "test", extractor, resolution=resolution, image_channels=1)
    # The stage the budget ended in, sampled as it was trained (Algorithm 2 or the cascade),
    # with the EMA and with the trained weights: a slow EMA lags short runs badly.
    result.update(diverged=False, images=state.n_images, recoveries=state.record.recoveries,
                  train_seconds=state.record.train_seconds, stage=growth.stage, resolution=resolution,
                  beta=growth.beta)
    models = [("", TrainedModel.from_state(state))] + (
        [("_raw", TrainedModel.from_state(state, ema=False))] if state.ema is not None else [])
    for suffix, model in models:
        batches = model.sample_batches(eval_n, seed=seed)
        metrics, kept = evaluate_samples(
            batches, ref, extractor, keep=64,
            classifier=class_predictor("fashion_mnist", 1, extractor, resolution))
        save_grid(kept, run_dir / f"eval_samples{suffix}.png", scale=max(1, 64 // resolution))
        result.update({f"fid{suffix}": metrics.fid, f"kid{suffix}": metrics.kid,
                       f"kid_std{suffix}": metrics.kid_std, f"coverage{suffix}": metrics.coverage})
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def run_all(out: Path, args: argparse.Namespace) -> None:
    """Every chosen variant and seed in a subprocess, ``args.parallel`` at a time: seed by seed,
    main variants first, so that the runs sharing the cores at any time share a seed."""
    queue = [(name, seed, args.minutes_main if name in MAIN else args.minutes_ablation)
             for seed in args.seeds for name in VARIANTS if name in args.variants]
    jobs = [([sys.executable, __file__, "one", name, "--out", str(out), "--minutes", str(minutes),
              "--eval-n", str(args.eval_n), "--seed", str(seed)],
             out / f"{slug(name, seed)}.log") for name, seed, minutes in queue]
    run_parallel(jobs, args.parallel, poll_seconds=5)
    report(out, args.ttq_fid)


def results(out: Path) -> list[dict]:
    """Every result.json under ``out``, in the order of VARIANTS, then by seed."""
    rows = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    order = list(VARIANTS)
    return sorted((r for r in rows if r["variant"] in order),
                  key=lambda r: (order.index(r["variant"]), r["seed"]))


def report(out: Path, fids: Sequence[float] = (100.0,)) -> None:
    """Markdown tables of the results and of the time to reach each FID in ``fids``, the
    FID-against-time plot and the main sample grids."""
    lines = [("| variant | seed | budget (min) | images | final res (β) | FMNIST-FID | FMNIST-KID | "
             "classes within ±50% of uniform | entropy (nats) | recoveries | FMNIST-FID, "
             "trained weights |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results(out):
        head = f"| {r['variant']} | {r['seed']} | {r['minutes']:g} "
        if r.get("diverged"):
            lines.append(head + "| — | — | diverged | — | — | — | — | — |")
            continue
        cov = r["coverage"] or {}
        raw = f"{r['fid_raw']:.1f}" if "fid_raw" in r else "—"
        lines.append(
            head + f"| {r['images']:,} | {r['resolution']}² ({r['beta']:.2f}) | {r['fid']:.1f} "
            f"| {r['kid']:.2f} ± {r['kid_std']:.2f} | {cov.get('n_covered', '—')} "
            f"| {cov.get('entropy', float('nan')):.3f} | {r['recoveries']} | {raw} |")
    ttq = [line for fid in fids for line in ["", *time_to_quality_table(out, fid)]]
    table = "\n".join(lines + ttq + ["", *fade_table(out)])
    (out / "results.md").write_text(table + "\n")
    print(table)
    plot_curves(out)
    plot_grids(out)


def time_to_quality(run_dir: Path, fid: float, resolution: int = 32) -> float | None:
    """Minutes of training until the run's in-training FID at ``resolution``, fully grown
    (β = 1), first falls to ``fid`` or below; None if it never does."""
    growth = saved_config(json.loads((run_dir / "config.json").read_text())).growth
    for r in read_metrics(run_dir / "metrics.jsonl"):
        if "eval_fid" not in r or r["eval_fid"] > fid:
            continue
        at = growth_at(r["n_images"], growth)  # an evaluation row carries no β
        if at.resolution == resolution and at.beta >= 1.0:
            return r["train_seconds"] / 60
    return None


def time_to_quality_table(out: Path, fid: float) -> list[str]:
    """Table 9(d) as a time-to-quality question: per main variant, the minutes each seed took
    to reach FID ``fid`` at 32², their median, and each median against CF-EBM's."""
    times: dict[str, list[float | None]] = {}
    for r in results(out):
        if r["variant"] in MAIN:
            times.setdefault(r["variant"], []).append(
                None if r.get("diverged") else time_to_quality(out / slug(r["variant"], r["seed"]),
                                                               fid))
    reached = {v: sorted(t for t in ts if t is not None) for v, ts in times.items()}
    # the median over all seeds, "never" counting as the slowest: defined when most got there
    medians = {v: (ts[len(times[v]) // 2] if len(ts) * 2 > len(times[v]) else None)
               for v, ts in reached.items()}
    base = medians.get("cf-ebm")
    lines = [f"Minutes of training to in-training FMNIST-FID ≤ {fid:g} at 32² (β = 1):", "",
             "| variant | seeds | minutes per seed | median | median / cf-ebm's |", "|---|---|---|---|---|"]
    for v, ts in times.items():
        each = ", ".join("never" if t is None else f"{t:.1f}" for t in ts)
        med = medians[v]
        ratio = f"{med / base:.2f}" if med is not None and base else "—"
        lines.append(f"| {v} | {len(ts)} | {each} | {'—' if med is None else f'{med:.1f}'} | {ratio} |")
    return lines


def fade_table(out: Path) -> list[str]:
    """Issue 11's "no collapse during fades", like for like, for every main run under ``out``."""
    return fade_lines(_main_runs(out))


def fade_lines(runs: Sequence[tuple[str, Path]]) -> list[str]:
    """A markdown table of ``fade_ratios`` for each (label, run folder)."""
    lines = ["In-training FID through each fade, scored at the resolution of the stage before:", "",
             ("| run | fade | stage before, last FID | fade (to β = 1), worst pooled FID | ratio "
              f"| images after the fade until within {BACK_WITHIN}× |"),
             "|---|---|---|---|---|---|"]
    for label, run_dir in runs:
        for coarse, fine, end, worst, back in fade_ratios(run_dir):
            after = ("not within the run" if back is None else "—" if back == NOT_SCORED
                     else f"{back:,}")
            lines.append(f"| {label} | {coarse}² → {fine}² | {end:.1f} | {worst:.1f} "
                         f"| {worst / end:.2f} | {after} |")
    return lines


BACK_WITHIN = 1.25  # a fade's dip is over once the pooled FID is this close to the stage before
NOT_SCORED = -1     # runs older than session 9 pooled their samples only during fades


def fade_ratios(run_dir: Path) -> list[tuple[int, int, float, float, int | None]]:
    """(coarse resolution, fade resolution, the stage before's last in-training FID, the worst
    FID of the fade's samples pooled to the coarse resolution, ``eval_fid_coarse``, and the
    images from the fade's end (its first evaluation at β = 1) to the first evaluation pooled
    within ``BACK_WITHIN`` × the stage before; None if none is, ``NOT_SCORED`` if the run
    pooled no evaluation after the fade) for every fade of the run that
    in-training evaluation saw. The fade runs from β = 0 to its first evaluation at β = 1,
    where the chains start from noise alone for the first time."""
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval_fid" in r]
    found = []
    for fade_res in sorted({r["eval_resolution"] for r in rows if _fading(r)}):
        at = [r for r in rows if r["eval_resolution"] == fade_res]
        during = [r for r in at if _fading(r)]
        grown = [r for r in at if r["n_images"] > during[-1]["n_images"]
                 and "eval_fid_coarse" in r][:1]
        coarse = during[0]["eval_coarse_resolution"]
        before = [r for r in rows if r["eval_resolution"] == coarse
                  and r["n_images"] < during[0]["n_images"] and not _fading(r)]
        if before:
            end, ends_at = before[-1]["eval_fid"], (grown or during)[-1]["n_images"]
            after = [r for r in at if r["n_images"] >= ends_at and "eval_fid_coarse" in r]
            back = [r["n_images"] - ends_at for r in after
                    if r["eval_fid_coarse"] <= BACK_WITHIN * end][:1]
            found.append((coarse, fade_res, end,
                          max(r["eval_fid_coarse"] for r in during + grown),
                          back[0] if back else
                          None if any(r["n_images"] > ends_at for r in after) else NOT_SCORED))
    return found


def _fading(row: dict) -> bool:
    """Whether an evaluation row was taken during a fade (β < 1). Rows written before
    ``eval_beta`` was logged carry a pooled FID only during fades."""
    return row.get("eval_beta", 0.0 if "eval_fid_coarse" in row else 1.0) < 1


def _main_runs(out: Path, diverged: bool = False) -> list[tuple[str, Path]]:
    """(label, run folder) of every main-budget run under ``out``; ``diverged`` keeps those
    that ended in divergence (their curves stop there)."""
    return [(f"{r['variant']} (seed {r['seed']}{', diverged' if r.get('diverged') else ''})",
             out / slug(r["variant"], r["seed"]))
            for r in results(out) if r["variant"] in MAIN and (diverged or not r.get("diverged"))]


def plot_curves(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    markers = {8: "v", 16: "s", 32: "o"}
    for k, (label, run_dir) in enumerate(_main_runs(out, diverged=True)):
        evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval_fid" in r]
        color = f"C{k}"
        ax.plot([e["train_seconds"] / 60 for e in evals], [e["eval_fid"] for e in evals],
                color=color, label=label)
        for res, marker in markers.items():
            pts = [(e["train_seconds"] / 60, e["eval_fid"]) for e in evals
                   if e["eval_resolution"] == res]
            if pts:
                ax.plot(*zip(*pts), marker=marker, color=color, linestyle="none")
            pooled = [(e["train_seconds"] / 60, e["eval_fid_coarse"]) for e in evals
                      if e.get("eval_coarse_resolution") == res]
            if pooled:  # samples scored at the stage before's resolution
                ax.plot(*zip(*pooled), marker=marker, color=color, linestyle=":",
                        fillstyle="none")
    for res, marker in markers.items():
        ax.plot([], [], marker=marker, color="gray", linestyle="none", label=f"evaluated at {res}²")
    ax.plot([], [], marker="o", color="gray", linestyle=":", fillstyle="none",
            label="pooled to the stage before")
    ax.set_xlabel("minutes of training (1 CPU thread)")
    ax.set_ylabel("FMNIST-FID (500 samples, vs test at that resolution)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fid_vs_time.png", dpi=110)
    plt.close(fig)


def plot_grids(out: Path) -> None:
    """The final evaluation grids of the main runs side by side, each titled with its FID."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(label, d) for label, d in _main_runs(out) if (d / "eval_samples.png").exists()]
    if not runs:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.9), squeeze=False)
    for ax, (label, run_dir) in zip(axes[0], runs):
        fid = json.loads((run_dir / "result.json").read_text())["fid"]
        ax.imshow(plt.imread(run_dir / "eval_samples.png"), cmap="gray")
        ax.set_title(f"{label}\nFMNIST-FID {fid:.0f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "main_samples.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=["run", "one", "report", "fades"])
    parser.add_argument("variant", nargs="*", help="with 'one': the variant to run; with "
                        "'fades': run folders whose fades to tabulate")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--minutes-main", type=float, default=20.0)
    parser.add_argument("--minutes-ablation", type=float, default=5.0)
    parser.add_argument("--minutes", type=float, help="with 'one': its budget")
    parser.add_argument("--eval-n", type=int, default=2000, help="samples per final evaluation")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--seed", type=int, default=0, help="with 'one': its seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="with 'run': the seeds")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        metavar="VARIANT", help="with 'run': the variants")
    parser.add_argument("--ttq-fid", type=float, nargs="+", default=[100.0],
                        help="in-training FIDs (500 samples) whose time to reach is compared")
    args = parser.parse_args()
    if args.command in ("one", "fades") and not args.variant:
        parser.error(f"'{args.command}' needs " + ("a variant" if args.command == "one"
                                                    else "one or more run folders"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "one":
        print(json.dumps(run_one(args.variant[0], args.out, args.minutes, args.eval_n, args.seed)))
    elif args.command == "fades":
        print("\n".join(fade_lines([(run, Path(run)) for run in args.variant])))
    elif args.command == "run":
        run_all(args.out, args)
    else:
        report(args.out, args.ttq_fid)


if __name__ == "__main__":
    main()
