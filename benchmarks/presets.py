"""Size of every preset: parameters, memory of a training iteration at its top stage, schedule.

    python benchmarks/presets.py            # a Markdown table, seconds on a CPU

Memory is computed, not measured: the network runs on fake tensors (no storage, no arithmetic)
and every tensor autograd saves for the backward pass is counted, for the loss's forward pass
over data and samples (2B images, mid-fade at the top resolution: the fading branch too) and
for one Langevin step (B images). Parameters, their gradients, Adam's two moments and the EMA
are added at fp32. Workspace of convolution algorithms and the allocator's slack are not: read
the figures as the floor of what a GPU needs, to within a few tens of percent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfebm.config import Config, load_preset, preset_names
from cfebm.growth import total_images
from cfebm.model import EnergyNet, count_parameters


def saved_bytes(cfg: Config, batch: int, beta: float, needs_param_grads: bool) -> int:
    """Bytes autograd saves for one forward pass of ``batch`` images at the top resolution."""
    m, total = cfg.model, [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with FakeTensorMode():
        net = EnergyNet(m).requires_grad_(needs_param_grads)  # channels-last: the same bytes
        x = torch.empty(batch, m.image_channels, m.max_resolution, m.max_resolution,
                        requires_grad=not needs_param_grads)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16,
                                  enabled=cfg.train.precision == "bf16")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            net(x, beta)
    return total[0]


def memory_gib(cfg: Config) -> float:
    """Training memory at the top stage, GiB (see the module docstring)."""
    batch = cfg.growth.batch_size[-1]
    beta = 0.5 if len(cfg.growth.resolutions) > 1 else 1.0
    params = count_parameters(EnergyNet(cfg.model))
    copies = 4 + (cfg.train.ema_decay > 0) + (cfg.sampler.init == "frozen")  # w, grad, m, v
    activations = max(saved_bytes(cfg, 2 * batch, beta, True),
                      saved_bytes(cfg, batch, beta, False))
    return (activations + 4 * copies * params) / 2**30


def max_gpus(cfg: Config, per_rank: int = 4) -> int:
    """The most processes that divide every stage's batch and leave >= ``per_rank`` images per
    rank at the top stage (smaller per-rank batches starve a GPU)."""
    g = cfg.growth
    return max(w for w in range(1, g.batch_size[-1] // per_rank + 1)
               if all(b % w == 0 for b in g.batch_size))


def main() -> None:
    print("| preset | parameters (all stages) | used at the top resolution | top stage batch | "
          "memory at it (computed) | images | iterations | GPUs (at most) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in preset_names():
        cfg = load_preset(name)
        g, net = cfg.growth, EnergyNet(cfg.model)
        iterations = sum(-(-n // b) for n, b in zip(g.stage_images, g.batch_size))
        print(f"| {name} | {count_parameters(net):,} | "
              f"{count_parameters(net, cfg.model.max_resolution):,} | {g.batch_size[-1]} | "
              f"{memory_gib(cfg):.2f} GiB | {total_images(g):,} | {iterations:,} | "
              f"{max_gpus(cfg)} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
