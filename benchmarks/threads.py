"""Training iterations on a CPU that other processes keep busy: 1 torch thread against all cores.

    python benchmarks/threads.py [--preset fmnist32] [--iterations 6] [--burners 0 1 2]

For each number of *burners* (processes that each keep one core busy with a one-thread matrix
multiply loop, standing in for another user's job) and each thread count (1, and every core),
a fresh process times Algorithm 1 iterations of the preset's first two stages (the 8² stage,
and the 16² stage mid-fade) and reports the median. Prints a Markdown table for
benchmarks/RESULTS.md, section "Threads on a busy CPU". The other rows of that section explain
why `cfebm train` warns when it starts on a busy machine (``cfebm.train.speed.busy_cpu_warning``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

import torch


def burn(stop: multiprocessing.Event) -> None:
    """Keep one core busy until ``stop`` is set."""
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def time_iterations(preset: str, iterations: int) -> dict[str, float]:
    """Median seconds of one training iteration at 8² and at 16² mid-fade (this process)."""
    from cfebm.config import load_preset
    from cfebm.data import BatchStream, load_images
    from cfebm.growth import stage_starts
    from cfebm.train.step import data_batch, new_state, train_step

    cfg = load_preset(preset)
    images = load_images(cfg.data, split="train", resolution=cfg.model.max_resolution,
                         image_channels=cfg.model.image_channels)
    stream = BatchStream(images, 0)
    state = new_state(cfg)
    result = {}
    fade_middle = stage_starts(cfg.growth)[1] + cfg.growth.fade_images[1] // 2
    for name, n_images in (("8x8", 0), ("16x16 fading", fade_middle)):
        state.n_images, times = n_images, []
        for i in range(iterations + 2):
            x = data_batch(state, stream)
            start = time.perf_counter()
            train_step(state, x)
            if i >= 2:   # the first iterations warm the allocator and oneDNN's kernels
                times.append(time.perf_counter() - start)
            state.n_images = n_images
        result[name] = statistics.median(times)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fmnist32")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--burners", type=int, nargs="+", default=[0, 1])
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(time_iterations(args.preset, args.iterations)))
        return
    cores = len(os.sched_getaffinity(0))
    print("| other busy processes | torch threads | 8² iteration (s) | 16² iteration, fading (s) |")
    print("|---|---|---|---|")
    for burners in args.burners:
        stop = multiprocessing.Event()
        procs = [multiprocessing.Process(target=burn, args=(stop,)) for _ in range(burners)]
        for proc in procs:
            proc.start()
        for threads in sorted({1, cores}):
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            out = subprocess.run([sys.executable, __file__, "--one", "--preset", args.preset,
                                  "--iterations", str(args.iterations)],
                                 env=env, capture_output=True, text=True, check=True)
            t = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {burners} | {threads} | {t['8x8']:.3f} | {t['16x16 fading']:.3f} |",
                  flush=True)
        stop.set()
        for proc in procs:
            proc.join()


if __name__ == "__main__":
    main()
