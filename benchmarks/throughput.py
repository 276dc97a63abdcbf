"""Throughput of Langevin steps and training iterations per stage, with achieved GFLOP/s.

FLOPs are counted by ``torch.utils.flop_counter`` on one real step; the float32 and bfloat16
matrix-multiply peaks are measured in the same run, so the fraction of peak is comparable across
machines. Not a test: run it on a quiet machine and copy the table into RESULTS.md.

    python benchmarks/throughput.py --preset quickstart --batch 64
    python benchmarks/throughput.py --preset cifar10 --batch 64 --precisions fp32
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import torch
from torch.utils.flop_counter import FlopCounterMode

from cfebm.config import apply_overrides, load_preset
from cfebm.growth import Growth, growth_at, stage_starts
from cfebm.model import EnergyNet, frozen
from cfebm.sampling import langevin
from cfebm.training import new_state, train_step


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 4096),
                repeats: int = 3) -> float:
    """Best achieved GFLOP/s of square matrix products in ``dtype`` over a few sizes."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def gradient_flops(net: EnergyNet, x: torch.Tensor, beta: float) -> int:
    """FLOPs of one ∇ₓE evaluation, the cost of a Langevin step.

    Counted on a non-leaf copy of x: the flop counter cannot follow autograd.grad to a leaf.
    """
    def grad():
        with frozen(net):
            x_in = x.clone().requires_grad_(True) * 1.0
            torch.autograd.grad(net(x_in, beta).sum(), x_in)

    return count_flops(grad)


def langevin_step(net: EnergyNet, x: torch.Tensor, beta: float, bf16: bool):
    def energy(y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net(y, beta)

    def step():
        with frozen(net):
            langevin(energy, x, 1, 1.0, 0.01)

    return step


def iteration_flops(state, growth: Growth, x: torch.Tensor) -> int:
    """Langevin chains (fine, plus the coarse chain while fading) and the loss's forward/backward."""
    net = state.net
    total = growth.n_steps * gradient_flops(net, x, growth.beta)
    if growth.fading and state.cfg.sampler.smooth:
        coarse = torch.nn.functional.avg_pool2d(x, 2)
        total += int(growth.n_steps_coarse * (1 - growth.beta)) * gradient_flops(net, coarse, 1.0)

    def loss():
        net(torch.cat([x, x]), growth.beta).mean().backward()

    return total + count_flops(loss)


def bench_stage(cfg, growth: Growth, batch: int, repeats: int) -> dict:
    bf16 = cfg.train.precision == "bf16"
    state = new_state(cfg, torch.device("cpu"))
    state.n_images = stage_starts(cfg.growth)[growth.stage] + growth.images_in_stage
    x = torch.rand(batch, cfg.model.image_channels, growth.resolution, growth.resolution) * 2 - 1
    step_s = timed(langevin_step(state.net, x, growth.beta, bf16), repeats)
    step_flops = gradient_flops(state.net, x, growth.beta)

    def iteration():
        train_step(state, x)
        state.n_images -= batch  # stay at the same point of the schedule

    iter_s = timed(iteration, max(1, repeats // 5))
    iter_flops = iteration_flops(state, growth, x)
    return {"step_s": step_s, "step_gflops": step_flops / step_s / 1e9,
            "iter_s": iter_s, "iter_gflops": iter_flops / iter_s / 1e9,
            "img_per_s": batch / iter_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="quickstart")
    parser.add_argument("--batch", type=int, default=64, help="images per batch at every stage")
    parser.add_argument("--repeats", type=int, default=10, help="timed Langevin steps")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"# {date.today()} · {platform.processor() or platform.machine()} · "
          f"{args.threads} threads · torch {torch.__version__}")
    print(f"# matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    print("| preset | precision | stage | β | Langevin step (ms) | GFLOP/s (% of peak) "
          "| train iteration (s) | GFLOP/s (% of peak) | images/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = load_preset(args.preset)
    for precision in args.precisions.split(","):
        cfg = apply_overrides(base, [f"train.precision={precision}",
                                     f"train.channels_last={str(precision == 'bf16').lower()}"])
        starts = stage_starts(cfg.growth)
        for stage, resolution in enumerate(cfg.growth.resolutions):
            # Mid-fade for grown stages (smooth sampling runs), steady state for the first one.
            offset = cfg.growth.fade_images[stage] // 2 if stage else 0
            growth = growth_at(starts[stage] + offset, cfg.growth)
            r = bench_stage(cfg, growth, args.batch, args.repeats)
            peak = peaks[precision]
            print(f"| {args.preset} | {precision} | {resolution}² | {growth.beta:.2f} | "
                  f"{r['step_s'] * 1e3:.1f} | {r['step_gflops']:.1f} "
                  f"({100 * r['step_gflops'] / peak:.0f}%) | {r['iter_s']:.2f} | "
                  f"{r['iter_gflops']:.1f} ({100 * r['iter_gflops'] / peak:.0f}%) | "
                  f"{r['img_per_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
