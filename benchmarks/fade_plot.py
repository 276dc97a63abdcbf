"""Pooled FID through replayed fades, one panel per source: which runs jump, which the FID
watch holds (``train.fid_watch``; benchmarks/RESULTS.md, "a watch that rolls a fade back").

Each RUN is a replay's folder; only the evaluations the run kept are drawn (``read_metrics``
drops what a rollback discarded). The band is 1.25× the median of the source's last three
evaluations at 8², read from the replay's ``watch.pt``.

    python benchmarks/fade_plot.py docs/fid_watch_fades.png \\
        "seed 0=runs/fz19w-base-s0,runs/fz19w-watchlr-s0" \\
        "seed 1=runs/fz19w-base-s1,runs/fz19w-watchlr-s1" \\
        "seed 2=runs/fz19w-base-s2,runs/fz19w-floor-s2" "seed 3=runs/fz19w-base-s3,runs/fz19w-floor-s3"
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from cfebm.checkpoint import read
from cfebm.viz import read_metrics


def reference(run: Path) -> float:
    """The median of the last kept FIDs at 8² that the replay's source handed over."""
    return statistics.median(read(run / "checkpoints" / "watch.pt")["fid_watch"]["reference"]["8"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("panels", nargs="+", help="TITLE=RUN[,RUN...]")
    parser.add_argument("--labels", default="the preset,FID watch 1.25, lr × ½ per rollback down to ⅛")
    args = parser.parse_args()
    labels = args.labels.split(",", 1)
    fig, axes = plt.subplots(1, len(args.panels), figsize=(3.6 * len(args.panels), 3.4),
                             sharey=True)
    for ax, panel in zip(axes, args.panels):
        title, _, runs = panel.partition("=")
        for k, run in enumerate(Path(r) for r in runs.split(",")):
            rows = [r for r in read_metrics(run / "metrics.jsonl")
                    if "eval_fid" in r and "eval_fid_coarse" in r and r["n_images"] > 19_200]
            ax.plot([r["n_images"] / 1000 for r in rows], [r["eval_fid_coarse"] for r in rows],
                    "o-", markersize=3, label=labels[k] if k < len(labels) else run.name)
        ax.axhspan(0, 1.25 * reference(run), color="tab:green", alpha=0.12)
        ax.axvline(32.0, color="gray", linestyle=":", linewidth=1)
        ax.set(title=title, yscale="log", xlabel="training images (thousands)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("FID of 16² samples pooled to 8²")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("8² → 16² fades (fade ends at the dotted line; green: within 1.25× of the 8² "
                 "stage)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)


if __name__ == "__main__":
    main()
