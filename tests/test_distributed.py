"""Data-parallel training on 2 CPU processes (gloo), checked against one process.

The equivalence tested: a run on W ranks with per-rank batch B/W equals a run on one process with
the global batch B, up to the order of floating-point sums. It holds because rank r takes global
stream positions and the global batch's random numbers row by row (``sampling.Slice``), so global
chain j sees the same data, flips, starts and Langevin noise for any W; the gradients of the mean
losses are averaged. The networks are compared after a whole tiny run (both stages, the fade's
smooth initialisation, flips, data noise and the EMA), within ``TOLERANCE``. The 2-process run
goes through ``torchrun … -m cfebm.cli train`` as a user starts it; the SIGTERM test spawns its
ranks itself, to signal one of them.
"""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny as base_tiny

from cfebm.files import read
from cfebm.sampling import Slice, draw
from cfebm.train import distributed, evaluation, loop
from cfebm.train.distributed import DistributedError, Shard

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["train.ema_decay=0.9", "data.hflip=true", "train.data_sigma=0.01",
             "train.device=\"cpu\""]


def tiny(*extra):
    return base_tiny(*OVERRIDES, *extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, run_dir: str, extra: list[str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with distributed.process_group("cpu", Shard(rank, world, rank)) as shard:
        loop.run_training(tiny(*extra), run_dir, progress=False, shard=shard)


def start_ranks(world: int, run_dir, extra=()) -> list:
    ctx, port = multiprocessing.get_context("spawn"), _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, str(run_dir), list(extra)))
             for r in range(world)]
    for p in procs:
        p.start()
    return procs


def join(procs, timeout: float = 120) -> None:
    for p in procs:
        p.join(timeout)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0] * len(procs), f"exit codes {codes}"


# Adam's first steps are lr·g/(|g| + ε) ≈ ±lr, so gradient elements near ε that differ in the last
# bits move a weight by a fraction of lr = 1e-3: after the whole tiny run the largest difference
# is about 5e-5. Chains that drew another rank's noise (start 0 on every rank) differ by 0.24.
TOLERANCE = 2e-4


def assert_close_states(a: dict, b: dict, what: str, rtol=0.0, atol=TOLERANCE) -> None:
    for key, value in a.items():
        if isinstance(value, dict):
            assert_close_states(value, b[key], f"{what}.{key}", rtol, atol)
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(value, b[key], rtol=rtol, atol=atol, msg=f"{what}.{key}")


def test_slice_rows_are_the_global_draw_rows():
    g = torch.Generator().manual_seed(3)
    whole = torch.randn(6, 2, generator=g)
    g.manual_seed(3)
    first = draw(torch.randn, (3, 2), Slice(g, 0, 3, 6), "cpu")
    g.manual_seed(3)
    second = draw(torch.randn, (3, 2), Slice(g, 3, 3, 6), "cpu")
    assert torch.equal(torch.cat([first, second]), whole)
    with pytest.raises(ValueError, match="slice of 3"):
        draw(torch.randn, (2, 2), Slice(g, 0, 3, 6), "cpu")


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_the_ranks_rows_are_disjoint_cover_every_row_and_differ_by_at_most_one(world):
    """For every n: concatenated in rank order, the ranks' rows are exactly 0 … n−1 (evaluation
    shares them), and so are their images of a global batch (training reads them)."""
    for n in range(14):
        spans = [Shard(rank, world).rows(n) for rank in range(world)]
        covered = [i for first, count in spans for i in range(first, first + count)]
        assert covered == list(range(n)), (world, n)
        counts = [count for _, count in spans]
        assert max(counts) - min(counts) <= 1
    batch = 6 * world
    images = [i for rank in range(world)
              for i in range(Shard(rank, world).start(batch),
                             Shard(rank, world).start(batch) + Shard(rank, world).local_batch(batch))]
    assert images == list(range(batch))


def test_batch_that_does_not_split_is_refused_in_one_line():
    with pytest.raises(DistributedError, match="global batch 16 does not split over 3"):
        Shard(0, 3).check([16, 16])
    assert Shard(1, 4).start(16) == 4 and Shard(1, 4).local_batch(16) == 4


def test_from_env_reads_torchrun_variables():
    assert distributed.from_env({}) == Shard(0, 1, 0)
    assert distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == \
        Shard(3, 4, 1)
    with pytest.raises(DistributedError, match="not in"):
        distributed.from_env({"RANK": "4", "WORLD_SIZE": "4"})


