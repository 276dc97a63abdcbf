"""Image restoration with a trained energy: denoising, inpainting and super-resolution.

Sec. 4.1 and Figures 5, 6 and 11 of Zhao, Xie & Li, "Learning Energy-Based Generative Models via
Coarse-to-Fine Expanding and Sampling", ICLR 2021. Both run the model's own short-run Langevin
chain (``TrainedModel.sample(start=...)``) from the corrupted image: the energy pulls the chain
toward the images the model has learned, and the short run keeps it near the observation.

- Denoising (Fig. 5): the chain starts at x + σ·ε (the paper's σ = 0.2) and runs a few steps.
- Inpainting (Fig. 6, 11): known pixels are held exactly at every step (mask 1 = known), unknown
  ones start from U(−1, 1); chains with different noise give different completions.
- Super-resolution (beyond the paper, issue 38): the low-resolution image fixes a linear
  function of the image, its average pooling, held exactly by projecting after every step.

Conventions: images are float (N, C, R, R) in [−1, 1] at the model's resolution; masks are
(N or 1, 1 or C, R, R) of zeros and ones, 1 = known; a mask image on disk is white where known.
PSNR and SSIM come from scikit-image with data_range 2 (the width of [−1, 1]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from cfebm.config import DataConfig
from cfebm.data import DataError, load_images, to_float
from cfebm.runtime import derived_seed
from cfebm.sampling import upsample
from cfebm.trained import TrainedModel

MASKS = ("occlusion", "centre", "pixels", "right", "bottom")
# The paper's corruption (Sec. 4.1: "an additive Gaussian noise e ~ N(0, 0.2)", a std; REFERENCE).
SIGMA = 0.2


class MaskError(DataError):
    """A mask that cannot be used (size, channels, values); the message says why."""


def images_of(model: TrainedModel, n: int | None = None, *, folder: str | Path | None = None,
              split: str = "test") -> Tensor:
    """The first ``n`` images (all if None) of the model's dataset split, or of an image folder,
    at the model's resolution and channels: float (n, C, R, R) in [−1, 1].

    A folder's images are converted ("L" or "RGB"), centre-cropped to a square and resized; images
    smaller than the model's resolution raise a DataError.
    """
    cfg = DataConfig(dataset="folder", root=str(folder)) if folder else model.cfg.data
    images = load_images(cfg, split=split, resolution=model.resolution,
                         image_channels=model.channels)
    n = len(images) if n is None else min(n, len(images))
    return to_float(images.get_batch(torch.arange(n)))


# ------------------------------------------------------------------------------------------------
# Denoising (Fig. 5)


def corrupt(x: Tensor, sigma: float = SIGMA, *, seed: int = 0) -> Tensor:
    """x + σ·ε with ε ~ N(0, I) drawn from ``seed``, clamped into [−1, 1].

    The authors do not clamp; we do, so that the corrupted image is an image (what a file can
    hold, and where chains start) and the noisy baseline is not handicapped by impossible values.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    g = torch.Generator().manual_seed(derived_seed("corrupt", seed))
    eps = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    return (x + sigma * eps).clamp(-1.0, 1.0)


def denoise_steps(sigma: float) -> int:
    """The default chain length for noise of std σ: round(10σ), at least 1.

    Chosen on the validation split (benchmarks/restoration.py; docs/notebook/validation-split.md, "Validation decides,
    test reports"): on the quick-start model the best K on 200 validation images was 1, 2 and 3
    steps at σ = 0.1, 0.2, 0.3 (first found on test images; the validation split confirmed it),
    and the model's own T (25) or the authors' 10 steps end below the noisy input's PSNR,
    because the chain drifts to the model's samples.
    Other models may prefer other K: measure with benchmarks/restoration.py.
    """
    return max(1, round(10 * sigma))


