"""Running the method on a machine: the device, bf16 autocast, ``torch.compile`` of the
Langevin energy, and seeds derived for a purpose.

What is compiled is the network the Langevin chains call (T forward and input-gradient passes
per iteration, against one forward and backward for the loss, which stays eager). The input
gradient ∇ₓE is compiled with it: AOTAutograd traces the backward graph of the compiled forward.

β changes at every iteration of a fade. As a Python float it is a graph constant (or, with
dynamo's automatic dynamic floats, one more compilation after the first change); passed as a
0-dim tensor it is a graph input, so one graph serves every β of every fade at a resolution.
β = 1 (a grown stage) keeps the float and its own graph without the fading branch.
``model.frozen`` fills the spectral-norm weight cache before a chain's first call, so the
normalised weights are always graph inputs: two graphs per resolution, however many β values a
fade takes (tests/test_speed.py counts them).

fp16 is not offered: the Langevin input gradient of a spectrally normalised net in fp16 needs
loss scaling that no one has shown safe here; bf16 autocast (``train.precision``) is the
reduced-precision choice. ``"auto"`` takes it only on a CPU whose oneDNN build runs bf16
kernels (AVX-512 and newer), where it is 1.7–2.9× faster per Langevin step. On an AVX2-only CPU
bf16 is emulated and a training iteration ran 10–15× slower than in fp32
(docs/notebook/budgets.md, "A CPU without AVX-512"). On CUDA ``"auto"`` is fp32, with cuDNN's TF32 convolutions: on an H200
at the presets' batches bf16 autocast was slower, since these small networks leave the GPU
waiting on kernel launches and autocast adds casts (a `cifar10` training iteration at 32² took
0.29 s in bf16 against 0.22 s; the `celebahq256` schedule 17.5 h against 14.0 h;
docs/notebook/scale.md, "Scale on one H200").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging

import torch
from torch import Tensor

from cfebm.config import Config
from cfebm.model import EnergyNet

log = logging.getLogger(__name__)


class CompiledEnergy:
    """``net(x, β)`` through ``torch.compile``, with β < 1 handed over as a 0-dim tensor.

    Shares ``net``'s parameters and modes (wrap it in ``model.frozen`` as usual); ``cfg`` is
    ``net.cfg``, so it stands in for the network wherever a sampler takes one.
    """

    def __init__(self, net: EnergyNet, backend: str = "inductor", mode: str | None = None):
        self.net, self.cfg, self.mode = net, net.cfg, mode
        # Two graphs per resolution (module docstring), four with room to spare. Dynamo's
        # default limit of 8 per function would send the fifth resolution of a run back to
        # eager mode with a warning.
        limit = 4 * len(net.resolutions) + 4
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, limit)
        # mode: torch.compile's ("reduce-overhead" adds CUDA graphs; measured in benchmarks/)
        self.compiled = torch.compile(net, backend=backend, dynamic=False, mode=mode)
        self._beta: tuple[float, torch.device, Tensor] | None = None

    def __call__(self, x: Tensor, beta: float = 1.0) -> Tensor:
        if beta >= 1.0:
            return self._run(x, 1.0)
        if not 0.0 <= beta:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        if self._beta is None or self._beta[:2] != (beta, x.device):  # once per chain, not step
            self._beta = (beta, x.device, torch.tensor(beta, device=x.device))
        return self._run(x, self._beta[2])

    def _run(self, x: Tensor, beta: float | Tensor) -> Tensor:
        """The compiled net; if compiling fails (inductor on a CPU needs a C++ compiler), the
        eager net from then on, with one warning: the same energies, only slower. An error of
        the net itself is raised again by the eager call."""
        try:
            return self.compiled(x, beta)
        except Exception as error:  # any backend failure; the eager call re-raises real ones
            if self.compiled is self.net:
                raise
            # dynamo's message wraps the backend's, then adds advice on its own logs
            reason = " ".join(str(error).split()).split(" Set TORCHDYNAMO_VERBOSE")[0][:300]
            log.warning("torch.compile failed (%s: %s); the Langevin energy runs eagerly",
                        type(error).__name__, reason)
            self.compiled = self.net
            return self.net(x, beta)


def compiled_energy(net: EnergyNet, cfg: Config, device: torch.device) -> CompiledEnergy | None:
    """The Langevin energy of a run as ``train.compile`` and ``train.cuda_graphs`` ask: None
    (eager), compiled, or compiled and replayed as CUDA graphs (on a GPU only; a CPU has none).
    Graphs cure a GPU that waits on kernel launches: a `cifar10` training iteration on an H200
    took 0.10 s against 0.18 s eager at 32² (docs/notebook/scale.md, "Scale on one H200")."""
    if not cfg.train.compile:
        return None
    return CompiledEnergy(net, mode="reduce-overhead" if cuda_graphs(cfg, device) else None)


def cuda_graphs(cfg: Config, device: torch.device) -> bool:
    """Whether the run's compiled energy replays CUDA graphs: asked for, and on a GPU."""
    return cfg.train.compile and cfg.train.cuda_graphs and device.type == "cuda"


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 convolutions and matrix products in hardware (asked once
    per device: ``autocast`` calls it at every energy evaluation of a Langevin chain)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolved_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` on ``device``: "fp32" or "bf16"; "auto" is bf16 on a CPU that runs it
    natively and fp32 elsewhere, CUDA included (measured faster there; module docstring)."""
    if precision == "auto":
        return "bf16" if device.type == "cpu" and native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``precision`` resolves to bf16 on ``device``, else nothing."""
    if resolved_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_device(name: str = "auto", local_rank: int = 0, world: int = 1) -> torch.device:
    """The device named in ``train.device`` for one process.

    "auto" is CUDA when available, else the CPU. In a data-parallel run with CUDA, "auto" and
    "cuda" mean this node's GPU ``local_rank``; an explicit "cuda:k" is taken as given.
    """
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank) if world > 1 else torch.device("cuda")
    if name == "auto":
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def derived_seed(purpose: str, *numbers: int) -> int:
    """A 63-bit seed for ``purpose`` from ``numbers`` (a run's seed, an epoch, ...): streams
    for different purposes from one user seed share no numbers, and each is reproducible."""
    key = ":".join([f"cfebm-{purpose}", *map(str, numbers)])
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
