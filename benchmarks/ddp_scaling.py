"""Data-parallel scaling: training images/s on W processes against one, at the same global batch.

Launches ``torchrun --nproc-per-node W`` for each W (and 1 process with W threads, the other
way to use W cores), each running training iterations of a preset's stage in memory (no files)
and reporting the median seconds per iteration, the slowest rank's. Efficiency per core is
(images/s on W processes) / (W × images/s on 1 process with 1 thread).

    python benchmarks/ddp_scaling.py --preset cifar10 --stage 0 --world 2 --set 'data.dataset="fake"'
    python benchmarks/ddp_scaling.py --device cuda --preset cifar10 --stage -1 --world 1

(``data.dataset="fake"``: synthetic images of the preset's shape, for a machine without the data.)

Not a test: timings on a machine shared with other jobs mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cfebm.config import apply_overrides, load_preset
from cfebm.data import BatchStream, load_images
from cfebm.growth import stage_starts
from cfebm.train import distributed
from cfebm.train.step import data_batch, new_state, train_step


def worker(args: argparse.Namespace) -> None:
    """One rank: ``args.iterations`` timed training iterations after ``args.warmup``."""
    torch.set_num_threads(args.threads)
    cfg = apply_overrides(load_preset(args.preset), args.set + [f"train.device={args.device!r}"])
    stage = args.stage % len(cfg.growth.resolutions)
    with distributed.process_group(args.device) as shard:
        state = new_state(cfg, shard.device(args.device))
        state.shard = shard
        start = stage_starts(cfg.growth)[stage] + cfg.growth.fade_images[stage] // 2
        images = load_images(cfg.data, split="train", resolution=cfg.model.max_resolution,
                             image_channels=cfg.model.image_channels)
        stream, times = BatchStream(images, cfg.train.seed), []
        for i in range(args.warmup + args.iterations):
            state.n_images = start  # stay at mid-fade of the stage
            t = time.perf_counter()
            train_step(state, data_batch(state, stream))
            if state.device.type == "cuda":
                torch.cuda.synchronize()
            seconds, _ = shard.agree(time.perf_counter() - t, False)  # the slowest rank's
            if i >= args.warmup:
                times.append(seconds)
        if shard.is_main:
            growth = state.growth
            print(json.dumps({"world": shard.world, "threads": args.threads,
                              "resolution": growth.resolution, "batch": growth.batch_size,
                              "sec_per_iter": sorted(times)[len(times) // 2]}), flush=True)


def launch(args: argparse.Namespace, world: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={world}", __file__, "--worker", "--threads", str(threads),
           "--preset", args.preset, "--stage", str(args.stage), "--device", args.device,
           "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
    for item in args.set:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="cifar10")
    p.add_argument("--stage", type=int, default=0, help="stage index (-1: the last)")
    p.add_argument("--world", type=int, default=2, help="processes to compare with one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="threads per process (worker)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    runs = [launch(args, 1, 1), launch(args, args.world, 1)]
    if args.device == "cpu" and args.world > 1:
        runs.append(launch(args, 1, args.world))
    base = runs[0]["batch"] / runs[0]["sec_per_iter"]
    print(f"| processes × threads | resolution | global batch | s/iteration | images/s | "
          f"efficiency per {'GPU' if args.device == 'cuda' else 'core'} |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        rate, units = r["batch"] / r["sec_per_iter"], r["world"] * r["threads"]
        print(f"| {r['world']} × {r['threads']} | {r['resolution']}² | {r['batch']} | "
              f"{r['sec_per_iter']:.3f} | {rate:.1f} | {100 * rate / (units * base):.0f}% |")


if __name__ == "__main__":
    main()