def denoise(model: TrainedModel, noisy: Tensor, sigma: float = SIGMA, *,
            steps: int | None = None, noise: float | None = None, seed: int = 0,
            batch_size: int = 250, progress: bool = False, callback=None) -> Tensor:
    """Langevin chains of the model's energy started exactly at ``noisy`` (Fig. 5).

    Args:
        model: the trained model.
        noisy: corrupted images (N, C, R, R) in [−1, 1].
        sigma: the std of their noise; sets the default ``steps`` (``denoise_steps``).
        steps: Langevin steps K. Too many drift toward the model's own samples and away from
            the observation.
        noise: test-time noise level η0 (default: training's; it barely matters here).
        seed, batch_size, progress, callback: as in ``TrainedModel.sample``.

    Returns:
        The denoised images (N, C, R, R) in [−1, 1].
    """
    steps = denoise_steps(sigma) if steps is None else steps
    return model.sample(start=noisy, steps=steps, noise=noise, seed=seed, batch_size=batch_size,
                        progress=progress, callback=callback)


# ------------------------------------------------------------------------------------------------
# Masks


def make_mask(kind: str, n: int, resolution: int, *, missing: float = 0.5,
              seed: int = 0) -> Tensor:
    """Masks (n, 1, R, R) of 0 (unknown) and 1 (known).

    - "occlusion": the paper's "mask 25% areas": a square of side R/2 (25% of the image) at a
      random place in each image. (The authors' code hid a 3R/4 centre square, 56%.)
    - "centre": the same square at the centre of every image.
    - "pixels": each pixel unknown with probability ``missing``, independently.
    - "right", "bottom": the right or bottom half.
    """
    r, h = resolution, resolution // 2
    g = torch.Generator().manual_seed(derived_seed("mask", seed))
    mask = torch.ones(n, 1, r, r)
    if kind == "centre":
        q = (r - h) // 2
        mask[..., q:q + h, q:q + h] = 0
    elif kind == "occlusion":
        tops, lefts = torch.randint(0, r - h + 1, (2, n), generator=g).tolist()
        for i, (t, s) in enumerate(zip(tops, lefts)):
            mask[i, :, t:t + h, s:s + h] = 0
    elif kind == "pixels":
        if not 0 < missing < 1:
            raise MaskError(f"the fraction of missing pixels must be in (0, 1), got {missing}")
        mask = (torch.rand(n, 1, r, r, generator=g) >= missing).float()
    elif kind == "right":
        mask[..., r - h:] = 0
    elif kind == "bottom":
        mask[..., r - h:, :] = 0
    else:
        raise MaskError(f"unknown mask {kind!r}; choose one of {', '.join(MASKS)} or give a mask "
                        "image (white = known)")
    return mask


