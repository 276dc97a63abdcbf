"""Writing a benchmark's result as JSON with the facts that make it a measurement: the machine,
torch's thread count and the date (benchmarks/RESULTS.md gives each number its machine and date).

    from record import write_report   # a sibling of the benchmark scripts
    write_report(args.json, {"model": ..., "rows": rows})
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_facts(cpuinfo: str | None = None) -> dict:
    """The CPU model, its kind in RESULTS.md's words and the vector flags that decide speed,
    from ``cpuinfo`` (the text of /proc/cpuinfo; read here when None)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    if "amx_bf16" in flags:
        kind = "AMX (Intel Xeon kind)"
    elif "avx512_bf16" in flags:
        kind = "AVX-512 with bf16 (EPYC-512 kind)"
    elif "avx512f" in flags:
        kind = "AVX-512 without bf16"
    else:
        kind = "AVX2 only (EPYC-AVX2 kind)" if "avx2" in flags else "other"
    return {"cpu": fields.get("model name", platform.processor() or platform.machine()),
            "kind": kind, "flags": [f for f in CPU_FLAGS if f in flags]}


def machine() -> str:
    """This machine in one line: the CPU model and its kind."""
    facts = cpu_facts()
    return f"{facts['cpu']}, {facts['kind']}"


def timed(draw: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    """``draw()`` (a batch of N images) and the seconds per image it took."""
    tic = time.perf_counter()
    x = draw()
    return x, (time.perf_counter() - tic) / len(x)


def write_report(path: str | Path, report: dict) -> None:
    """``report`` plus ``threads``, ``machine`` and ``date``, as indented JSON at ``path``."""
    out = {**report, "threads": torch.get_num_threads(), "machine": machine(),
           "date": time.strftime("%Y-%m-%d")}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n")
