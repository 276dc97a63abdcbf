"""Translating images with a trained target-domain energy, and its generative saliency maps.

Sec. 3.3 and Fig. 3–4 of Zhao, Xie & Li, "Learning Energy-Based Generative Models via
Coarse-to-Fine Expanding and Sampling", ICLR 2021. The translator is the model's own short-run
Langevin chain of Eq. (4) started at the source image, y_0 = x
(``TrainedModel.sample_batches(start=x)``); the output is y_T.

Generative saliency map (what the chain changed, and where):

- ``"gradient"`` (the paper's definition): S = Σ_t ∇_y E(y_t), the gradients the chain followed,
  summed over its T steps, one value per pixel and channel. Pixels a step does not update
  contribute nothing to it: those held by a ``mask``, and those at the clamp of [−1, 1] whose
  step points outwards (Fashion-MNIST's black background, which the energy would push below
  black at every step, would otherwise outshine the garment).
- ``"change"`` (the authors' code, REFERENCE §5.8): S = Σ_t |y_{t+1} − y_t|, the total distance
  each pixel travelled. Without noise it is step·Σ_t |∇E(y_t)|; with noise it also counts the
  noise's jitter, and pixels held at the clamp boundary count as still.

Either is reduced over channels by the mean absolute value, giving (N, 1, R, R) ≥ 0, and
normalised per image by its maximum into [0, 1] (all zeros stay zeros): a map shows where one
image changed, not how much compared with another (``raw`` keeps the unnormalised values).

Functions of a ``TrainedModel`` and tensors; ``figures.save_translation`` writes the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from cfebm.apps.chains import Trajectory
from cfebm.apps.restore import images_of, psnr_ssim
from cfebm.data import DataError, downsample, readers, to_float
from cfebm.data.domains import grid_sources
from cfebm.sampling import LangevinStep
from cfebm.trained import TrainedModel

SALIENCY = ("gradient", "change")


@dataclass
class Translation:
    """Source images, their translations and saliency maps, all at the model's resolution.

    Attributes:
        source: (N, C, R, R) in [−1, 1], where the chains started.
        output: (N, C, R, R) in [−1, 1], the chains' last states.
        raw: (N, 1, R, R) ≥ 0, the channel-reduced saliency before normalisation.
        saliency: (N, 1, R, R) in [0, 1], ``raw`` divided by each image's maximum.
        kind: "gradient" or "change".
        trajectory: every ``every``-th state of the first chains, the source first (step 0).
    """

    source: Tensor
    output: Tensor
    raw: Tensor
    saliency: Tensor
    kind: str
    trajectory: Trajectory


class SaliencyMeter:
    """A Langevin callback that sums one batch's saliency (module docstring) over its steps.

    ``start`` and ``free`` (1 where the chain may move, broadcastable) are set per batch by
    ``translate``; ``total`` holds the running (B, C, R, R) sum.
    """

    def __init__(self, kind: str):
        if kind not in SALIENCY:
            raise ValueError(f"unknown saliency {kind!r}; choose one of {', '.join(SALIENCY)}")
        self.kind = kind
        self.previous = self.free = self.total = None

    def begin(self, start: Tensor, free: Tensor | None) -> None:
        self.previous, self.free, self.total = start, free, torch.zeros_like(start)

    def __call__(self, step: LangevinStep) -> None:
        if self.kind == "gradient":
            grad = step.grad.float()
            # A pixel at the clamp whose step points out of [−1, 1] did not move: not counted.
            blocked = (step.x <= -1) & (grad > 0) | (step.x >= 1) & (grad < 0)
            grad = grad.masked_fill(blocked, 0.0)
            self.total += grad if self.free is None else grad * self.free
        else:
            x = step.x.detach()  # the sampler marks this tensor for autograd at its next step
            self.total += (x - self.previous).abs()
            self.previous = x


def reduce_saliency(total: Tensor) -> tuple[Tensor, Tensor]:
    """(N, C, R, R) per-channel sums -> (raw (N, 1, R, R) ≥ 0, normalised to [0, 1] per image)."""
    raw = total.abs().mean(1, keepdim=True)
    peak = raw.amax(dim=(1, 2, 3), keepdim=True)
    return raw, torch.where(peak > 0, raw / peak.clamp_min(1e-30), torch.zeros_like(raw))


def translate(model: TrainedModel, source: Tensor, *, steps: int | None = None,
              noise: float | None = None, saliency: str = "gradient", mask: Tensor | None = None,
              every: int = 5, keep: int = 8, seed: int = 0, batch_size: int = 250,
              progress: bool = False) -> Translation:
    """Translate ``source`` (N, C, R, R) in [−1, 1] with the model's chain and measure saliency.

    The chain is the one the model trained with (``chains.translation_chain``): for a model
    stopped mid-fade, a coarse chain from the pooled source blended with it by β comes first,
    and the saliency and trajectory cover the steps at full resolution that follow. With a
    ``mask`` the chain starts at the source itself.

    Args:
        steps, noise, seed, batch_size, progress: as ``TrainedModel.sample_batches``.
        saliency: "gradient" (Σ_t ∇E(y_t), the paper's) or "change" (Σ_t |y_{t+1} − y_t|).
        mask: 1 where a pixel is held at the source (it neither moves nor counts), broadcastable
            to (N, C, R, R); None lets every pixel move.
        every, keep: record every ``every``-th state of the first ``keep`` chains.
    """
    if every < 1 or keep < 1:
        raise ValueError(f"every and keep must be >= 1, got {every} and {keep}")
    source = source.to(model.device)
    meter = SaliencyMeter(saliency)
    trajectory = Trajectory(every=every, keep=min(keep, len(source)))
    begin, outputs, totals = 0, [], []

    def callback(step: LangevinStep) -> None:
        if step.x.shape[-1] != model.resolution:  # a mid-fade model's coarse start
            return
        if step.i == 0:  # a new batch of chains starts
            size = len(step.x)
            rows = None if mask is None or len(mask) == 1 else mask[begin:begin + size]
            free = None if mask is None else 1.0 - (mask if rows is None else rows).to(step.x)
            meter.begin(source[begin:begin + size], free)
        meter(step)
        trajectory(step)

    for x in model.sample_batches(start=source, steps=steps, noise=noise, mask=mask, seed=seed,
                                  translation=mask is None, batch_size=batch_size,
                                  callback=callback, progress=progress):
        if trajectory.recording:
            trajectory.finish(x)
        totals.append(torch.zeros_like(x) if meter.total is None else meter.total)  # 0 steps
        outputs.append(x)
        begin += len(x)
        meter.total = None
    if trajectory.steps[0] != 0:  # a chain of 0 steps already recorded its start as its end
        trajectory.steps.insert(0, 0)
        trajectory.states.insert(0, source[:trajectory.keep].float().cpu())
    raw, normalised = reduce_saliency(torch.cat(totals).float().cpu())
    return Translation(source.cpu(), torch.cat(outputs).cpu(), raw, normalised, saliency,
                       trajectory)


# ------------------------------------------------------------------------------------------------
# Inputs and pictures


def source_images(model: TrainedModel, path: str | Path | None = None,
                  n: int | None = None) -> Tensor:
    """Images to translate at the model's resolution and channels, float (N, C, R, R).

    ``path``: one image file, or a folder of them (searched recursively, sorted; centre-cropped
    to a square and resized); None: the source-domain test images of a translation model's own
    pair. ``n`` keeps the first n.
    """
    if path is None:
        if model.cfg.task.kind != "translate":
            raise DataError("this model was not trained to translate; give --input images")
        x = grid_sources(model.cfg, n or 10**9)
        return downsample(x, model.resolution)
    path = Path(path)
    if path.is_file():
        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {path} ({e})") from e
        x = readers.prepare_image(img, mode="L" if model.channels == 1 else "RGB",
                                   resolution=model.resolution)
        return to_float(x[None])
    if not path.is_dir():
        raise DataError(f"--input {path} is neither an image nor a folder")
    return images_of(model, n, folder=path)


def colormap(saliency: Tensor, name: str = "inferno") -> Tensor:
    """Saliency (N, 1, R, R) in [0, 1] as RGB heatmaps (N, 3, R, R) in [−1, 1]."""
    from matplotlib import colormaps

    rgb = torch.from_numpy(colormaps[name](saliency[:, 0].numpy())[..., :3]).float()
    return rgb.permute(0, 3, 1, 2) * 2 - 1


def overlay(image: Tensor, saliency: Tensor, alpha: float = 0.6) -> Tensor:
    """The heatmap blended over ``image`` (N, C, R, R) in [−1, 1], weighted by the saliency
    itself so that still regions show the image: (N, 3, R, R) in [−1, 1]."""
    weight = alpha * saliency
    return (1 - weight) * as_rgb(image) + weight * colormap(saliency)


def as_rgb(x: Tensor) -> Tensor:
    """(N, 1 or 3, R, R) -> (N, 3, R, R)."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# ------------------------------------------------------------------------------------------------
# Content preservation


def lowpass_ssim(x: Tensor, reference: Tensor, sigma: float = 1.0) -> Tensor:
    """Content preservation per image: SSIM (scikit-image, 7×7 window, data range 2) between
    ``x`` and ``reference`` (N, C, R, R) in [−1, 1] after a Gaussian blur of ``sigma`` px, which
    leaves shape and layout and removes the fine texture a translation is meant to change.
    Returns (N,) in [−1, 1]; 1 = the same low-pass image."""
    from scipy import ndimage  # scikit-image's dependency: optional, like it

    def blur(a: Tensor) -> Tensor:
        out = ndimage.gaussian_filter(a.detach().float().cpu().numpy(), (0, 0, sigma, sigma),
                                      mode="nearest")
        return torch.from_numpy(out)

    return torch.from_numpy(psnr_ssim(blur(x), blur(reference))[1]).float()


def silhouette_iou(x: Tensor, reference: Tensor, threshold: float = -0.8) -> Tensor:
    """Overlap of the objects' silhouettes, pixels brighter than ``threshold`` (10% of the
    range above black: Fashion-MNIST's background is −1), over all channels: intersection over
    union per image, (N,) in [0, 1] (1 when both are empty)."""
    a, b = (x > threshold).any(1), (reference > threshold).any(1)
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
