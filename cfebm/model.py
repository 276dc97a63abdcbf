"""The expanding energy network of CF-EBM.

Implements the energy function of Zhao, Xie & Li, "Learning Energy-Based Generative Models via
Coarse-to-Fine Expanding and Sampling", ICLR 2021: Sec. 3.2 (Expand = β·Primal + (1−β)·Fade),
Appendix A.1 (Table 6, Figure 8) and the activation study of A.6.1.

Convention, stated once for the whole package: ``EnergyNet(x)`` returns an energy ``E(x)`` of
shape (N,), with p(x) ∝ exp(−E(x)), so lower energy means more likely. Images are float tensors
in [−1, 1] of shape (N, C, H, W).

The network is built once for every resolution up to ``max_resolution``; which blocks a forward
pass uses is read from the input's side length, so the stage and the resolution can never
disagree. Growing to the next resolution therefore keeps every trained coarse weight, and with
β = 0 the grown network equals the coarse one on the 2×-average-pooled input, exactly.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from cfebm.config import ModelConfig

# ------------------------------------------------------------------------------------------------
# Activations (A.6.1, Table 8, Figure 14)


class Swish(nn.Module):
    """x·σ(x)/scale: scale 1 is the paper's Swish (β = 1); 1.1 is the authors' code."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x) / self.scale if self.scale != 1.0 else F.silu(x)


def make_activation(name: str) -> nn.Module:
    """The activation named in ``ModelConfig.activation`` (see ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


ACTIVATIONS = {
    "swish": Swish,                                  # x·σ(x), the paper's default (A.6.1)
    "swish_proebm": lambda: Swish(1.1),              # x·σ(x)/1.1, the authors' code
    "celu": lambda: nn.CELU(alpha=1.0),              # Table 8: CELU (α = 1)
    "celu_proebm": lambda: nn.CELU(alpha=1.1),       # the authors' code
    "gelu": nn.GELU,                                 # exact erf form
    "leaky_relu": lambda: nn.LeakyReLU(0.2),         # α = 0.2, "the common setting" (Eq. 6)
    "relu": nn.ReLU,
}


# ------------------------------------------------------------------------------------------------
# Building blocks (A.1)


def channels_at(resolution: int, c: int) -> int:
    """Width of the feature map that enters the block at ``resolution`` (Table 6).

    c/4 at 512², c/2 at 256², c at 128², 2c at 64², 4c at 32² and below: c·128/r capped at 4c.
    """
    return max(1, min(4 * c, (c * 128) // resolution))


def _conv(cin: int, cout: int, kernel: int, padding: int, sn: bool) -> nn.Module:
    conv = nn.Conv2d(cin, cout, kernel, padding=padding)
    return spectral_norm(conv) if sn else conv


class EqualConv2d(nn.Conv2d):
    """A convolution with an equalised learning rate (PGGAN; the authors' EqualConv2d).

    The stored weight is N(0, 1) and the bias 0; the forward pass uses weight·√(2/fan_in), so
    Adam's steps move every layer's effective weights by the same relative amount.
    """

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0):
        super().__init__(cin, cout, kernel, padding=padding)
        nn.init.normal_(self.weight)
        nn.init.zeros_(self.bias)
        self.scale = math.sqrt(2.0 / (cin * kernel * kernel))

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.scale, self.bias)


class EqualLinear(nn.Linear):
    """A linear layer with an equalised learning rate: N(0, 1) weights times √(2/fan_in)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout)
        nn.init.normal_(self.weight)
        nn.init.zeros_(self.bias)
        self.scale = math.sqrt(2.0 / cin)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def _plain_conv(cin: int, cout: int, cfg: ModelConfig) -> nn.Module:
    """A 1×1 convolution outside the spectrally normalised path: FromRGB and the skips."""
    return EqualConv2d(cin, cout, 1) if cfg.equalized_lr else nn.Conv2d(cin, cout, 1)


def _linear(cin: int, cout: int, cfg: ModelConfig) -> nn.Module:
    return EqualLinear(cin, cout) if cfg.equalized_lr else nn.Linear(cin, cout)


class Primal(nn.Module):
    """3×3 conv, act, 3×3 conv, 2×2 avg-pool, act; plus an optional 1×1 conv + pool residual.

    Maps (N, cin, r, r) to (N, cout, r/2, r/2). With the residual, the two paths are summed and
    scaled by 1/√2 so the output variance does not grow with depth.
    """

    def __init__(self, cin: int, cout: int, cfg: ModelConfig):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, 1, cfg.spectral_norm)
        self.conv2 = _conv(cout, cout, 3, 1, cfg.spectral_norm)
        self.act = make_activation(cfg.activation)
        self.skip = _plain_conv(cin, cout, cfg) if cfg.residual else None

    def forward(self, h: Tensor) -> Tensor:
        out = self.act(F.avg_pool2d(self.conv2(self.act(self.conv1(h))), 2))
        if self.skip is None:
            return out
        return (out + F.avg_pool2d(self.skip(h), 2)) / math.sqrt(2.0)


class Top(nn.Module):
    """The last block: 3×3 conv, act, 4×4 valid conv to 1×1, act; (N, 4c, 4, 4) -> (N, 4c)."""

    def __init__(self, width: int, cfg: ModelConfig):
        super().__init__()
        self.conv1 = _conv(width, width, 3, 1, cfg.spectral_norm)
        self.conv2 = _conv(width, width, 4, 0, cfg.spectral_norm)
        self.act = make_activation(cfg.activation)

    def forward(self, h: Tensor) -> Tensor:
        return self.act(self.conv2(self.act(self.conv1(h)))).flatten(1)


