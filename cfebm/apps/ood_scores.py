"""Out-of-distribution scores of a trained energy, each oriented higher = more in-distribution.

- ``"energy"``: −E(x), the paper's score (Sec. 4.2).
- ``"grad_norm"``: +‖∇ₓE(x)‖₂, the authors' code's (REFERENCE §5.6).
- ``"ratio"``: −E_R(x) + E_r(pool x), a likelihood ratio across the model's own scales
  (Ren et al., NeurIPS 2019, with the coarse energy as the background model): the coarse energy
  sees only ``avgpool(x)``, so the ratio discounts what an image's low-frequency statistics
  alone make likely (a plain digit on black is "simple" at every scale). r defaults to R/2
  (``RATIO_FACTOR``), which beat R/4 on validation (docs/notebook/ood.md).
- ``"features"``: minus the Mahalanobis distance of the features the energy's top block reads
  (the (4c, 4, 4) map of the 8² block, flattened) from a Gaussian fitted to validation images:
  mean and Ledoit–Wolf covariance (Lee et al., NeurIPS 2018). It keeps *where* things are in the
  image, which a scalar energy does not.
- ``"upright"``: −softplus(E(x) − E(flip x)) = log p(x) / (p(x) + p(flip x)), with ``flip`` the
  image upside down: the model's probability that ``x``, not its upside-down twin, is the
  upright one. A likelihood ratio against the model itself marginalised over the vertical
  flip, which discounts everything the flip leaves alone (intensity, texture, left–right
  layout) and keeps what an upright image has that an upside-down one lacks. It carries no
  information on data without an up (textures, top-down views): there use ``ratio+features``.
- ``"ratio+features"``: the ratio and the features, each standardised by its spread over
  held-out validation images, ``z(ratio) + FEATURE_WEIGHT · z(features)``.
- ``"ratio+features+upright"`` (``DEFAULT_SCORE``): ``ratio+features`` + b · z(upright), with
  b chosen per model when the detector is fitted (``pick_upright_weight``): how much a model's
  flipped energy tells depends on how well it learnt which way is up, and one b served no two
  models we measured (docs/notebook/ood.md).

The fitted scores need a ``Detector``: ``Detector.fit(model)`` reads the validation split of the
model's dataset (``data.validation`` images held out of training; for a model trained without one,
the last 5,000 training images, which it has seen: the card says so). It fits the features'
Gaussian, standardises the three parts, and chooses b on the validation images against sets made
from them alone (``OWN_SETS``: upside down, inverted, midpoints, noise, constants), never on a
test split nor on another dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score
from torch import Tensor
from tqdm.auto import tqdm

from cfebm.data import load_images, to_float
from cfebm.trained import TrainedModel

SCORES = ("energy", "grad_norm", "ratio", "features", "upright", "ratio+features",
          "ratio+features+upright")
FITTED = ("features", "ratio+features", "ratio+features+upright")
DEFAULT_SCORE = "ratio+features+upright"
STANDARDISED = ("ratio", "features", "upright")   # the parts of the combined scores
RATIO_FACTOR = 2          # the ratio's coarse scale r = R / RATIO_FACTOR
FEATURE_WEIGHT = 0.5      # of z(features) against z(ratio) in the combined scores (validation)
UPRIGHT_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5)   # the b that Detector.fit chooses from
OWN_SETS = ("vflip", "invert", "interp", "uniform", "constant")   # made from in-dist. images
FIT_IMAGES = 2000         # validation images the Gaussian is fitted to
SCALE_IMAGES = 1000       # further validation images: standardise the scores, choose b
FALLBACK_VALIDATION = 5000


@dataclass(frozen=True)
class Gaussian:
    """A Gaussian over feature vectors, as its mean (D,) and a whitening matrix W (D, D) with
    W Wᵀ = the precision: the Mahalanobis distance of f is ‖(f − mean) W‖."""

    mean: Tensor
    whiten: Tensor

    @classmethod
    def fit(cls, features: Tensor) -> Gaussian:
        """Mean and Ledoit–Wolf shrunk covariance of ``features`` (N, D), N ≥ 2."""
        lw = LedoitWolf().fit(features.double().numpy())
        whiten = np.linalg.cholesky(lw.precision_)
        return cls(torch.from_numpy(lw.location_), torch.from_numpy(whiten))

    def distance(self, features: Tensor) -> Tensor:
        """Mahalanobis distances (N,) float64 of ``features`` (N, D)."""
        return ((features.double() - self.mean) @ self.whiten).norm(dim=1)


@dataclass
class Detector:
    """The scores of one model, with what the fitted ones learnt from validation images.

    Attributes:
        model: the trained model.
        gaussian: the features' Gaussian (None until fitted).
        spread: score kind -> (mean, standard deviation) over held-out validation images.
        coarse: the ratio's coarse resolution r (0: R / ``RATIO_FACTOR``).
        weight: of z(features) in the combined scores.
        upright_weight: b, of z(upright) in ``"ratio+features+upright"``.
        choice: the validation AUROCs b was chosen by (``upright_weight_aurocs``; empty when b
            was given).
        fitted_on: where the fitting images came from (for reports).
    """

    model: TrainedModel
    gaussian: Gaussian | None = None
    spread: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    coarse: int = 0
    weight: float = FEATURE_WEIGHT
    upright_weight: float = 0.0
    choice: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    fitted_on: str = ""

    @classmethod
    def fit(cls, model: TrainedModel, images: Tensor | None = None, *, coarse: int = 0,
            upright_weight: float | None = None, batch_size: int = 500) -> Detector:
        """Fit the features' Gaussian to the first ``FIT_IMAGES`` of ``images`` (N, C, R, R) in
        [−1, 1] (default: the validation split of the model's dataset), standardise the ratio,
        features and upright scores over the next ``SCALE_IMAGES``, and choose the upright
        weight b on them (``pick_upright_weight``) unless ``upright_weight`` is given."""
        how = f"{len(images)} given images" if images is not None else ""
        if images is None:
            images, how = validation_images(model, FIT_IMAGES + SCALE_IMAGES)
        if len(images) < 4:
            raise ValueError(f"need at least 4 images to fit the detector, got {len(images)}")
        split = min(FIT_IMAGES, len(images) // 2)
        detector = cls(model, coarse=coarse, fitted_on=how)
        _, features = detector._energies_and_features(images[:split], batch_size)
        detector.gaussian = Gaussian.fit(features)
        held = images[split:]
        parts = detector.parts(held, batch_size=batch_size)
        for kind in STANDARDISED:
            detector.spread[kind] = (parts[kind].mean().item(), parts[kind].std().item())
        if upright_weight is None:
            g = torch.Generator().manual_seed(0)
            outside = {name: detector.parts(own_set(name, held, g), batch_size=batch_size)
                       for name in OWN_SETS}
            detector.choice = upright_weight_aurocs(
                detector._sum_parts(parts), {k: detector._sum_parts(p) for k, p in outside.items()})
            upright_weight = pick_upright_weight(detector.choice)
        detector.upright_weight = upright_weight
        return detector

    @classmethod
    def for_kinds(cls, model: TrainedModel, kinds: Sequence[str], *, coarse: int = 0,
                  upright_weight: float | None = None, batch_size: int = 500) -> Detector:
        """A detector for scoring ``kinds``: fitted (``fit``) when one of them needs it, b
        chosen on validation only when the default score is among them and b is not given."""
        if DEFAULT_SCORE not in kinds and upright_weight is None:
            upright_weight = 0.0
        if any(kind in FITTED for kind in kinds):
            return cls.fit(model, coarse=coarse, upright_weight=upright_weight,
                           batch_size=batch_size)
        return cls(model, coarse=coarse, upright_weight=upright_weight)

    def _sum_parts(self, parts: dict[str, Tensor]) -> dict[str, Tensor]:
        """``parts`` as what b weighs: ``base`` = z(ratio) + a·z(features), ``upright`` =
        z(upright) (when among the parts), and ``energy`` (−E, the baseline b must not lose
        Interp to)."""
        z = {"base": self.standard("ratio", parts["ratio"])
             + self.weight * self.standard("features", parts["features"]),
             "energy": parts["energy"]}
        if "upright" in parts:
            z["upright"] = self.standard("upright", parts["upright"])
        return z

    def score(self, x: Tensor, kind: str = DEFAULT_SCORE, *, batch_size: int = 500,
              progress: bool = False) -> Tensor:
        """Scores (N,) float32 of images ``x`` (N, C, R, R) in [−1, 1], higher = more
        in-distribution (see the module docstring for ``kind``)."""
        if kind not in SCORES:
            raise ValueError(f"unknown score {kind!r}; choose one of {', '.join(SCORES)}")
        if kind in FITTED and self.gaussian is None:
            raise ValueError(f"score {kind!r} needs a fitted detector: Detector.fit(model)")
        self.model.check_images(x)
        parts = []
        for start in tqdm(range(0, len(x), batch_size), disable=not progress, unit="batch",
                          desc=f"scoring ({kind})", dynamic_ncols=True):
            parts.append(self._score_batch(x[start:start + batch_size], kind))
        return torch.cat(parts).float()

    def _score_batch(self, x: Tensor, kind: str) -> Tensor:
        x = x.to(self.model.device)
        if kind == "energy":
            with torch.no_grad():
                return -self.model.energy(x).cpu().double()
        if kind == "grad_norm":
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.model.energy(x).sum(), x)
            return grad.flatten(1).norm(dim=1).cpu().double()
        if kind == "upright":
            with torch.no_grad():
                return upright(self.model.energy(x).cpu().double(), self._flipped_energy(x))
        parts = self._parts(x, flip=kind == "ratio+features+upright")
        if kind in parts:
            return parts[kind]
        z = self._sum_parts(parts)
        if kind == "ratio+features":
            return z["base"]
        return z["base"] + self.upright_weight * z["upright"]

    def parts(self, x: Tensor, *, batch_size: int = 500) -> dict[str, Tensor]:
        """The raw scores the combined ones are made of, (N,) float64 each, of images ``x``
        (N, C, R, R) in [−1, 1], in batches: ``energy`` (−E), ``ratio``, ``upright`` and (once
        fitted) ``features``. Three forward passes an image (x, its pooled and its flipped
        copy), where scoring each kind apart would take six."""
        self.model.check_images(x)
        batches = [self._parts(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return {kind: torch.cat([b[kind] for b in batches]) for kind in batches[0]}

    def _parts(self, x: Tensor, flip: bool = True) -> dict[str, Tensor]:
        """``parts`` of one batch; ``upright`` (a forward pass of the flipped images) only with
        ``flip``, which only the default score needs."""
        x = x.to(self.model.device)
        energy, features = self._energies_and_features(x, len(x))
        coarse = self.coarse or self.model.resolution // RATIO_FACTOR
        parts = {"energy": -energy,
                 "ratio": -energy + self.model.coarse_energy(x, coarse).cpu().double()}
        if flip:
            parts["upright"] = upright(energy, self._flipped_energy(x))
        if self.gaussian is not None:
            parts["features"] = -self.gaussian.distance(features)
        return parts

    def _flipped_energy(self, x: Tensor) -> Tensor:
        """E(flip x) (N,) float64 of images ``x`` upside down."""
        with torch.no_grad():
            return self.model.energy(x.flip(-2)).cpu().double()

    def standard(self, kind: str, s: Tensor) -> Tensor:
        """Scores ``s`` of ``kind`` standardised by their spread over held-out validation
        images (mean 0, standard deviation 1 there)."""
        mean, sd = self.spread[kind]
        return (s - mean) / sd

    def _energies_and_features(self, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        out = [self.model.energy_and_features(x[i:i + batch_size].to(self.model.device))
               for i in range(0, len(x), batch_size)]
        return (torch.cat([e for e, _ in out]).cpu().double(),
                torch.cat([f for _, f in out]).cpu())


def own_set(name: str, x: Tensor, generator: torch.Generator, n: int = 0) -> Tensor:
    """A set in [−1, 1] of ``OWN_SETS`` made from in-distribution images ``x`` (N, C, R, R):
    ``vflip`` upside down, ``invert`` intensities negated, both (N, C, R, R); ``interp`` the
    midpoints of ``n`` (default N) random pairs; ``uniform`` U(−1, 1) noise, ``constant`` one
    random value per image and channel, both (N, C, R, R) (only x's shape matters)."""
    c, h, w = x.shape[1:]
    n = n or len(x)
    if name == "vflip":
        return x.flip(-2)
    if name == "invert":
        return -x
    if name == "interp":
        i, j = (torch.randint(len(x), (n,), generator=generator) for _ in range(2))
        return 0.5 * (x[i] + x[j])
    if name == "uniform":
        return torch.rand(n, c, h, w, generator=generator) * 2 - 1
    if name == "constant":
        return (torch.rand(n, c, 1, 1, generator=generator) * 2 - 1).expand(n, c, h, w).clone()
    raise ValueError(f"unknown set {name!r}; made from in-distribution images: {OWN_SETS}")


def labelled(score_in: Tensor, score_out: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1: in-distribution) and scores, float64, of two score sets (N,) and (M,)."""
    y = np.r_[np.ones(len(score_in)), np.zeros(len(score_out))]
    return y, np.r_[score_in.numpy(), score_out.numpy()].astype(np.float64)


def upright_weight_aurocs(inside: dict[str, Tensor], outside: dict[str, dict[str, Tensor]],
                          weights: Sequence[float] = UPRIGHT_WEIGHTS
                          ) -> dict[str, dict[str, float]]:
    """AUROCs of ``base + b·upright`` for each b in ``weights`` (keys ``str(b)``) and of the
    ``energy`` (key ``"energy"``), in-distribution scores ``inside`` against each set of
    ``outside`` (name -> the same three scores (M,))."""
    def auroc(score_in: Tensor, score_out: Tensor) -> float:
        return float(roc_auc_score(*labelled(score_in, score_out)))

    table = {"energy": {name: auroc(inside["energy"], o["energy"]) for name, o in outside.items()}}
    for b in weights:
        s_in = inside["base"] + b * inside["upright"]
        table[str(b)] = {name: auroc(s_in, o["base"] + b * o["upright"])
                         for name, o in outside.items()}
    return table


def pick_upright_weight(table: dict[str, dict[str, float]]) -> float:
    """The b of ``upright_weight_aurocs``'s table with the largest smallest AUROC over the sets
    other than ``interp``, among those whose ``interp`` AUROC is at least the energy's (the
    default must not trade the hard near-distribution case for the easy ones); the smaller b on
    ties; the b with the best ``interp`` when none keeps up with the energy."""
    weights = [k for k in table if k != "energy"]
    keeps_up = [b for b in weights if table[b]["interp"] >= table["energy"]["interp"]]
    if not keeps_up:
        return float(max(weights, key=lambda b: table[b]["interp"]))
    worst = {b: min(v for name, v in table[b].items() if name != "interp") for b in keeps_up}
    return float(max(keeps_up, key=lambda b: (worst[b], -float(b))))


def upright(energy: Tensor, flipped_energy: Tensor) -> Tensor:
    """log p(x) / (p(x) + p(flip x)) = −softplus(E(x) − E(flip x)) from the energies (N,) of
    images and of the same images upside down: in (−∞, 0], log ½ when the model cannot tell."""
    return -torch.nn.functional.softplus(energy - flipped_energy)


def validation_images(model: TrainedModel, n: int) -> tuple[Tensor, str]:
    """The first ``n`` images (N, C, R, R) in [−1, 1] of the validation split of the model's
    dataset, and where they came from. A model trained with ``data.validation = 0`` saw every
    training image; its validation split is then the last ``FALLBACK_VALIDATION`` of them."""
    held = model.cfg.data.validation
    data = dataclasses.replace(model.cfg.data, validation=held or FALLBACK_VALIDATION, limit=0)
    images = load_images(data, split="validation", resolution=model.resolution,
                         image_channels=model.channels)
    x = to_float(images.get_batch(torch.arange(min(n, len(images)))))
    seen = ("held out of training" if held else
            "the last training images, which this model trained on (data.validation = 0)")
    return x, f"{len(x)} validation images of {data.dataset}: {seen}"
