"""cfebm's files: atomic writes, and reading a training checkpoint without executing code.

A training checkpoint is a plain dict of tensors, numbers and strings written with
``torch.save`` and read with ``torch.load(weights_only=True)``: model, EMA, optimiser, images
seen, random-generator states, recovery record, config and package version. Files are written
to a temporary name in the same folder, flushed to disk and renamed over the target, so a crash
can never leave a half-written file behind. Writing a training state is the trainer's
(``cfebm.train.checkpoint``); reading one is everyone's (``cfebm.load``).
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from cfebm.config import Config, ConfigError, saved_config
from cfebm.model import EnergyNet, frozen_copy

FORMAT = "cfebm-train-state-v1"


class CheckpointError(ValueError):
    """The file is missing, unreadable, or not a cfebm checkpoint."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a temporary file and ``os.replace``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _temp_beside(path: Path) -> Path:
    """A unique name in ``path``'s folder (so os.replace onto ``path`` is atomic); files made
    under it get the umask's permissions rather than mkstemp's owner-only 0600."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``: readers see
    the old file or the whole new one, never part of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def keep_as(path: str | Path, copy: str | Path) -> None:
    """Make ``copy`` the file ``path`` holds now (a hard link where the file system allows one),
    atomically: ``copy`` is its old self or the whole of ``path``, never part of it."""
    path, copy = Path(path), Path(copy)
    tmp = _temp_beside(copy)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links here: copy the bytes
        atomic_write(copy, lambda f: f.write(path.read_bytes()))
        return
    try:
        os.replace(tmp, copy)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted, so that equal tensors and
    metadata give equal bytes (safetensors writes a metadata map in a random order, which
    differs even between two saves in one process). The data bytes are unchanged: their offsets
    are relative to the end of the header. The header is padded with spaces to 8 bytes."""
    size = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + size]), sort_keys=True, separators=(",", ":"))
    header = header.encode() + b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + size:]


def read(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "was not an allowed global" not in str(e):  # not a pickle of tensors at all
            raise CheckpointError(f"cannot read {str(path)!r} as a cfebm checkpoint (not a "
                                  "PyTorch file of weights)") from e
        # weights_only refused to build an object that is not a tensor or a plain container
        raise CheckpointError(f"{str(path)!r} holds objects that are not weights; it was not "
                              "loaded") from e
    except Exception as e:  # torch raises several types for corrupt files
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read {str(path)!r} as a cfebm checkpoint ({reason})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a cfebm training checkpoint")
    return ckpt


def config_of(ckpt: dict[str, Any]) -> Config:
    try:
        return saved_config(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"the checkpoint's config is invalid: {e}") from e


def coarse_copies(like: EnergyNet, weights: list[dict[str, Any]]) -> list[EnergyNet]:
    """Frozen coarse-stage copies (A.8) built like ``like``, one per state dict in ``weights``."""
    nets = []
    for state in weights:
        net = frozen_copy(like)
        net.load_state_dict(state)
        nets.append(net)
    return nets
