"""Files for the applications: labelled image grids, chain strips, GIFs and energy plots.

The only module of ``cfebm.apps`` that writes files; each function is a ``save_*`` helper that
takes tensors in [−1, 1] and returns the paths it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from cfebm.apps.chains import Trajectory, energy_curves
from cfebm.apps.translate import as_rgb, colormap, overlay
from cfebm.data import to_uint8

PAD = 2          # pixels between images
TEXT = (0, 0, 0)


def _font() -> ImageFont.ImageFont:
    """DejaVu Sans from matplotlib (PIL's built-in font has no Greek: σ, η)."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 11)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default()


def _tile(x: Tensor, scale: int) -> Image.Image:
    """Images (M, C, R, R) in [−1, 1] side by side on white, enlarged ``scale``× (nearest)."""
    m, c, r, _ = x.shape
    row = torch.full((c, r + 2 * PAD, m * (r + PAD) + PAD), 255, dtype=torch.uint8)
    for j, img in enumerate(to_uint8(x.detach().float().cpu())):
        left = PAD + j * (r + PAD)
        row[:, PAD:PAD + r, left:left + r] = img
    a = row.permute(1, 2, 0).squeeze(-1).numpy()
    tile = Image.fromarray(a, mode="L" if c == 1 else "RGB").convert("RGB")
    return tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)


def save_rows(rows: Sequence[Tensor], path: str | Path, *, labels: Sequence[str] | None = None,
              column_labels: Sequence[str] | None = None, scale: int = 2) -> Path:
    """One PNG with a row of images per tensor (M, C, R, R) in [−1, 1], each row labelled on the
    left by ``labels`` and each column on top by ``column_labels`` (optional)."""
    font = _font()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tiles = [_tile(x, scale) for x in rows]
    width = max(t.width for t in tiles)
    margin = 0 if not labels else 6 + max(draw.textbbox((0, 0), s, font=font)[2] for s in labels)
    top = 0 if not column_labels else 14
    sheet = Image.new("RGB", (margin + width, top + sum(t.height for t in tiles)), "white")
    pen = ImageDraw.Draw(sheet)
    y = top
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (margin, y))
        if labels:
            pen.text((3, y + tile.height // 2), labels[i], fill=TEXT, font=font, anchor="lm")
        y += tile.height
    if column_labels:
        r = rows[0].shape[-1]
        for j, text in enumerate(column_labels):
            pen.text((margin + (PAD + j * (r + PAD) + r // 2) * scale, 7), text, fill=TEXT,
                     font=font, anchor="mm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def save_trajectory(trajectory: Trajectory, folder: str | Path, *, scale: int = 3,
                    frame_ms: int = 120) -> dict[str, Path]:
    """Write a recorded chain as ``strip.png`` (one row per chain, a column per recorded step),
    ``chain.gif`` (the chains side by side, one frame per recorded step) and ``energy.png``
    (E against the Langevin step, one panel segment per scale). Returns the three paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    states = torch.stack(trajectory.states, 1)  # (K, S, C, R, R)
    strip = save_rows(list(states), folder / "strip.png", scale=scale,
                      labels=[f"chain {k}" for k in range(len(states))],
                      column_labels=[str(s) for s in trajectory.steps])
    frames = [_tile(x, scale) for x in trajectory.states]
    gif = folder / "chain.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return {"strip": strip, "gif": gif, "energy": save_energy_plot(trajectory,
                                                                   folder / "energy.png")}


def save_energy_plot(trajectory: Trajectory, path: str | Path) -> Path:
    """E(x) before each Langevin step of the recorded chains: thin lines per chain, a thick mean,
    a dotted line where the chain moves to the next scale (a different energy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for k, (res, steps, e) in enumerate(energy_curves(trajectory)):
        colour = f"C{k}"
        ax.plot(steps, e.numpy(), color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(steps, e.mean(1).numpy(), color=colour, linewidth=2,
                label=f"{res}×{res} energy (mean of {e.shape[1]} chains)")
        if k:
            ax.axvline(steps[0] - 0.5, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("Langevin step (state before the step)")
    ax.set_ylabel("energy E(x)  (lower = more likely)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_translation(result, folder: str | Path, *, grid: int = 16, per_row: int = 2,
                     scale: int = 4) -> dict:
    """Write an ``apps.translate.Translation`` to ``folder``: per image ``translated/``,
    ``saliency/`` (heatmap) and ``overlay/`` PNGs at the model's resolution; ``triplets.png``
    (input | saliency | overlay | output for the first ``grid`` images, ``per_row`` to a row,
    as Fig. 4);
    ``chain/`` (strip, GIF and energy plot of the recorded chains). Returns {name: path}."""
    folder = Path(folder)
    heat, over = colormap(result.saliency), overlay(result.source, result.saliency)
    for name, images in (("translated", result.output), ("saliency", heat), ("overlay", over)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(to_uint8(images)):
            a = img.permute(1, 2, 0).squeeze(-1).numpy()
            Image.fromarray(a).save(folder / name / f"{i:04d}.png")
    n = min(grid, len(result.source))
    quads = [[as_rgb(result.source[i:i + 1])[0], heat[i], over[i],
              as_rgb(result.output[i:i + 1])[0]] for i in range(n)]
    rows = [torch.stack([img for quad in quads[i:i + per_row] for img in quad])
            for i in range(0, n, per_row)]
    labels = ["input", "saliency", "overlay", "output"]
    triplets = save_rows(rows, folder / "triplets.png", scale=scale,
                         column_labels=labels * min(per_row, n))
    return {"triplets": triplets, **save_trajectory(result.trajectory, folder / "chain",
                                                    scale=scale)}
