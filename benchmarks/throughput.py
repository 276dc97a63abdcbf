"""Throughput of Langevin steps and training iterations per stage, with achieved GFLOP/s.

FLOPs are counted by ``torch.utils.flop_counter`` on one real step; the float32 and bfloat16
matrix-multiply peaks are measured in the same run, so the fraction of peak is comparable across
machines. Not a test: run it on a quiet machine and copy the table into RESULTS.md.

Modes: ``fp32``; ``bf16`` (bf16 autocast and channels-last); ``compile`` (fp32, the Langevin
energy compiled, ``train.compile``); ``bf16-compile`` (both); ``graphs`` and ``bf16-graphs``
(``train.cuda_graphs``: CUDA graphs on a GPU, plain compile on a CPU). Each row's peak is its precision's.
On CUDA the fp32 peak is true fp32 while cuDNN runs fp32 convolutions in TF32 by default
(``torch.backends.cudnn.allow_tf32``), so fp32 rows may exceed 100% of it.

    python benchmarks/throughput.py --preset quickstart --batch 64
    python benchmarks/throughput.py --preset cifar10 --batch 64 --modes fp32,bf16,compile
    python benchmarks/throughput.py --device cuda --preset celebahq256 --stages -1 --modes bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import torch
from record import machine
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from cfebm.chains import sampling_schedule
from cfebm.config import apply_overrides, load_preset
from cfebm.data import downsample
from cfebm.growth import Growth, growth_at, stage_starts
from cfebm.model import EnergyNet, frozen
from cfebm.runtime import native_bf16
from cfebm.sampling import energy_of, langevin
from cfebm.train.step import new_state, train_step

MODES = {  # mode: config overrides
    "fp32": ["train.precision=fp32", "train.channels_last=false", "train.compile=false"],
    "fp32-cl": ["train.precision=fp32", "train.channels_last=true", "train.compile=false"],
    "bf16": ["train.precision=bf16", "train.channels_last=true", "train.compile=false"],
    "compile": ["train.precision=fp32", "train.channels_last=false", "train.compile=true"],
    "compile-cl": ["train.precision=fp32", "train.channels_last=true", "train.compile=true"],
    "bf16-compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
    "graphs": ["train.precision=fp32", "train.channels_last=false", "train.compile=true",
               "train.cuda_graphs=true"],
    "bf16-graphs": ["train.precision=bf16", "train.channels_last=true", "train.compile=true",
                    "train.cuda_graphs=true"],
}
COLUMNS = ("preset", "mode", "stage", "β", "Langevin step (ms)", "images×steps/s",
           "GFLOP/s (% of peak)", "train iteration (s)", "train it/s", "GFLOP/s (% of peak)",
           "images/s", "peak memory (GiB)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """Best achieved GFLOP/s of square matrix products in ``dtype`` over a few sizes (only the
    smallest where bf16 is emulated: a 4096² product there takes minutes)."""
    best = 0.0
    sizes = (1024, 2048, 4096) if device.type == "cpu" else (4096, 8192, 16384)
    if dtype == torch.bfloat16 and not native_bf16(device):
        sizes = sizes[:1]
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def timed(fn, repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls (compilation happens there)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
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


def langevin_step(state, x: torch.Tensor, beta: float):
    """One Langevin step as training runs it: autocast, channels-last, the compiled energy."""
    energy = energy_of(state.compiled or state.net, beta, state.autocast)

    def step():
        with frozen(state.net):
            langevin(energy, x, 1, 1.0, 0.01)

    return step


def iteration_flops(state, growth: Growth, x: torch.Tensor) -> int:
    """Langevin chains (fine, plus the coarse chain while fading, or every scale of a cascade)
    and the loss's forward/backward."""
    net, schedule = state.net, sampling_schedule(growth, state.cfg.sampler)
    if len(schedule) > 1:  # A.8 cascade: T steps at every scale, β only at the last
        total = sum(t * gradient_flops(net, downsample(x, r), growth.beta if r == x.shape[-1]
                                       else 1.0) for r, t in schedule)
    else:
        total = growth.n_steps * gradient_flops(net, x, growth.beta)
    if growth.fading and state.cfg.sampler.smooth and len(schedule) == 1:
        coarse = torch.nn.functional.avg_pool2d(x, 2)
        total += int(growth.n_steps_coarse * (1 - growth.beta)) * gradient_flops(net, coarse, 1.0)

    def loss():
        net(torch.cat([x, x]), growth.beta).mean().backward()

    return total + count_flops(loss)