def _head(width: int, cfg: ModelConfig) -> nn.Module:
    if cfg.head == "linear":
        return _linear(width, 1, cfg)
    # The authors' "--projection" head: an MLP 4c -> 16c -> 1 (REFERENCE §2.2).
    return nn.Sequential(
        _linear(width, 4 * width, cfg), make_activation(cfg.activation), _linear(4 * width, 1, cfg)
    )


# ------------------------------------------------------------------------------------------------
# The energy network


class EnergyNet(nn.Module):
    """Progressive ConvNet energy E(x): (N, C, r, r) in [−1, 1] -> (N,), for r = 8 … max_resolution.

    ``forward(x, beta)`` reads r from ``x.shape[-1]``. At the newest block, with 0 ≤ β < 1,
    Expand(x) = β·Primal_r(FromRGB_r(x)) + (1−β)·Fade(x), where Fade(x) = FromRGB_{r/2}(pool₂(x))
    is the previous stage's input layer on the average-pooled image (Sec. 3.2(i), Figure 8).
    """

    min_resolution = 8

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c, top_width = cfg.channels, channels_at(4, cfg.channels)
        self.resolutions = [2**k for k in range(3, int(math.log2(cfg.max_resolution)) + 1)]
        self.from_rgb = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for r in self.resolutions:
            self.from_rgb[f"{r}x{r}"] = _plain_conv(cfg.image_channels, channels_at(r, c), cfg)
            self.blocks[f"{r}x{r}"] = Primal(channels_at(r, c), channels_at(r // 2, c), cfg)
        self.top = Top(top_width, cfg)
        self.head = _head(top_width, cfg)

    def forward(self, x: Tensor, beta: float | Tensor = 1.0) -> Tensor:
        """Energies (N,) of x (N, C, r, r). ``beta`` may be a 0-dim tensor, which always takes the
        fading path (for ``torch.compile``: one graph for every β; see ``runtime.py``)."""
        return self.energy_from(self.trunk(x, beta))

    def trunk(self, x: Tensor, beta: float | Tensor = 1.0) -> Tensor:
        """The features that enter the top block: (N, 4c, 4, 4) for x (N, C, r, r)."""
        r = self._check_input(x, beta)
        h = self.blocks[f"{r}x{r}"](self.from_rgb[f"{r}x{r}"](x))
        if isinstance(beta, Tensor) or beta < 1.0:
            # Fade(x): the coarse stage's FromRGB on the pooled image, at the block's output size.
            fade = self.from_rgb[f"{r // 2}x{r // 2}"](F.avg_pool2d(x, 2))
            h = beta * h + (1.0 - beta) * fade
        while r > 8:
            r //= 2
            h = self.blocks[f"{r}x{r}"](h)
        return h

    def energy_from(self, h: Tensor) -> Tensor:
        """Energies (N,) of the trunk's features h (N, 4c, 4, 4)."""
        features = self.top(h).float()
        # The head sets the energy's scale: it runs in fp32 even under bf16 autocast.
        with torch.autocast(h.device.type, enabled=False):
            return self.head(features).squeeze(1)

    def _check_input(self, x: Tensor, beta: float | Tensor) -> int:
        if x.ndim != 4 or x.shape[1] != self.cfg.image_channels or x.shape[2] != x.shape[3]:
            raise ValueError(
                f"expected images (N, {self.cfg.image_channels}, r, r), got {tuple(x.shape)}"
            )
        r = x.shape[-1]
        if r not in self.resolutions:
            raise ValueError(f"resolution {r} not supported; this net takes {self.resolutions}")
        if isinstance(beta, Tensor):  # the caller checked its value (reading it would sync)
            beta = 0.0
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        if beta < 1.0 and r == self.resolutions[0]:
            raise ValueError(f"beta < 1 needs a coarser stage below {r}x{r}")
        return r

    def parameters_at(self, resolution: int) -> Iterator[nn.Parameter]:
        """The parameters a fully grown (β = 1) forward pass at ``resolution`` uses."""
        modules: list[nn.Module] = [self.from_rgb[f"{resolution}x{resolution}"], self.top, self.head]
        modules += [self.blocks[f"{r}x{r}"] for r in self.resolutions if r <= resolution]
        for module in modules:
            yield from module.parameters()


def count_parameters(net: EnergyNet, resolution: int | None = None) -> int:
    """Number of parameters: all of them, or those used at ``resolution`` with β = 1."""
    params = net.parameters() if resolution is None else net.parameters_at(resolution)
    return sum(p.numel() for p in params)


def frozen_copy(net: EnergyNet) -> EnergyNet:
    """An independent copy of ``net`` in eval mode without parameter gradients."""
    return copy.deepcopy(net).requires_grad_(False).eval()


@contextlib.contextmanager
def frozen(net: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``net`` for sampling: eval mode, no parameter gradients, cached weights.

    Eval mode freezes the spectral-norm power iteration (as the authors' sampler does), and the
    normalised weights are computed once for the whole chain instead of once per step: on entry,
    eagerly, so that a compiled energy always finds them cached and takes them as inputs (one
    graph per resolution and fade state; under CUDA graphs a weight first computed inside the
    graph would be an output that the next replay overwrites).
    Restores the training mode and ``requires_grad`` flags on exit.
    """
    was_training = net.training
    flags = [(p, p.requires_grad) for p in net.parameters()]
    net.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with parametrize.cached():
            for module in net.modules():
                if parametrize.is_parametrized(module):
                    for name in module.parametrizations:
                        getattr(module, name)  # fills the cache
            yield net
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        net.train(was_training)
