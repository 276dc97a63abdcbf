"""Pictures: sample grids and training curves."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from cfebm.data import to_uint8


def save_grid(x: Tensor, path: str | Path, *, nrow: int | None = None, scale: int = 1,
              padding: int = 2) -> Path:
    """Write images (N, C, H, W) in [−1, 1] as one PNG grid, enlarged ``scale``× (nearest)."""
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.full((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), 255,
                      dtype=torch.uint8)
    images = to_uint8(x.detach().float().cpu())
    for k in range(n):
        i, j = divmod(k, nrow)
        top, left = padding + i * (h + padding), padding + j * (w + padding)
        grid[:, top:top + h, left:left + w] = images[k]
    array = grid.permute(1, 2, 0).squeeze(-1).numpy()
    image = Image.fromarray(array, mode="L" if c == 1 else "RGB")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_images(x: Tensor, folder: str | Path, *, start: int = 0) -> list[Path]:
    """Write each image of (N, C, H, W) in [−1, 1] as its own PNG, numbered from ``start``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(to_uint8(x.detach().float().cpu())):
        array = img.permute(1, 2, 0).squeeze(-1).numpy()
        path = folder / f"{start + k:06d}.png"
        Image.fromarray(array, mode="L" if img.shape[0] == 1 else "RGB").save(path)
        paths.append(path)
    return paths


def stage_changes(rows: list[dict]) -> list[float]:
    """Thousands of images at which each new stage began, from training rows in order.

    The trainer writes a row when a stage ends, so the last row of a stage marks the change
    (the first row of the next one comes up to ``run.log_every`` images later).
    """
    return [a["n_images"] / 1000 for a, r in itertools.pairwise(rows) if r["stage"] != a["stage"]]


ROLLBACK_EVENTS = ("recovery", "fid_watch")  # metrics events that discard a trajectory


def kept_lines(lines: list[dict]) -> list[dict]:
    """The metrics lines of the trajectory a run kept, in order. A recovery (or an FID-watch
    rollback) sends the run back to a checkpoint, so the lines written since that checkpoint
    (``n_images`` above the event's ``rolled_back_to``) describe a discarded trajectory and are
    dropped; the events stay."""
    kept: list[dict] = []
    for line in lines:
        if line.get("event") in ROLLBACK_EVENTS:
            kept = [k for k in kept if "event" in k or k["n_images"] <= line["rolled_back_to"]]
        kept.append(line)
    return kept


def read_metrics(path: str | Path) -> list[dict]:
    """The kept lines (``kept_lines``) of a run's ``metrics.jsonl``."""
    return kept_lines([json.loads(line) for line in Path(path).read_text().splitlines() if line])


def plot_metrics(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Plot loss and mean energies of data and samples against kimg from a metrics.jsonl file,
    and the in-training FID when the run evaluated (``eval.every``): the trajectory the
    run kept (``kept_lines``), with a red line where a recovery or the FID watch rolled it
    back."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_path = Path(metrics_path)
    if not metrics_path.exists():
        return None
    lines = read_metrics(metrics_path)
    rows = [r for r in lines if "e_data" in r]  # training rows, not recovery or eval events
    if not rows:
        return None
    evals = [r for r in lines if "eval_fid" in r]
    kimg = [r["n_images"] / 1000 for r in rows]
    fig, axes = plt.subplots(3 if evals else 2, 1, figsize=(7, 8 if evals else 5.5), sharex=True)
    ax_e, ax_l = axes[:2]
    ax_e.plot(kimg, [r["e_data"] for r in rows], label="mean E(data)")
    ax_e.plot(kimg, [r["e_sample"] for r in rows], label="mean E(samples)")
    ax_e.set_ylabel("energy")
    ax_e.legend(loc="best")
    ax_l.plot(kimg, [r["loss"] for r in rows], color="tab:red")
    ax_l.set_ylabel("loss = E(data) − E(samples)")
    if evals:
        _plot_eval(axes[2], evals)
    axes[-1].set_xlabel("training images seen (thousands)")
    rollbacks = [r["rolled_back_to"] / 1000 for r in lines if r.get("event") in ROLLBACK_EVENTS]
    for ax in axes:
        for s in stage_changes(rows):
            ax.axvline(s, color="gray", linestyle=":", linewidth=1)
        for s in rollbacks:
            ax.axvline(s, color="tab:red", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    fig.suptitle("cfebm training (dotted: stage changes"
                 + ("; red dashed: rolled back here)" if rollbacks else ")"))
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def _plot_eval(ax, evals: list[dict]) -> None:
    """In-training FID per resolution; after the first stage also the same samples pooled to
    the resolution of the stage before (hollow), which is what a fade must not lose."""
    resolutions = {r["eval_resolution"] for r in evals}
    resolutions |= {r["eval_coarse_resolution"] for r in evals if "eval_coarse_resolution" in r}
    for k, res in enumerate(sorted(resolutions)):  # a replayed fade has no evaluation at 8²
        at = [r for r in evals if r["eval_resolution"] == res]
        if at:
            ax.plot([r["n_images"] / 1000 for r in at], [r["eval_fid"] for r in at], "o-",
                    color=f"C{k}", label=f"FID at {res}²")
        pooled = [r for r in evals if r.get("eval_coarse_resolution") == res]
        if pooled:
            ax.plot([r["n_images"] / 1000 for r in pooled], [r["eval_fid_coarse"] for r in pooled],
                    "o:", color=f"C{k}", fillstyle="none", label=f"next stage pooled to {res}²")
    ax.set_yscale("log")
    ax.set_ylabel(f"in-training FID ({evals[-1]['eval_n']} samples)")
    ax.legend(loc="best", fontsize=7)
