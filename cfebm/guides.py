"""Steered sampling: energy terms added to a trained model's energy at sampling time.

An energy is a sum of terms, so a model can be steered after training without retraining
(Du & Mordatch, "Implicit Generation and Generalization in Energy-Based Models", 2019;
Grathwohl et al., "Your Classifier is Secretly an Energy Based Model", ICLR 2020; Du, Li &
Mordatch, "Compositional Visual Generation with Energy Based Models", NeurIPS 2020). The chains
of ``TrainedModel.sample(..., guide=g)`` run Langevin dynamics on E(x) + G(x), where a guide
G(x) = λ·T(x) is a differentiable term T with a weight λ:

- ``classifier(net, y, weight)``: λ·(−log p(y | x)), the class y of a classifier (its logits);
  ``GuideClassifier`` is one trained on noisy Fashion-MNIST for this (``load_classifier``).
- ``product(model, weight)``: λ·E_B(x), another model's energy: a product of experts,
  p_A(x)·p_B(x)^λ, that makes what both models accept (A AND B).
- ``negation(model, weight)``: −λ·E_B(x): A AND NOT B, p_A(x) / p_B(x)^λ (a proper density only
  while E_A − λ·E_B still grows fast enough; λ < 1 keeps Gaussians proper where B is wider).
  Chains of real models run to noise with it, which B finds least likely of all.
- ``exclusion(model_a, model_b, weight)``: λ·softplus(E_A(x) − E_B(x) − c), A AND NOT B that
  cannot reward noise: −λ·log P(A | x) of the two models as a classifier between them, c their
  log-partition gap; the chains sample p_A(x)·P(A | x)^λ ≤ p_A(x), always proper. What
  ``cfebm sample A --not B`` uses.
- ``reference(image, weight)``: λ/2·‖x − ref‖², stay near an image (editing).
- ``energy(fn, weight, resolution)``: any other differentiable term.

**The rule at coarse scales.** A guide has one resolution, its own (a classifier's input side,
another model's resolution, the reference's side). A coarse-to-fine chain (the A.8 cascade, a
fade's smooth start) also runs at coarser scales r; there the guide sees the chain's state
*nearest-upsampled* to its resolution, exactly the image the chain hands to the next scale (it
upsamples the same way), and a guide of lower resolution than the chain sees the state
average-pooled to its own, as the coarse stages see the data. So at every scale the term is
G(resize(x)), one function of x, and the chain samples p_r(x)·exp(−G(resize(x))). At the
model's own resolution resize is the identity.

A guide of weight 0 leaves the chains bit for bit as they are unguided: the term is still
evaluated, but it adds exact zeros to the energy and to its gradient.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from cfebm.config import SamplerConfig
from cfebm.data.readers import CLASS_NAMES
from cfebm.files import atomic_write
from cfebm.model import frozen
from cfebm.sampling import Energy, Generator, Rows, downsample, langevin_cfg, steered, upsample

GUIDE_WEIGHTS = Path(__file__).resolve().parent / "weights" / "guide_classifier.safetensors"
ARCHITECTURE = "guide-cnn-v1"   # stored in the weights' metadata; bump when the layers change
_METADATA_KEY = "cfebm"         # one sorted-JSON entry keeps the file byte-reproducible


class GuideError(ValueError):
    """A guide that cannot steer this model (unknown class, other channels or resolution)."""


@dataclass(frozen=True)
class Guide:
    """A weighted energy term, λ·T(x), for ``TrainedModel.sample(..., guide=...)``.

    Attributes:
        term: T, images (N, C, R, R) in [−1, 1] at ``resolution`` -> (N,), differentiable in x.
        weight: λ (any sign; 0 leaves the chains unguided, bit for bit).
        resolution: R, the side T takes; the chain's state is resized to it (module docstring).
        channels: C, the channels T takes.
        name: what it is, for messages ("class Sneaker", "AND model.safetensors").
        same_resolution: the term is another model's energy, which steers only a model of its
            own resolution (``check``).
    """

    term: Callable[[Tensor], Tensor]
    weight: float
    resolution: int
    channels: int
    name: str = "guide"
    same_resolution: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        """λ·T(resize(x)), (N,) float32, for a chain's state x (N, C, r, r) at any scale r."""
        r = x.shape[-1]
        if r < self.resolution:
            x = upsample(x, self.resolution // r)
        elif r > self.resolution:
            x = downsample(x, self.resolution)
        return self.weight * self.term(x).float()

    def check(self, channels: int, resolution: int) -> None:
        """Raise ``GuideError`` unless this guide can steer a model of ``channels`` and
        ``resolution`` (equal channels; a power-of-two ratio of sides, or equal sides for
        another model's energy)."""
        small, large = sorted((resolution, self.resolution))
        ratio = large // small
        if channels != self.channels:
            raise GuideError(f"{self.name} takes {self.channels}-channel images, the model has "
                             f"{channels} channel(s)")
        if self.same_resolution and resolution != self.resolution:
            raise GuideError(f"{self.name} is {self.resolution}x{self.resolution}, the model "
                             f"{resolution}x{resolution}: models combine at one resolution")
        if large % small or ratio & (ratio - 1):
            raise GuideError(f"{self.name} takes {self.resolution}x{self.resolution} images, "
                             f"which a {resolution}x{resolution} chain cannot resize to")


def listed(guides: Guide | Sequence[Guide] | None) -> list[Guide]:
    """One guide, several or None, as a list."""
    return [guides] if isinstance(guides, Guide) else list(guides or [])


def summed(guides: Guide | Sequence[Guide] | None) -> Energy | None:
    """The sum of the guides' terms as one energy (N, C, r, r) -> (N,); None when there are
    none."""
    terms = listed(guides)
    if not terms:
        return None

    def total(x: Tensor) -> Tensor:
        out = terms[0](x)
        for g in terms[1:]:
            out = out + g(x)
        return out

    return total


CHOOSE_AT = 2 / 3   # share of a chain's steps before best_of's choice (validation: notebook)


def best_of(energy: Energy, guide: Energy, x: Tensor, k: int, n_steps: int, choose_at: int,
            cfg: SamplerConfig, *, eta0: float | None = None, generator: Generator = None
            ) -> Tensor:
    """Guided chains that choose among candidates: (N, C, R, R) in [−1, 1].

    ``x`` (k·N, C, R, R) holds k candidate starts for each chain, consecutive (rows j·k …
    j·k + k − 1 are chain j's). Every candidate runs the first ``choose_at`` of ``n_steps``
    Langevin steps of E + G; then each chain keeps its candidate with the lowest guide term G
    (the one the guide finds most of its kind: for a class, the highest λ·log p(y | x)) and
    runs it on for the remaining steps, with the noise it would have drawn anyway (``Rows``).
    Costs k·choose_at + n_steps − choose_at steps a chain. A guide steers a short-run chain
    by the gradient alone, which cannot always reach a class the model rarely makes from the
    noise it started at; a choice among a few starts part-way in can (the notebook's
    "Choosing among candidates")."""
    if k < 1 or len(x) % k:
        raise ValueError(f"{len(x)} candidate starts do not split into groups of k = {k}")
    if not 0 <= choose_at <= n_steps:
        raise ValueError(f"choose_at must lie in [0, {n_steps}], got {choose_at}")
    chain = steered(energy, guide)
    x = langevin_cfg(chain, x, choose_at, cfg, eta0=eta0, generator=generator,
                     part=(0, n_steps))
    with torch.no_grad():
        scores = guide(x).view(-1, k)
    keep = scores.argmin(1) + torch.arange(0, len(x), k, device=scores.device)
    return langevin_cfg(chain, x[keep], n_steps - choose_at, cfg, eta0=eta0,
                        generator=Rows(generator, keep, len(x)), part=(choose_at, n_steps))


# ------------------------------------------------------------------------------------------------
# The built-in guides


def energy(fn: Callable[[Tensor], Tensor], weight: float, resolution: int, *,
           channels: int = 1, name: str = "energy term") -> Guide:
    """Any differentiable term ``fn`` (N, C, R, R) -> (N,) with weight λ (``Guide``)."""
    return Guide(fn, float(weight), resolution, channels, name)


def product(model, weight: float = 1.0) -> Guide:
    """λ·E_B(x): another model B (a ``TrainedModel``, or anything with ``energy(x)``,
    ``resolution`` and ``channels``) as an expert; the chains sample p_A·p_B^λ (A AND B)."""
    return Guide(model.energy, float(weight), model.resolution, model.channels,
                 f"AND {_named(model)}", same_resolution=True)


def negation(model, weight: float = 0.1) -> Guide:
    """−λ·E_B(x): A AND NOT B, p_A / p_B^λ, for λ > 0 (see the module docstring on when that
    is a proper density). The default 0.1: at 0.25 and above, chains of two 16² Fashion-MNIST
    models ran to noise, which B finds least likely (docs/notebook/steering.md)."""
    return Guide(model.energy, -float(weight), model.resolution, model.channels,
                 f"NOT {_named(model)}", same_resolution=True)


EXCLUSION_WEIGHT = 30.0   # λ of exclusion(), chosen on validation chains (benchmarks/compose.py)


def exclusion(model_a, model_b, weight: float = EXCLUSION_WEIGHT, *,
              offset: float | None = None) -> Guide:
    """λ·softplus(E_A(x) − E_B(x) − c) = −λ·log P(A | x), with P(A | x) = p_A / (p_A + p_B)
    the probability that model A rather than B made x (equal priors): A AND NOT B as
    p_A(x)·P(A | x)^λ, a proper density for every λ ≥ 0, since the term is ≥ 0. Where B finds x
    far less likely than A does the term is 0, so, unlike ``negation``, noise earns nothing.

    ``offset`` c = log Z_B − log Z_A, the gap of the two models' unknown normalisers (default:
    ``energy_offset(model_a, model_b)``). Both models need ``energy(x)``, ``resolution``,
    ``channels``, and (for the default offset) ``sample``.
    """
    c = energy_offset(model_a, model_b) if offset is None else float(offset)

    def term(x: Tensor) -> Tensor:
        return F.softplus(model_a.energy(x) - model_b.energy(x) - c)

    return Guide(term, float(weight), model_b.resolution, model_b.channels,
                 f"NOT {_named(model_b)}", same_resolution=True)


def energy_offset(model_a, model_b, chains: int = 100, seed: int = 0) -> float:
    """An estimate of log Z_B − log Z_A: median E_A over A's own chains minus median E_B over
    B's (``chains`` each, ``seed``). Exact when each model gives its own samples the same
    log-density as the other gives its own; a bias in it moves where the exclusion starts to
    count, not whether the density is proper."""
    with torch.no_grad():
        e_a = model_a.energy(model_a.sample(chains, seed=seed))
        e_b = model_b.energy(model_b.sample(chains, seed=seed))
    return (e_a.median() - e_b.median()).item()


def reference(image: Tensor, weight: float) -> Guide:
    """λ/2·‖x − ref‖², a pull toward ``image`` (C, R, R) or (1, C, R, R) in [−1, 1]: for a
    Gaussian model N(μ, s²I) the chains sample N((μ/s² + λ·ref)/(1/s² + λ), 1/(1/s² + λ))."""
    ref = image.detach()[None] if image.dim() == 3 else image.detach()
    if ref.dim() != 4 or len(ref) != 1 or ref.shape[-1] != ref.shape[-2]:
        raise GuideError(f"a reference is one image (C, R, R), got {tuple(image.shape)}")

    def term(x: Tensor) -> Tensor:
        return 0.5 * ((x - ref.to(x)) ** 2).flatten(1).sum(1)

    return Guide(term, float(weight), ref.shape[-1], ref.shape[1], "reference image")


def classifier(net: nn.Module, y: int, weight: float, *, resolution: int = 32,
               channels: int = 1, name: str | None = None) -> Guide:
    """λ·(−log p(y | x)) of a classifier ``net`` (images (N, C, R, R) in [−1, 1] -> logits
    (N, K)), y in [0, K). Its gradient, λ·∇ₓ(−log p(y | x)), pushes the chains toward class y."""
    y = int(y)

    def term(x: Tensor) -> Tensor:
        with frozen(net):
            logits = net(x).float()
        return F.cross_entropy(logits, torch.full((len(x),), y, device=x.device),
                               reduction="none")

    return Guide(term, float(weight), resolution, channels,
                 name or f"class {CLASS_NAMES[y] if 0 <= y < len(CLASS_NAMES) else y}")


def class_index(name: str | int) -> int:
    """A Fashion-MNIST class by its name (``CLASS_NAMES``; case, spaces and punctuation
    ignored, "t-shirt" and "top" for "T-shirt/top") or its index 0-9. ``GuideError`` lists
    the names for anything else."""
    key = _key(str(name))
    for k, full in enumerate(CLASS_NAMES):
        if key in {_key(full), str(k), *map(_key, full.split("/"))}:
            return k
    raise GuideError(f"unknown class {str(name)!r}; choose one of "
                     f"{', '.join(_key(c, keep='-') for c in CLASS_NAMES)}")


def _key(text: str, keep: str = "") -> str:
    """A class name reduced to lower-case letters and digits (and ``keep`` for spaces)."""
    return re.sub(r"[^a-z0-9]+", keep, text.lower()).strip(keep)


def _named(model) -> str:
    source = getattr(model, "source", "")
    return Path(source).name if source else "a model"


# ------------------------------------------------------------------------------------------------
# A classifier for guidance, trained on noisy images (scripts/train_guide_classifier.py)


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3×3 convs with GroupNorm and SiLU; smooth everywhere, so its input gradients are
    dense (a max pool or ReLU passes gradient to few pixels)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU(),
    )


