"""Rolling back an evaluation that lost what the coarse stage knew (``eval.fid_watch``).

Issue 11's replays (benchmarks/RESULTS.md) found that a fade into a new resolution now and then
jumps: for one or two in-training evaluations (1,600–3,200 images) its samples, pooled to the
stage before's resolution, score 3–15× the FID that stage ended on, and then recover. The images
a fade meets time the jumps (the same batches with other chain noise jump at the same
evaluation; another image order does not), and no optimiser, penalty or learning rate tried
removes them. So the watch treats a jump like a divergence, with fresh images: the run returns
to the state of its last evaluation that passed and reads on in the data stream from where the
failed stretch ended, so no batch is read twice. The learning rate stays: halving it at each
rollback (as a divergence's rollback does) made the jumps rarer, but compounded over 25
rollbacks it froze a model in a failed state, and with a floor a whole 30-minute run scored
FMNIST-FID 81.4 against 57.5 without the watch (benchmarks/RESULTS.md, "The FID watch").

Judged: each evaluation at a stage s ≥ 1 with β > 0 (``TrainingEval`` scores its samples at
r_s and pooled to r_{s−1}), against the median FID of the last ``REFERENCE_EVALS`` kept
evaluations made at r_{s−1} (the stage before's last ones, at its own resolution): a stage at a
constant lr fluctuates too (consecutive evaluations of healthy 8² stages differ by up to 2.5×),
and one evaluation that happened to be low would make every fade look like a loss. Kept: every
evaluation that passes or is not judged, which joins the reference at its own resolution and is
saved as ``checkpoints/watch.pt``, the state a rollback returns to. After ``RETRIES`` rollbacks
in a row the run keeps what it has and goes on (the watch delays a run, never stops it; five
retries instead of three were measured no better).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from cfebm.checkpoint import rolled_back, save_state
from cfebm.training import TrainState

log = logging.getLogger(__name__)

WATCH_FILE = "watch.pt"
REFERENCE_EVALS = 3  # kept evaluations per resolution whose median is the reference
RETRIES = 3  # rollbacks in a row before the watch keeps a failed evaluation


def judge(row: dict, reference: dict[int, list[float]], margin: float) -> str | None:
    """Why the evaluation ``row`` (``TrainingEval``'s) fails the watch, or None if it passes
    or is not judged. ``reference``: resolution -> the last kept FIDs there (median taken);
    ``margin`` > 0."""
    coarse = row.get("eval_coarse_resolution")
    if coarse is None or row["eval_beta"] == 0 or not reference.get(coarse):
        return None
    pooled, level = row["eval_fid_coarse"], statistics.median(reference[coarse])
    if pooled <= margin * level:
        return None
    return (f"FID pooled to {coarse}² {pooled:.1f} is above {margin:g} x {level:.1f}, the "
            f"median of the last {len(reference[coarse])} at {coarse}²")


def watch(state: TrainState, row: dict, run_dir: Path, runlog) -> TrainState:
    """Judge the evaluation ``row`` of ``state``: keep it (and return ``state``) or roll back
    to the last kept one (and return that state)."""
    shard = state.shard
    snapshot = Path(run_dir) / "checkpoints" / WATCH_FILE
    # rank 0's verdict and files for all: on several nodes the others may not see its disk
    reason, saved = shard.broadcast((judge(row, state.watch_reference, state.cfg.eval.fid_watch),
                                     snapshot.exists()) if shard.is_main else None)
    if reason is not None and not saved:
        log.warning("fid_watch: %s, but no evaluation was kept before it to go back to", reason)
    elif reason is not None and state.watch_retries >= RETRIES:
        log.warning("fid_watch: %s after %d rollbacks in a row; keeping it", reason,
                    state.watch_retries)
        runlog.write({"event": "fid_watch_kept", "n_images": state.n_images, "reason": reason})
    elif reason is not None:
        return _rewind(state, snapshot, runlog, row, reason)
    kept = state.watch_reference.setdefault(row["eval_resolution"], [])
    kept.append(row["eval_fid"])
    del kept[:-REFERENCE_EVALS]
    state.watch_retries = 0
    if shard.is_main:
        save_state(state, snapshot)
    return state


def _rewind(state: TrainState, snapshot: Path, runlog, row: dict, reason: str) -> TrainState:
    """The state saved at the last kept evaluation, reading the data on from ``state``'s
    position; its time spent, recoveries and lr scale are ``state``'s. Written over ``latest.pt`` at once, as a divergence's rollback is, so a crash loses
    nothing."""
    shard, failed_at = state.shard, state.n_images
    back = rolled_back(snapshot, state)
    back.lr_scale = state.lr_scale  # a divergence since the snapshot may have halved it
    back.rolled_back_to = None
    back.data_skip = state.data_skip + failed_at - back.n_images
    back.watch_retries = state.watch_retries + 1
    shard.barrier()  # every rank has read the snapshot before rank 0 writes
    if shard.is_main:
        save_state(back, snapshot.with_name("latest.pt"))
    runlog.write({"event": "fid_watch", "n_images": failed_at, "rolled_back_to": back.n_images,
                  "reason": reason, "eval_fid_coarse": row["eval_fid_coarse"],
                  "retry": back.watch_retries, "data_skip": back.data_skip})
    log.warning("fid_watch at %d images (%s); rolled back to %d, reading on at data position %d",
                failed_at, reason, back.n_images, failed_at + state.data_skip)
    return back
