"""Pooled FID through replayed fades, one panel per source, and the same as a table: which
fades jump, which the FID watch holds (``eval.fid_watch``; benchmarks/RESULTS.md, "a watch
that rolls a fade back" and "The fades measured with 2,000 samples").

Each RUN is a replay's folder: a run resumed from the end of a coarse stage through the next
stage's fade with in-training evaluations (``eval.every``), or ``FOLDER@S``: the fade into
stage S (0-based) of a whole run. The fade is read from the run's config (stage S, or the
stage of its last evaluation; that stage's start and ``fade_images``); only
the evaluations the run kept are used (``read_metrics`` drops what a rollback discarded; the
figure marks those with x). The reference is the median of the run's last three kept
evaluations at the coarse resolution before the fade (what its watch judged against), or for a
replay, which has none, of the ones its ``checkpoints/watch.pt`` holds (set there from its
source); the band is ``--margin`` × that.

    python benchmarks/fade_plot.py --out docs/fid_watch_fades.png \\
        "seed 0=runs/fz19w-base-s0,runs/fz19w-watchlr-s0" \\
        "seed 1=runs/fz19w-base-s1,runs/fz19w-watchlr-s1" \\
        "seed 2=runs/fz19w-base-s2,runs/fz19w-floor-s2" "seed 3=runs/fz19w-base-s3,runs/fz19w-floor-s3"
    python benchmarks/fade_plot.py --table "seed 0=runs/fz22-ns-s0,runs/fw22-ns-s0"
    python benchmarks/fade_plot.py --table "seed 0=runs/c23-s0@1,runs/c23-s0@2"
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from cfebm.config import saved_config
from cfebm.files import read
from cfebm.growth import stage_starts
from cfebm.train.evaluation import REFERENCE_EVALS
from cfebm.viz import read_metrics


@dataclass(frozen=True)
class Fade:
    """A replay's fade: the coarse and new resolution, the images where it starts and ends
    (β = 0 and 1), the reference FID at the coarse resolution and the kept evaluations."""

    coarse: int
    resolution: int
    start: int
    end: int
    reference: float
    evals: list[dict]
    rolled_back: list[dict]  # the FID watch's events over the stage (what it undid)

    @property
    def rollbacks(self) -> int:
        return len(self.rolled_back)

    def pooled(self, during: bool) -> list[float]:
        """Pooled FIDs of the evaluations during the fade (start < n ≤ end) or after it."""
        return [r["eval_fid_coarse"] for r in self.evals
                if (self.start < r["n_images"] <= self.end) == during]


def parse_run(text: str) -> tuple[Path, int | None]:
    """``FOLDER`` or ``FOLDER@S``: the run's folder and the stage whose fade is meant."""
    folder, _, stage = text.partition("@")
    return Path(folder), int(stage) if stage else None


def fade_of(run: Path, stage: int | None = None) -> Fade:
    """The fade into ``stage`` of ``run`` (default: the stage of its last evaluation); see the
    module docstring. The reference is the median of the last three coarse-resolution FIDs the
    run kept before the fade began (a whole run's, what its watch judged against), else the
    ones in its ``watch.pt`` (a replay's, set there from its source)."""
    lines = read_metrics(run / "metrics.jsonl")
    evals = [r for r in lines if "eval_fid" in r]
    if not any("eval_fid_coarse" in r for r in evals):
        raise SystemExit(f"{run}: no in-training evaluation after the first stage")
    growth = saved_config(json.loads((run / "config.json").read_text())).growth
    if stage is None:
        stage = growth.resolutions.index(evals[-1]["eval_resolution"])
    starts, coarse = stage_starts(growth), growth.resolutions[stage - 1]
    start, end = starts[stage], starts[stage] + growth.fade_images[stage]
    before = [r["eval_fid"] for r in evals
              if r["eval_resolution"] == coarse and r["n_images"] <= start][-REFERENCE_EVALS:]
    if not before:
        before = read(run / "checkpoints" / "watch.pt")["fid_watch"]["reference"][str(coarse)]
    rolled_back = [r for r in lines if r.get("event") == "fid_watch"
                   and start < r["n_images"] <= starts[stage + 1]]
    return Fade(coarse, growth.resolutions[stage], start, end, statistics.median(before),
                [r for r in evals if start < r["n_images"] <= starts[stage + 1]
                 and r.get("eval_coarse_resolution") == coarse], rolled_back)