class GuideClassifier(nn.Module):
    """A small noise-robust Fashion-MNIST classifier for guidance, not the FMNIST-FID net.

    Three stages (16, 32, 64 channels at 32², 16², 8²) of two convs each, 2×2 average pooling
    between them, global average pooling and a linear head: about 78k parameters. Input
    (N, 1, 32, 32) in [−1, 1] (Fashion-MNIST zero-padded 28 -> 32); output logits (N, 10).
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), n_classes: int = 10):
        super().__init__()
        widths = (1, *channels)
        self.stages = nn.ModuleList(_stage(a, b) for a, b in itertools.pairwise(widths))
        self.head = nn.Linear(widths[-1], n_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i, stage in enumerate(self.stages):
            x = stage(F.avg_pool2d(x, 2) if i else x)
        return self.head(x.mean((2, 3)))   # (N, 64) -> (N, 10)


def save_classifier(net: GuideClassifier, path: str | Path, info: dict) -> None:
    """Write ``net``'s weights and ``info`` (JSON-serialisable; ``architecture`` is added)."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    metadata = {_METADATA_KEY: json.dumps({**info, "architecture": ARCHITECTURE}, sort_keys=True)}
    atomic_write(path, lambda f: f.write(save(state, metadata=metadata)))


def load_classifier(path: str | Path = GUIDE_WEIGHTS) -> tuple[GuideClassifier, dict]:
    """The guide classifier (eval mode, no parameter gradients) and its training record."""
    path = Path(path)
    if not path.is_file():
        raise GuideError(f"guide classifier weights not found: {path} (train them with "
                         "scripts/train_guide_classifier.py)")
    with safe_open(str(path), framework="pt") as f:
        info = json.loads((f.metadata() or {}).get(_METADATA_KEY, "{}"))
    if info.get("architecture") != ARCHITECTURE:
        raise GuideError(f"{path} holds architecture {info.get('architecture')!r}, expected "
                         f"{ARCHITECTURE!r}")
    net = GuideClassifier()
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False), info
