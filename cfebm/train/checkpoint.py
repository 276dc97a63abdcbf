"""Training checkpoints: the whole state of a run, saved and loaded to continue it exactly.

A training checkpoint is a plain dict of tensors, numbers and strings written with
``torch.save`` and read with ``torch.load(weights_only=True)``:
model, EMA, optimiser, images seen, random-generator states, recovery record, config and
package version. Files are written to a temporary name in the same folder, flushed to disk and
renamed over the target, so a crash can never leave a half-written checkpoint behind.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from cfebm import __version__
from cfebm.config import to_dict
from cfebm.files import FORMAT, atomic_save, coarse_copies, config_of, read
from cfebm.runtime import resolve_device
from cfebm.train.distributed import Shard
from cfebm.train.recovery import LossWatch
from cfebm.train.step import TrainState, match_config, new_state

log = logging.getLogger(__name__)


def state_dict(state: TrainState) -> dict[str, Any]:
    """Everything needed to continue ``state`` exactly, as a weights-only-loadable dict."""
    return {
        "format": FORMAT,
        "version": __version__,
        "config": to_dict(state.cfg),
        "n_images": state.n_images,
        "recoveries": state.record.recoveries,
        "lr_scale": state.lr_scale,
        "rolled_back_to": state.record.rolled_back_to,
        "loss_watch": state.record.loss_watch.state(),
        "data_skip": state.data_skip,
        "fid_watch": {"reference": {str(r): fids
                                    for r, fids in state.record.watch_reference.items()},
                      "retries": state.record.watch_retries},
        "train_seconds": state.record.train_seconds,
        "model": state.net.state_dict(),
        "ema": None if state.ema is None else state.ema.state_dict(),
        "coarse": [net.state_dict() for net in state.coarse],
        "optimizer": state.optimizer.state_dict(),
        "generator": state.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def save_state(state: TrainState, path: str | Path) -> None:
    atomic_save(state_dict(state), path)


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
    state.record.recoveries = int(ckpt["recoveries"])
    state.lr_scale = float(ckpt["lr_scale"])
    state.record.rolled_back_to = ckpt.get("rolled_back_to")
    state.record.loss_watch = LossWatch(cfg.run.spike_factor,
                                        [float(v) for v in ckpt.get("loss_watch", [])])
    state.record.train_seconds = float(ckpt.get("train_seconds", 0.0))
    state.data_skip = int(ckpt.get("data_skip", 0))
    fid_watch = ckpt.get("fid_watch", {})
    state.record.watch_reference = {int(r): [float(fid) for fid in fids]
                             for r, fids in fid_watch.get("reference", {}).items()}
    state.record.watch_retries = int(fid_watch.get("retries", 0))
    state.coarse = coarse_copies(state.sampling_net(), ckpt.get("coarse", []))
    state.shard = shard
    return state


def rolled_back(path: str | Path, current: TrainState) -> TrainState:
    """The state saved at ``path``, as a rollback of ``current`` continues from it: with
    ``current``'s config (``match_config``), time spent and recoveries (they only grow).

    A compiled run drops its compiled graphs first: the discarded network's would stay in
    dynamo's cache, which counts graphs per code object (every network's ``forward``), so a
    few rollbacks reached its limit and the Langevin energy ran eagerly from then on, 1.4×
    slower at 32² (docs/notebook/fades.md, "The FID watch in the `fmnist32` preset"). The
    rolled-back network compiles its graphs again as it meets them, from inductor's on-disk
    cache."""
    if current.compiled is not None:
        torch._dynamo.reset()
    back = load_state(path, current.device, current.shard)
    back.cfg = current.cfg
    match_config(back)
    back.record.train_seconds = current.record.train_seconds
    back.record.recoveries = current.record.recoveries
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