def torchrun_cli(world: int, run_dir) -> None:
    """``torchrun --nproc-per-node W -m cfebm.cli train``, as the README says to run it."""
    sets = [arg for item in OVERRIDES for arg in ("--set", item)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={world}", "-m", "cfebm.cli", "train", "--preset", "tiny",
           "--run-dir", str(run_dir), "--no-progress", *sets]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("trained to 384 images") == 1, out.stdout  # rank 0 alone reports


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_cuda_without_it_is_refused_in_one_line():
    assert Shard().device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="^device 'cuda:0' requested but CUDA is not "
                                               "available$"):
        Shard().device("cuda:0")


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    torchrun_cli(2, tmp_path / "two")
    one = loop.run_training(tiny(), tmp_path / "one", progress=False)
    two = read(tmp_path / "two" / "checkpoints" / "latest.pt")
    assert two["n_images"] == one.n_images == 384
    assert_close_states(two["model"], one.net.state_dict(), "net")
    assert_close_states(two["ema"], one.ema.state_dict(), "ema")
    assert torch.equal(two["generator"], one.generator.get_state())  # same draws, in lockstep
    assert (tmp_path / "two" / "metrics.jsonl").read_text().strip(), "rank 0 writes metrics"
    assert not list((tmp_path / "two").glob("**/*.tmp"))


@pytest.mark.slow
@pytest.mark.fmnist
def test_in_training_evaluation_shared_by_two_ranks_equals_one_process(tmp_path):
    """Each rank samples its rows of every evaluation batch (40 samples: batches of 16, 16, 8)
    and both score the gathered set; the FID rank 0 writes is the one-process FID."""
    extra = ["data.dataset=\"fashion_mnist\"", "data.limit=256", "eval.every=128",
             "eval.n=40", "growth.fade_images=[0, 16]", "growth.stage_images=[128, 32]"]
    join(start_ranks(2, tmp_path / "two", extra))
    loop.run_training(tiny(*extra), tmp_path / "one", progress=False)

    def evals(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if "eval_fid" in r]

    two, one = evals(tmp_path / "two"), evals(tmp_path / "one")
    assert [r["n_images"] for r in two] == [r["n_images"] for r in one] == [128, 160]
    for a, b in zip(two, one):
        # measured: equal to 1e-8; every rank sampling the first rows instead: 201 against 180
        assert a["eval_fid"] == pytest.approx(b["eval_fid"], rel=1e-5)


@pytest.mark.slow
def test_sigterm_on_one_rank_checkpoints_once_and_resume_on_one_process_continues(tmp_path):
    """SIGTERM to rank 1 alone stops both ranks after the same iteration with one checkpoint; the
    run then continues on one process and ends where an uninterrupted one-process run ends."""
    long = ["growth.stage_images=[128, 4096]"]
    run = tmp_path / "run"
    procs = start_ranks(2, run, long)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGTERM)
    join(procs)
    stopped = read(run / "checkpoints" / "latest.pt")["n_images"]
    assert 32 <= stopped < 128 + 4096 and stopped % 16 == 0
    target = stopped + 64
    resumed = loop.run_training(tiny(*long), run, resume=True, stop_at=target, progress=False)
    straight = loop.run_training(tiny(*long), tmp_path / "straight", stop_at=target,
                                   progress=False)
    assert resumed.n_images == straight.n_images == target
    assert_close_states(resumed.net.state_dict(), straight.net.state_dict(), "net")


@pytest.mark.slow
@pytest.mark.fmnist
def test_an_fid_watch_rollback_happens_on_every_rank_alike(tmp_path):
    """The evaluation at 160 images (β = 1) fails a watch of margin 1e-6 each of the watch's
    three tries: both ranks roll back to the evaluation at 128 each time and read on past the
    failed images, as one process does."""
    extra = ["data.dataset=\"fashion_mnist\"", "data.limit=256", "eval.every=32",
             "eval.n=40", "growth.fade_images=[0, 16]", "growth.stage_images=[128, 32]",
             "eval.fid_watch=1e-6"]
    join(start_ranks(2, tmp_path / "two", extra))
    one = loop.run_training(tiny(*extra), tmp_path / "one", progress=False)

    def rollbacks(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["n_images"], r["rolled_back_to"]) for r in rows if r.get("event") == "fid_watch"]

    assert rollbacks(tmp_path / "two") == rollbacks(tmp_path / "one") == [(160, 128)] * evaluation.RETRIES
    two = read(tmp_path / "two" / "checkpoints" / "latest.pt")
    assert two["n_images"] == one.n_images == 160 and two["data_skip"] == one.data_skip == 32 * evaluation.RETRIES
    assert_close_states(two["model"], one.net.state_dict(), "net")
