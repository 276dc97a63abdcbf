"""Writing a benchmark's result as JSON with the facts that make it a measurement: the machine,
torch's thread count and the date (benchmarks/RESULTS.md gives each number its machine and date).

    from record import write_report   # a sibling of the benchmark scripts
    write_report(args.json, {"model": ..., "rows": rows})
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch


def write_report(path: str | Path, report: dict) -> None:
    """``report`` plus ``threads``, ``machine`` and ``date``, as indented JSON at ``path``."""
    out = {**report, "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(),
           "date": time.strftime("%Y-%m-%d")}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n")
