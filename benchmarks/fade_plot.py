"""Pooled FID through replayed fades, one panel per source, and the same as a table: which
fades jump, which the FID watch holds (``train.fid_watch``; benchmarks/RESULTS.md, "a watch
that rolls a fade back" and "The fades measured with 2,000 samples").

Each RUN is a replay's folder: a run resumed from the end of a coarse stage through the next
stage's fade with in-training evaluations (``train.eval_every``). The fade is read from the
run's config (the stage of its last evaluation, that stage's start and ``fade_images``); only
the evaluations the run kept are used (``read_metrics`` drops what a rollback discarded). The
reference is the median of the coarse resolution's FIDs in the run's ``checkpoints/watch.pt``
(the source's last three kept evaluations, or whatever a replay set there to be judged
against); the band is ``--margin`` × that.

    python benchmarks/fade_plot.py --out docs/fid_watch_fades.png \\
        "seed 0=runs/fz19w-base-s0,runs/fz19w-watchlr-s0" \\
        "seed 1=runs/fz19w-base-s1,runs/fz19w-watchlr-s1" \\
        "seed 2=runs/fz19w-base-s2,runs/fz19w-floor-s2" "seed 3=runs/fz19w-base-s3,runs/fz19w-floor-s3"
    python benchmarks/fade_plot.py --table "seed 0=runs/fz22-ns-s0,runs/fw22-ns-s0"
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from cfebm.checkpoint import read
from cfebm.config import from_dict
from cfebm.growth import stage_starts
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
    rollbacks: int  # the FID watch's, over the whole replay

    def pooled(self, during: bool) -> list[float]:
        """Pooled FIDs of the evaluations during the fade (start < n ≤ end) or after it."""
        return [r["eval_fid_coarse"] for r in self.evals
                if (self.start < r["n_images"] <= self.end) == during]


def fade_of(run: Path) -> Fade:
    """The fade ``run`` replays (see the module docstring)."""
    lines = read_metrics(run / "metrics.jsonl")
    evals = [r for r in lines if "eval_fid" in r and "eval_fid_coarse" in r]
    if not evals:
        raise SystemExit(f"{run}: no in-training evaluation after the first stage")
    growth = from_dict(json.loads((run / "config.json").read_text())).growth
    stage = growth.resolutions.index(evals[-1]["eval_resolution"])
    start = stage_starts(growth)[stage]
    coarse = growth.resolutions[stage - 1]
    saved = read(run / "checkpoints" / "watch.pt")["fid_watch"]["reference"][str(coarse)]
    return Fade(coarse, growth.resolutions[stage], start, start + growth.fade_images[stage],
                statistics.median(saved), [r for r in evals if r["n_images"] > start],
                sum(r.get("event") == "fid_watch" for r in lines))


def table_row(label: str, run: Path) -> str:
    """A markdown row: reference, the fade's pooled FIDs, its worst and median (ratios to the
    reference), the pooled FIDs after it, the last FID at the new resolution, rollbacks."""
    fade = fade_of(run)
    during, after, ref = fade.pooled(True), fade.pooled(False), fade.reference
    worst, median = max(during), statistics.median(during)
    last = fade.evals[-1]
    return (f"| {label} | {ref:.1f} | {' '.join(f'{v:.1f}' for v in during)} "
            f"| {worst:.1f} ({worst / ref:.2f}×) | {median:.1f} ({median / ref:.2f}×) "
            f"| {' '.join(f'{v:.1f}' for v in after)} | {last['eval_fid']:.1f} "
            f"({last['n_images']:,}) | {fade.rollbacks} |")


def plot(out: str, panels: list[tuple[str, list[Path]]], labels: list[str], margin: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2 × 10¹, on the log axis
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), sharey=True,
                             squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels):
        for k, run in enumerate(runs):
            fade = fade_of(run)
            (line,) = ax.plot([r["n_images"] / 1000 for r in fade.evals],
                              [r["eval_fid_coarse"] for r in fade.evals], "o-", markersize=3,
                              label=labels[k] if k < len(labels) else run.name)
            ax.axvline(fade.end / 1000, color=line.get_color(), linestyle=":", linewidth=1)
        ax.axhspan(0, margin * fade.reference, color="tab:green", alpha=0.12)
        ax.set(title=title, yscale="log", xlabel="training images (thousands)")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"FID of {fade.resolution}² samples pooled to {fade.coarse}²")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{fade.coarse}² → {fade.resolution}² fades (a run's fade ends at its dotted line; "
                 f"green: within {margin:g}× of the {fade.coarse}² stage)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("panels", nargs="+", help="TITLE=RUN[,RUN...]")
    parser.add_argument("--out", help="draw the panels into this PNG")
    parser.add_argument("--table", action="store_true", help="print a markdown row per run")
    parser.add_argument("--labels", default="the preset;FID watch 1.25, lr × ½ per rollback down to ⅛",
                        help="the runs' legend labels in each panel, ';'-separated")
    parser.add_argument("--margin", type=float, default=1.25, help="the band, × the reference")
    args = parser.parse_args()
    if not (args.out or args.table):
        parser.error("give --out FIGURE, --table or both")
    panels = [(title, [Path(r) for r in runs.split(",")])
              for title, _, runs in (p.partition("=") for p in args.panels)]
    if args.table:
        for title, runs in panels:
            for run in runs:
                print(table_row(f"{title}, {run.name}", run))
    if args.out:
        plot(args.out, panels, args.labels.split(";"), args.margin)


if __name__ == "__main__":
    main()
