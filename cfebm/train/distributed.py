"""Data-parallel training over processes started by ``torchrun`` (one process per GPU).

Algorithm 1 is data parallel as it stands: every rank runs the same step on its slice of the
global batch and the gradients are averaged. What makes a run independent of the number of
processes W (so a run resumes on any W whose per-rank batch is whole):

- **Batches**: the global batch B of a stage (``growth.batch_size``, as configured) is split into
  W slices of B/W; rank r takes positions [n + r·B/W, n + (r+1)·B/W) of the one ``BatchStream``,
  where n is the number of images seen by all ranks together. B not divisible by W is refused.
- **Random numbers**: every rank holds the same generator and draws the *global* batch's numbers
  (chain starts, Langevin noise, flips), keeping its own rows (``sampling.Slice``). Chains on
  different ranks therefore get independent noise, the generators of all ranks stay in lockstep,
  and global chain j draws the same numbers for every W. The cost is W× the random numbers of
  one slice, small next to a forward and backward pass of the network.
- **Gradients**: after ``loss.backward()`` one all-reduce averages the gradients, with the step's
  three metrics packed in the same buffer (``Shard.average``). The mean of the ranks' mean
  losses is the global batch's mean loss, so the step equals a one-process step on B images up
  to the order of floating-point sums. No collective runs during sampling: the Langevin chains
  call the plain ``EnergyNet``, whose spectral-norm vectors are the same on every rank because
  the weights are. (This is why there is no ``DistributedDataParallel`` wrapper: its forward
  hooks would broadcast buffers and expect a backward at every call, including each Langevin
  step's, and it needs ``find_unused_parameters`` because the stage leaves blocks unused. Its
  one advantage, overlapping the all-reduce with the backward pass, concerns one backward per
  iteration against T Langevin steps.)
- **Control**: one more all-reduce per iteration (``Shard.agree``) shares the slowest rank's step
  time (so every rank sees the same ``train_seconds`` and time budget) and whether any rank got
  SIGINT/SIGTERM, so all ranks stop after the same iteration and rank 0 writes one checkpoint.

Files (checkpoints, grids, logs) are written by rank 0 alone; the state at the start and after a
divergence rollback is read by rank 0 and broadcast (``checkpoint.load_state``). In-training
evaluations share out their sampling the same way (``Shard.rows``, ``Shard.gather``): every rank
then scores the whole sample set, and rank 0 writes the result.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from cfebm.runtime import resolve_device

# Rank 0 alone writes sample grids and checkpoints while the others wait at the next collective;
# NCCL's default timeout of 10 minutes is short for a slow filesystem.
TIMEOUT = datetime.timedelta(hours=2)


class DistributedError(ValueError):
    """The process layout cannot run this configuration (batch not divisible, bad env)."""


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel run: rank ``rank`` of ``world`` (1: no collectives).

    ``local_rank`` picks the GPU on a node (torchrun's LOCAL_RANK).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files (rank 0)."""
        return self.rank == 0

    def local_batch(self, batch: int) -> int:
        """This rank's share B/W of the global batch B."""
        if batch % self.world:
            raise DistributedError(f"the global batch {batch} does not split over {self.world} "
                                   "processes; choose a process count that divides every "
                                   "growth.batch_size")
        return batch // self.world

    def start(self, batch: int) -> int:
        """Index of this rank's first image within the global batch B."""
        return self.rank * self.local_batch(batch)

    def read_batch(self, stream, n_images: int, batch: int) -> Tensor:
        """This rank's images of the global batch at ``n_images`` of a ``data.BatchStream``."""
        return stream.batch(n_images + self.start(batch), self.local_batch(batch))

    def check(self, batch_sizes: Sequence[int]) -> None:
        """Refuse (one line) a schedule whose global batches do not split over the ranks."""
        for batch in batch_sizes:
            self.local_batch(batch)

    def rows(self, n: int) -> tuple[int, int]:
        """(first row, row count) of this rank when n rows are shared as evenly as possible."""
        base, extra = divmod(n, self.world)
        return self.rank * base + min(self.rank, extra), base + (self.rank < extra)

    def gather(self, x: Tensor, n: int) -> Tensor:
        """All ranks' rows of an n-row batch, each rank holding its ``rows(n)`` in ``x``: the
        whole batch (n, …) in rank order, on every rank."""
        if self.world == 1:
            return x
        size = -(-n // self.world)
        padded = x.new_zeros((size, *x.shape[1:]))
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:Shard(r, self.world).rows(n)[1]] for r, part in enumerate(parts)])

    def average(self, params: Sequence[Tensor], metrics: dict[str, Tensor]) -> dict[str, float]:
        """Average the gradients of ``params`` and the scalar ``metrics`` over all ranks, in one
        all-reduce; returns the averaged metrics as floats.

        Parameters without a gradient (blocks the stage does not use) are left alone: every rank
        is at the same stage, so all ranks agree on which they are.
        """
        if self.world == 1:
            return {k: v.item() for k, v in metrics.items()}
        grads = [p.grad for p in params if p.grad is not None]
        values = torch.stack([v.detach().float() for v in metrics.values()])
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [values.to(grads[0].device)])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return dict(zip(metrics, flat[offset:].tolist()))

    def agree(self, seconds: float, stop: bool) -> tuple[float, bool]:
        """(the slowest rank's ``seconds``, whether any rank wants to ``stop``)."""
        if self.world == 1:
            return seconds, stop
        t = torch.tensor([seconds, float(stop)], dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t[0].item(), bool(t[1].item())

    def broadcast(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (pickled; for states and configs, not per step)."""
        if self.world == 1:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=_comm_device())
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def device(self, name: str = "auto") -> torch.device:
        """The device of this rank for the config's ``train.device``.

        "auto" is CUDA when available, else the CPU. Under torchrun with CUDA, "auto" and "cuda"
        mean this node's GPU ``local_rank``; an explicit "cuda:k" is taken as given.
        """
        return resolve_device(name, self.local_rank, self.world)


def _comm_device() -> torch.device:
    """Where small collective tensors live: this rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def from_env(env: dict[str, str] | None = None) -> Shard:
    """The shard torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK (none set: one process)."""
    env = os.environ if env is None else env
    try:
        rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
        local_rank = int(env.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise DistributedError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({e})") from e
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return Shard(rank, world, local_rank)


@contextlib.contextmanager
def process_group(device: str = "auto", shard: Shard | None = None) -> Iterator[Shard]:
    """Join the process group of ``shard`` (default: torchrun's environment) for the block.

    NCCL when this rank trains on a GPU, gloo on the CPU; MASTER_ADDR and MASTER_PORT come from
    the environment (torchrun sets them). One process (WORLD_SIZE unset or 1) starts nothing.
    The group is destroyed on exit, also after an exception.
    """
    shard = from_env() if shard is None else shard
    if shard.world == 1 or dist.is_initialized():
        yield shard
        return
    on_gpu = shard.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(shard.device(device))
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=shard.rank,
                            world_size=shard.world, timeout=TIMEOUT)
    try:
        yield shard
    finally:
        dist.destroy_process_group()