def bench_stage(cfg, growth: Growth, batch: int, repeats: int, device: torch.device) -> dict:
    state = new_state(cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    state.n_images = stage_starts(cfg.growth)[growth.stage] + growth.images_in_stage
    x = torch.rand(batch, cfg.model.image_channels, growth.resolution, growth.resolution,
                   device=device) * 2 - 1
    warmup = 3 if cfg.train.compile else 1  # the chain's first call and the later ones compile
    step_s = timed(langevin_step(state, x, growth.beta), repeats, device, warmup)
    step_flops = gradient_flops(state.net, x, growth.beta)

    def iteration():
        train_step(state, x)
        state.n_images -= batch  # stay at the same point of the schedule

    iter_s = timed(iteration, max(1, repeats // 5), device)
    # The most the device held at once, chains and the loss's backward included (CUDA only).
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    iter_flops = iteration_flops(state, growth, x)
    return {"step_s": step_s, "step_gflops": step_flops / step_s / 1e9,
            "chain_img_steps_per_s": batch / step_s,
            "iter_s": iter_s, "iter_gflops": iter_flops / iter_s / 1e9,
            "img_per_s": batch / iter_s, "peak_gib": peak_gib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="quickstart")
    parser.add_argument("--batch", type=int, default=64,
                        help="images per batch at every stage; 0: the preset's own batches, and "
                        "the whole schedule's time estimated from them")
    parser.add_argument("--repeats", type=int, default=10, help="timed Langevin steps")
    parser.add_argument("--modes", default="fp32,bf16", help=f"comma-separated, of {list(MODES)}")
    parser.add_argument("--stages", default="all",
                        help="'all' or comma-separated stage indices (-1: the last)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value of the preset (repeatable)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    peaks = {"fp32": matmul_peak(torch.float32, device),
             "bf16": matmul_peak(torch.bfloat16, device)}
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{machine()} · {args.threads} threads")
    print(f"# {date.today()} · {where} · torch {torch.__version__}")
    print(f"# matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    base = apply_overrides(load_preset(args.preset), args.set)
    n_stages = len(base.growth.resolutions)
    stages = (range(n_stages) if args.stages == "all"
              else sorted({int(k) % n_stages for k in args.stages.split(",")}))
    for mode in args.modes.split(","):
        cfg = apply_overrides(base, MODES[mode] + [f"train.device={args.device!r}"])
        starts, hours = stage_starts(cfg.growth), 0.0
        for stage in stages:
            # Mid-fade for grown stages (smooth sampling runs), steady state for the first one.
            offset = cfg.growth.fade_images[stage] // 2 if stage else 0
            growth = growth_at(starts[stage] + offset, cfg.growth)
            batch = args.batch or growth.batch_size
            r = bench_stage(cfg, growth, batch, args.repeats, device)
            hours += cfg.growth.stage_images[stage] / batch * r["iter_s"] / 3600
            peak = peaks[cfg.train.precision]
            print(f"| {args.preset} | {mode} | {growth.resolution}² | {growth.beta:.2f} | "
                  f"{r['step_s'] * 1e3:.1f} | {r['chain_img_steps_per_s']:.0f} | "
                  f"{r['step_gflops']:.1f} ({100 * r['step_gflops'] / peak:.0f}%) | "
                  f"{r['iter_s']:.2f} | {1 / r['iter_s']:.2f} | "
                  f"{r['iter_gflops']:.1f} ({100 * r['iter_gflops'] / peak:.0f}%) | "
                  f"{r['img_per_s']:.0f} | "
                  f"{'–' if r['peak_gib'] is None else format(r['peak_gib'], '.2f')} |", flush=True)
        if args.batch == 0 and len(stages) == n_stages:
            print(f"# {args.preset} {mode}: the whole schedule takes about {hours:.1f} h on one "
                  "device at these per-iteration times (mid-fade of each stage)", flush=True)


if __name__ == "__main__":
    main()