def load_mask(path: str | Path, resolution: int, channels: int) -> Tensor:
    """A mask image (white = known, black = to fill) as a (1, 1 or C, R, R) mask.

    It must be exactly R×R (no resizing: that would blur the edge into grey), hold only black
    (0) and white (255), and be grayscale, or RGB with equal channels or per-channel masks for an
    RGB model. Anything else raises a MaskError that says which.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, UnidentifiedImageError) as e:
        raise MaskError(f"cannot read mask image {path} ({type(e).__name__})") from e
    if img.size != (resolution, resolution):
        raise MaskError(f"mask image {path} is {img.width}x{img.height} but the model works at "
                        f"{resolution}x{resolution}; draw the mask at that size")
    mode = "L" if img.mode in ("1", "L", "LA") else "RGB"  # alpha and palettes are dropped
    a = np.asarray(img.convert(mode))
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (c, R, R)
    bad = int(((a != 0) & (a != 255)).sum())
    if bad:
        raise MaskError(f"mask image {path} is not binary: {bad} pixel value(s) are neither black "
                        "(0) nor white (255); save it as a black-and-white PNG")
    if a.shape[0] == 3 and (a == a[:1]).all():
        a = a[:1]
    if a.shape[0] not in (1, channels):
        raise MaskError(f"mask image {path} has {a.shape[0]} different colour channels but the "
                        f"model has {channels}; use a grayscale mask")
    return torch.from_numpy(a == 255).float()[None]


def check_mask(mask: Tensor, x: Tensor) -> None:
    """Raise a MaskError unless ``mask`` is a usable mask for images ``x`` (N, C, R, R)."""
    if mask.ndim != 4:
        raise MaskError(f"a mask must be (N, C, H, W), got shape {tuple(mask.shape)}")
    n, c, h, w = mask.shape
    if (h, w) != tuple(x.shape[-2:]):
        raise MaskError(f"the mask is {w}x{h} but the images are {x.shape[-1]}x{x.shape[-2]}")
    if c not in (1, x.shape[1]):
        raise MaskError(f"the mask has {c} channels but the images have {x.shape[1]}; give 1 "
                        f"(all channels) or {x.shape[1]}")
    if n not in (1, len(x)):
        raise MaskError(f"{n} masks for {len(x)} images; give 1 or {len(x)}")
    if not torch.all((mask == 0) | (mask == 1)):
        raise MaskError("a mask must hold only 0 (unknown) and 1 (known)")
    if bool(mask.all()):
        raise MaskError("the mask marks every pixel as known: there is nothing to inpaint")


# ------------------------------------------------------------------------------------------------
# Inpainting (Fig. 6, 11)


def inpaint(model: TrainedModel, x: Tensor, mask: Tensor, *, completions: int = 1,
            steps: int | None = None, noise: float | None = None, seed: int = 0,
            batch_size: int = 250, progress: bool = False, callback=None) -> Tensor:
    """Diverse completions of the unknown pixels of ``x`` by the model's Langevin chains.

    Args:
        model: the trained model.
        x: images (N, C, R, R) in [−1, 1]; only their known pixels are read.
        mask: (N or 1, 1 or C, R, R), 1 = known (kept bit-exact at every step), 0 = to fill.
        completions: K chains per image, each from its own U(−1, 1) fill and Langevin noise.
        steps, noise: Langevin steps and test-time η0 (defaults: the model's T and η0).
        seed: seeds the fills and the chains; results do not depend on ``batch_size``.
        progress, callback: as in ``TrainedModel.sample``.

    Returns:
        (N, K, C, R, R) in [−1, 1]: completion k of image i at [i, k].
    """
    check_mask(mask, x)
    if completions < 1:
        raise ValueError(f"completions must be >= 1, got {completions}")
    n, k = len(x), completions
    known = mask.to(x.device).bool().expand(n, -1, -1, -1).repeat_interleave(k, 0)
    g = torch.Generator().manual_seed(derived_seed("inpaint-fill", seed))
    fill = (torch.rand((n * k, *x.shape[1:]), generator=g) * 2 - 1).to(x.device, x.dtype)
    start = torch.where(known, x.repeat_interleave(k, 0), fill)
    out = model.sample(start=start, mask=known.float(), steps=steps, noise=noise, seed=seed,
                       batch_size=batch_size, progress=progress, callback=callback)
    return out.view(n, k, *x.shape[1:])


# ------------------------------------------------------------------------------------------------
# Super-resolution (issue 38): the low-resolution image as a linear constraint


def superresolve(model: TrainedModel, low: Tensor, *, completions: int = 1,
                 steps: int | None = None, noise: float | None = None, seed: int = 0,
                 batch_size: int = 250, progress: bool = False, callback=None) -> Tensor:
    """Zero-shot super-resolution: images whose f×f average pooling is exactly ``low``, drawn by
    the model's Langevin chains projected onto that constraint after every step
    (``sampling.AveragePooled``), each from its own U(−1, 1) start. No training for the task:
    the constraint does what the mask does for inpainting.

    Args:
        model: the trained model (side R).
        low: low-resolution images (N, C, r, r) in [−1, 1], R / r a power of two.
        completions: K chains per image (diverse completions).
        steps, noise: Langevin steps and test-time η0 (defaults: the model's T and η0).
        seed, batch_size, progress, callback: as in ``TrainedModel.sample``.

    Returns:
        (N, K, C, R, R): completion k of image i at [i, k]; avgpool to r of each is ``low[i]``.
    """
    if completions < 1:
        raise ValueError(f"completions must be >= 1, got {completions}")
    n, k, side = len(low), completions, model.resolution
    g = torch.Generator().manual_seed(derived_seed("superres-start", seed))
    start = (torch.rand((n * k, low.shape[1], side, side), generator=g) * 2 - 1).to(low)
    out = model.sample(start=start, pooled=low.repeat_interleave(k, 0), steps=steps,
                       noise=noise, seed=seed, batch_size=batch_size, progress=progress,
                       callback=callback)
    return out.view(n, k, low.shape[1], side, side)


def upscale(low: Tensor, side: int, method: str) -> Tensor:
    """A classical upscaling of ``low`` (N, C, r, r) in [−1, 1] to ``side``: "nearest" (blocks),
    "bicubic" (torch, a = −0.75) or "lanczos" (PIL's Lanczos-3), clamped to [−1, 1]; the
    baselines of ``superresolve``."""
    if method == "nearest":
        return upsample(low, side // low.shape[-1])
    if method == "bicubic":
        up = F.interpolate(low, size=(side, side), mode="bicubic", align_corners=False)
        return up.clamp(-1.0, 1.0)
    if method != "lanczos":
        raise ValueError(f"unknown upscaling {method!r}; choose nearest, bicubic or lanczos")
    planes = (low.detach().float().cpu().flatten(0, 1).numpy() + 1.0) * 127.5
    up = [np.asarray(Image.fromarray(p.astype(np.float32), mode="F").resize(
        (side, side), Image.Resampling.LANCZOS)) for p in planes]
    out = torch.from_numpy(np.stack(up)).view(*low.shape[:2], side, side) / 127.5 - 1.0
    return out.clamp(-1.0, 1.0).to(low)


# ------------------------------------------------------------------------------------------------
# Measures


def psnr_ssim(x: Tensor, reference: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB) and SSIM of each image of ``x`` against ``reference``, both (N, C, R, R) in
    [−1, 1], by scikit-image (its default 7×7 window, data_range 2). Returns two arrays (N,)."""
    # Imported here: skimage.metrics pulls in scipy.stats, a second on every `cfebm` command.
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = x.detach().float().cpu().numpy().astype(np.float64)
    b = reference.detach().float().cpu().numpy().astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    psnr, ssim = np.empty(len(a)), np.empty(len(a))
    for i, (u, v) in enumerate(zip(a, b)):
        with np.errstate(divide="ignore"):  # identical images: PSNR inf, not a warning
            psnr[i] = peak_signal_noise_ratio(v, u, data_range=2.0)
        if u.shape[0] == 1:
            ssim[i] = structural_similarity(v[0], u[0], data_range=2.0)
        else:
            ssim[i] = structural_similarity(v, u, data_range=2.0, channel_axis=0)
    return psnr, ssim


def diversity(completions: Tensor, mask: Tensor) -> float:
    """Mean pairwise distance between the completions of the same image: the RMS difference
    over unknown pixels, averaged over pairs and images. ``completions`` (N, K, C, R, R),
    ``mask`` as for ``inpaint``. NaN for K < 2."""
    n, k, c, r, _ = completions.shape
    if k < 2:
        return float("nan")
    unknown = (1 - mask.float()).to(completions.device).expand(n, c, r, r).flatten(1)  # (N, D)
    pairs = torch.triu_indices(k, k, 1)
    out = []
    for y, u in zip(completions.float().flatten(2), unknown):  # (K, D), (D,)
        if u.sum() == 0:
            continue
        d2 = ((y[pairs[0]] - y[pairs[1]]) ** 2 * u).sum(1) / u.sum()  # (pairs,)
        out.append(d2.sqrt().mean())
    return float(torch.stack(out).mean()) if out else float("nan")
