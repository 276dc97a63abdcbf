"""Checkpoints: atomic writes, loading that never executes code from the file.

A training checkpoint is a plain dict of tensors, numbers and strings written with
``torch.save`` and read with ``torch.load(weights_only=True)``:
model, EMA, optimiser, images seen, random-generator states, recovery record, config and
package version. Files are written to a temporary name in the same folder, flushed to disk and
renamed over the target, so a crash can never leave a half-written checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from cfebm import __version__
from cfebm.config import Config, ConfigError, saved_config, to_dict
from cfebm.distributed import Shard
from cfebm.divergence import LossWatch
from cfebm.model import EnergyNet, frozen_copy
from cfebm.training import TrainState, match_config, new_state, resolve_device

FORMAT = "cfebm-train-state-v1"

log = logging.getLogger(__name__)


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


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted, so that equal tensors and
    metadata give equal bytes (safetensors writes a metadata map in a random order, which
    differs even between two saves in one process). The data bytes are unchanged: their offsets
    are relative to the end of the header. The header is padded with spaces to 8 bytes."""
    size = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + size]), sort_keys=True, separators=(",", ":"))
    header = header.encode() + b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + size:]


def state_dict(state: TrainState) -> dict[str, Any]:
    """Everything needed to continue ``state`` exactly, as a weights-only-loadable dict."""
    return {
        "format": FORMAT,
        "version": __version__,
        "config": to_dict(state.cfg),
        "n_images": state.n_images,
        "recoveries": state.recoveries,
        "lr_scale": state.lr_scale,
        "rolled_back_to": state.rolled_back_to,
        "loss_watch": state.watch.state(),
        "data_skip": state.data_skip,
        "fid_watch": {"reference": {str(r): fids for r, fids in state.watch_reference.items()},
                      "retries": state.watch_retries},
        "train_seconds": state.train_seconds,
        "model": state.net.state_dict(),
        "ema": None if state.ema is None else state.ema.state_dict(),
        "coarse": [net.state_dict() for net in state.coarse],
        "optimizer": state.optimizer.state_dict(),
        "generator": state.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def save_state(state: TrainState, path: str | Path) -> None:
    atomic_save(state_dict(state), path)


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


def load_state(path: str | Path, device: str | torch.device | None = None,
               shard: Shard | None = None) -> TrainState:
    """Rebuild the ``TrainState`` saved at ``path`` (on ``device``, default: the config's).

    In a data-parallel run (``shard``), rank 0 reads the file and sends it to the other ranks,
    so only rank 0 needs to see it and all ranks start from the same bytes.
    """
    shard = Shard() if shard is None else shard
    ckpt = shard.broadcast(read(path) if shard.is_main else None)
    cfg = config_of(ckpt)
    device = resolve_device(cfg.train.device) if device is None else torch.device(device)
    state = new_state(cfg, device)
    state.net.load_state_dict(ckpt["model"])
    if state.ema is not None:
        state.ema.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    restore_generator(state.generator, ckpt["generator"])
    torch.set_rng_state(ckpt["torch_rng"])
    state.n_images = int(ckpt["n_images"])
    state.recoveries = int(ckpt["recoveries"])
    state.lr_scale = float(ckpt["lr_scale"])
    state.rolled_back_to = ckpt.get("rolled_back_to")
    state.watch = LossWatch(cfg.run.spike_factor, [float(v) for v in ckpt.get("loss_watch", [])])
    state.train_seconds = float(ckpt.get("train_seconds", 0.0))
    state.data_skip = int(ckpt.get("data_skip", 0))
    fid_watch = ckpt.get("fid_watch", {})
    state.watch_reference = {int(r): [float(fid) for fid in fids]
                             for r, fids in fid_watch.get("reference", {}).items()}
    state.watch_retries = int(fid_watch.get("retries", 0))
    state.coarse = coarse_copies(state.sampling_net(), ckpt.get("coarse", []))
    state.shard = shard
    return state


def rolled_back(path: str | Path, current: TrainState) -> TrainState:
    """The state saved at ``path``, as a rollback of ``current`` continues from it: with
    ``current``'s config (``match_config``), time spent and recoveries (they only grow).

    A compiled run drops its compiled graphs first: the discarded network's would stay in
    dynamo's cache, which counts graphs per code object (every network's ``forward``), so a
    few rollbacks reached its limit and the Langevin energy ran eagerly from then on, 1.4×
    slower at 32² (benchmarks/RESULTS.md, "The FID watch in the `fmnist32` preset"). The
    rolled-back network compiles its graphs again as it meets them, from inductor's on-disk
    cache."""
    if current.compiled is not None:
        torch._dynamo.reset()
    back = load_state(path, current.device, current.shard)
    back.cfg = current.cfg
    match_config(back)
    back.train_seconds, back.recoveries = current.train_seconds, current.recoveries
    return back


def restore_generator(generator: torch.Generator, saved: torch.Tensor) -> None:
    """Set ``generator`` to the ``saved`` state, or, when that state comes from another device
    type (a CUDA generator's state is 16 bytes, a CPU one's 5,056), seed it from the state's bytes:
    a run moved between GPU and CPU continues, deterministically, but not bit for bit."""
    try:
        generator.set_state(saved)
    except RuntimeError:
        digest = hashlib.sha256(saved.cpu().numpy().tobytes()).digest()
        generator.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        log.warning("the checkpoint's sampler generator was saved on another device type than "
                    "%s; its chains continue from a seed derived from it (not bit for bit)",
                    generator.device.type)


def coarse_copies(like: EnergyNet, weights: list[dict[str, Any]]) -> list[EnergyNet]:
    """Frozen coarse-stage copies (A.8) built like ``like``, one per state dict in ``weights``."""
    nets = []
    for state in weights:
        net = frozen_copy(like)
        net.load_state_dict(state)
        nets.append(net)
    return nets
