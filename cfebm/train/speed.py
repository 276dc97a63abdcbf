"""What a run prints about its speed when it starts: one line of every speed choice it made
(device, precision, memory format, compile, threads) and warnings for the two ways a CPU run
slows many times over (bf16 asked for where it is emulated; other processes busy on the cores).
The choices themselves are made in ``cfebm.runtime``.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from cfebm import runtime
from cfebm.config import Config


def precision_warning(precision: str, device: torch.device) -> str | None:
    """A warning when bf16 is asked for by name on a device that can only emulate it."""
    if precision != "bf16" or runtime.native_bf16(device):
        return None
    return (f"train.precision = 'bf16' on a {device.type} without native bf16: it is emulated and "
            "runs many times slower than fp32; use train.precision=auto (or fp32)")


def busy_cpu_warning(device: torch.device, samples: int = 5) -> str | None:
    """A warning when other processes are keeping this machine's cores busy now, else None.

    Torch's OpenMP threads wait for each other at every operation; when another process holds a
    core, each wait stalls until the scheduler comes back, and a run with as many threads as
    cores slows by 5–100× (docs/notebook/speed.md, "Threads on a busy CPU"). One thread keeps
    going at the speed of the core it gets. "Busy now" is the median number of other runnable
    tasks over ``samples`` reads of /proc/loadavg, 0.1 s apart (the load averages lag by a
    minute and would still count a job that just ended); not checked off Linux.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or not os.path.exists("/proc/loadavg"):
        return None
    cores = len(os.sched_getaffinity(0))
    counts = []
    for k in range(samples):
        time.sleep(0.1 if k else 0.0)
        counts.append(_runnable_tasks() - 1)
    others = statistics.median(counts)
    if others < 1 or others + threads <= cores:
        return None
    return (f"the CPU is busy ({others:g} other running tasks on {cores} cores): {threads} torch "
            "threads will wait on each other and may run many times slower; on a shared machine "
            "set OMP_NUM_THREADS=1")


def _runnable_tasks() -> int:
    """Tasks running or ready to run on this machine now, this process included."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0])


def describe(cfg: Config, device: torch.device) -> str:
    """One line of the speed choices a run makes, printed at its start."""
    t = cfg.train
    precision = runtime.resolved_precision(t.precision, device)
    graphs = ", CUDA graphs" if runtime.cuda_graphs(cfg, device) else ""
    compiled_what = f"Langevin energy and its input gradient{graphs}" if t.compile else "eager"
    asked = f" from {t.precision}" if t.precision != precision else ""
    return (f"speed: device {device}, precision {precision}{asked} "
            f"({'bf16 autocast, fp32 energies' if precision == 'bf16' else 'no autocast'}), "
            f"channels_last {t.channels_last}, compile {t.compile} "
            f"({compiled_what}), "
            f"{torch.get_num_threads()} CPU threads")
