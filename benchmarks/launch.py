"""Run benchmark variants as subprocesses, a few at a time (shared by quality.py, recipe_sweep.py).

Each job is a command line and a log file. Every subprocess runs with one torch thread, so that
``parallel`` jobs share the cores evenly instead of fighting over them.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def run_parallel(jobs: list[tuple[list[str], Path]], parallel: int, poll_seconds: float = 2) -> None:
    """Run ``jobs`` (command, log path) ``parallel`` at a time, in order; return when all end."""
    queue = list(jobs)
    running: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while queue or running:
        while queue and len(running) < parallel:
            cmd, log_path = queue.pop(0)
            with Path(log_path).open("w") as log:
                running.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(poll_seconds)
        running = [p for p in running if p.poll() is None]