def table_row(label: str, run: Path, stage: int | None = None) -> str:
    """A markdown row: reference, the fade's pooled FIDs, its worst and median (ratios to the
    reference), the pooled FIDs after it, the last FID at the new resolution, rollbacks."""
    fade = fade_of(run, stage)
    during, after, ref = fade.pooled(True), fade.pooled(False), fade.reference
    worst, median = max(during), statistics.median(during)
    last = fade.evals[-1]
    return (f"| {label} | {ref:.1f} | {' '.join(f'{v:.1f}' for v in during)} "
            f"| {worst:.1f} ({worst / ref:.2f}×) | {median:.1f} ({median / ref:.2f}×) "
            f"| {' '.join(f'{v:.1f}' for v in after)} | {last['eval_fid']:.1f} "
            f"({last['n_images']:,}) | {fade.rollbacks} |")


def plot(out: str, panels: list[tuple[str, list[str]]], labels: list[str], margin: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2 × 10¹, on the log axis
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4),
                             squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels):
        for k, run in enumerate(runs):
            fade = fade_of(*parse_run(run))
            (line,) = ax.plot([r["n_images"] / 1000 for r in fade.evals],
                              [r["eval_fid_coarse"] for r in fade.evals], "o-", markersize=3,
                              label=labels[k] if k < len(labels) else run)
            ax.axvline(fade.end / 1000, color=line.get_color(), linestyle=":", linewidth=1)
            if fade.rolled_back:
                ax.plot([r["n_images"] / 1000 for r in fade.rolled_back],
                        [r["eval_fid_coarse"] for r in fade.rolled_back], "x",
                        color=line.get_color(), label="rolled back" if k == 0 else None)
        ax.axhspan(0, margin * fade.reference, color="tab:green", alpha=0.12)
        ax.set(title=f"{title}: {fade.coarse}² → {fade.resolution}²", yscale="log",
               xlabel="training images (thousands)",
               ylabel=f"FID of {fade.resolution}² samples pooled to {fade.coarse}²")
        shown = [r["eval_fid_coarse"] for r in fade.evals + fade.rolled_back]
        ax.set_ylim(min(shown) / 1.3, 1.3 * max(*shown, margin * fade.reference))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower center", fontsize=7)
    fig.suptitle(f"Fades (a run's fade ends at its dotted line; green: within {margin:g}× of "
                 "the stage before)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("panels", nargs="+", help="TITLE=RUN[,RUN...], RUN a folder or FOLDER@S")
    parser.add_argument("--out", help="draw the panels into this PNG")
    parser.add_argument("--table", action="store_true", help="print a markdown row per run")
    parser.add_argument("--labels", default="the preset;FID watch 1.25, lr × ½ per rollback down to ⅛",
                        help="the runs' legend labels in each panel, ';'-separated")
    parser.add_argument("--margin", type=float, default=1.25, help="the band, × the reference")
    args = parser.parse_args()
    if not (args.out or args.table):
        parser.error("give --out FIGURE, --table or both")
    panels = [(title, runs.split(","))
              for title, _, runs in (p.partition("=") for p in args.panels)]
    if args.table:
        for title, runs in panels:
            for run in runs:
                folder, stage = parse_run(run)
                print(table_row(f"{title}, {run.split('/')[-1]}", folder, stage))
    if args.out:
        plot(args.out, panels, args.labels.split(";"), args.margin)


if __name__ == "__main__":
    main()
