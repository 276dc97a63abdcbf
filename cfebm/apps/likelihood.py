"""Log-likelihood bounds of a trained model on its test split (paper Appendix A.7, Table 10).

Glue between a ``TrainedModel`` and ``cfebm.metrics.ais`` (see its modules' docstrings for
the estimators, the box and the units): the model's energy as trained (its fading factor β, its
precision, at its resolution), its held-out images, uniformly dequantised by default.

The reverse chains start at these held-out images. A trained EBM has no exact samples, and
test images are not samples of the model, so the reverse number is an estimate of the mean
log-likelihood, not a lower bound. Only the forward number is a (stochastic, upper) bound.

Dequantisation: an 8-bit pixel v becomes x = (v + u)/128 − 1 with u ~ U(0, 1), a continuous
image in [−1, 1) whose density on [0, 256) is p(x)/128ᴰ; that is what makes bits/dim comparable
to other density models. Without it (``dequantize=False``) the images are the training
convention v/127.5 − 1 and the "likelihood" is a density evaluated at lattice points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cfebm.data import DataError, load_images, to_float
from cfebm.metrics.ais import LikelihoodBounds, likelihood_bounds
from cfebm.model import frozen
from cfebm.trained import TrainedModel


@dataclass(frozen=True)
class HeldOut:
    images: Tensor      # (N, C, R, R) float32 in [−1, 1]: the images scored
    pilot: Tensor       # (P, C, R, R): the next P test images, for the reverse pilot run
    how: str


def held_out(model: TrainedModel, n: int, *, pilot: int = 0, dequantize: bool = True,
             seed: int = 0) -> HeldOut:
    """The first ``n`` test images of the model's dataset at its resolution and channels, and
    the ``pilot`` images after them (disjoint, so the reverse pilot run that tunes the step
    sizes does not start from the chains it tunes)."""
    images = load_images(model.cfg.data, split="test", resolution=model.resolution,
                         image_channels=model.channels)
    if n + pilot > len(images):
        raise DataError(f"the test split has {len(images)} images; --n and the pilot chains "
                        f"ask for {n + pilot}")
    raw = images.get_batch(torch.arange(n + pilot))
    if dequantize:
        u = torch.rand(raw.shape, generator=torch.Generator().manual_seed(seed))
        x = (raw.float() + u) / 128 - 1
    else:
        x = to_float(raw)
    how = (f"{model.cfg.data.dataset} test split, first {n} images at {model.resolution}x"
           f"{model.resolution}, " + ("uniformly dequantised: (v + u)/128 − 1" if dequantize
                                      else "not dequantised: v/127.5 − 1"))
    return HeldOut(x[:n], x[n:], how)


def model_bounds(model: TrainedModel, x: Tensor, **options) -> LikelihoodBounds:
    """``metrics.ais.likelihood_bounds`` of ``model.energy`` on images ``x``; ``options`` as
    there (n_chains, x_pilot, betas, transition, step_size, leapfrog, batch_size, seed, ...)."""
    model.check_images(x)
    with frozen(model.net):   # spectral-norm weights computed once for all chains
        return likelihood_bounds(model.energy, x, device=model.device, dtype=torch.float32,
                                 **options)
