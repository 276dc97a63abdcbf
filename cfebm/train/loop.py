"""A training run on disk: resume, logs, sample grids, plots, checkpoints and recovery.

Layout of a run directory::

    config.json                 the resolved configuration
    metrics.jsonl               one JSON object per log interval (and per recovery event)
    checkpoints/latest.pt       the newest training state (atomic; ``--resume`` reads it)
    checkpoints/previous.pt     the one before it (a recovery's second line: ``_recover``)
    checkpoints/stage<k>-<r>x<r>.pt   the state at the end of each stage
    checkpoints/best.pt         the state with the lowest in-training FID (``eval.every``;
                                ``evaluation.TrainingEval`` writes its ``"eval"`` entry,
                                ``best_fid`` reads it)
    checkpoints/watch.pt        the last evaluation the FID watch kept (``evaluation.watch``)
    samples/<kimg>-<r>x<r>.png  sample grids, at every stage change and periodically
    training.png                loss and energies against images seen
    tb/                         TensorBoard events, when tensorboard is installed

SIGINT and SIGTERM stop the run at the next iteration boundary after writing a checkpoint, so an
interrupted run continues exactly with ``--resume``.

Under torchrun (``cfebm.train.distributed``) every rank runs this loop on its slice of each batch; rank 0
alone writes the files above, and a signal on any rank stops all of them after the same iteration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cfebm.chains import as_trained
from cfebm.config import Config, to_dict
from cfebm.data import BatchStream
from cfebm.files import atomic_save, keep_as
from cfebm.growth import Growth, crossed, total_images
from cfebm.model import frozen
from cfebm.train.checkpoint import load_state, rolled_back, save_state, state_dict
from cfebm.train.data import grid_source, source_batch, training_data
from cfebm.train.distributed import Shard
from cfebm.train.evaluation import TrainingEval, best_fid, evaluates, watch
from cfebm.train.recovery import divergence
from cfebm.train.speed import busy_cpu_warning, precision_warning
from cfebm.train.speed import describe as describe_speed
from cfebm.train.step import TrainState, data_batch, match_config, new_state, train_step
from cfebm.viz import plot_metrics, save_grid

log = logging.getLogger(__name__)

# Offsets from train.seed for the generators that must not share the chains' stream: the
# training grids' fixed noise, the in-training evaluation's (evaluation.EVAL_SEED_OFFSET, 2),
# and the chains after the k-th recovery (a large stride, so recovery k of seed s does not
# replay a nearby seed's stream).
GRID_SEED_OFFSET, RECOVERY_SEED_STRIDE = 1, 7919


class RunError(RuntimeError):
    """The run cannot start or continue (existing run dir, changed model, divergence)."""


class RunLog:
    """metrics.jsonl (always) and TensorBoard events (when tensorboard is installed).

    ``enabled=False`` (ranks other than 0) writes nothing.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path, self.enabled = run_dir / "metrics.jsonl", enabled
        self.tb = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            log.info("tensorboard not installed; metrics go to metrics.jsonl only")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, float) and key != "time":
                    self.tb.add_scalar(key, value, row["n_images"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class _Averager:
    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def pop(self) -> dict[str, float]:
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        means["sec_per_iter"] = (time.perf_counter() - self.start) / max(self.count, 1)
        self.__init__()
        return means


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """Collect SIGINT/SIGTERM into a list instead of raising, in the main thread."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    handlers = {s: signal.signal(s, lambda sig, _: received.append(sig))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def open_run(cfg: Config, run_dir: Path, resume: bool, shard: Shard | None = None) -> TrainState:
    """The state to train from: a fresh one, or the run's latest checkpoint with ``resume``.

    With several ranks, rank 0 decides from what it sees on disk and every rank starts from the
    state rank 0 saved.
    """
    shard = Shard() if shard is None else shard
    latest, device = run_dir / "checkpoints" / "latest.pt", shard.device(cfg.train.device)
    if not shard.broadcast(latest.exists()):
        state = new_state(cfg, device)
        if shard.is_main:
            save_state(state, latest)  # the state every recovery can fall back to
        return state if shard.world == 1 else load_state(latest, device, shard)
    if not resume:
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it "
                       "or choose another --run-dir")
    state = load_state(latest, device, shard)
    if state.cfg.model != cfg.model:
        raise RunError(f"cannot resume {run_dir} with a different [model] section")
    state.cfg = cfg
    match_config(state)
    return state


def save_samples(state: TrainState, path: Path, growth: Growth | None = None) -> Path:
    """A grid of what the sampler of ``growth`` (default: now) produces, from a fixed seed; for
    a translation run, rows of 8 source test images, each followed by their translations."""
    cfg, device = state.cfg, state.device
    growth = growth or state.growth
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed + GRID_SEED_OFFSET)
    net = state.sampling_net()
    source = grid_source(cfg, growth, device)
    n = cfg.run.n_grid if source is None else len(source)
    with frozen(net):
        x = as_trained(net, growth, n, cfg.sampler, source=source, coarse=state.coarse,
                       generator=generator, device=device, autocast=state.autocast)
    scale = max(1, 128 // growth.resolution)
    if source is None:
        return save_grid(x, path, scale=scale)
    rows = [t for pair in zip(source.split(8), x.split(8)) for t in pair]
    return save_grid(torch.cat(rows), path, nrow=8, scale=scale)


def save_latest(state: TrainState, run_dir: Path) -> None:
    """Write ``checkpoints/latest.pt``, keeping the one it replaces as ``previous.pt``."""
    latest = run_dir / "checkpoints" / "latest.pt"
    if latest.exists():
        keep_as(latest, latest.with_name("previous.pt"))
    save_state(state, latest)


def _recover(state: TrainState, run_dir: Path, runlog: RunLog, metrics: dict,
             reason: str) -> TrainState:
    """Roll back to the last checkpoint with half the learning rate and fresh sampler noise
    (``reason``: why the loss says the run diverged, ``recovery.divergence``).

    When the run diverges again from the checkpoint the last recovery loaded
    (``state.record.rolled_back_to`` images, no checkpoint written since), that checkpoint was
    most likely written after the divergence had begun (an energy blow-up grows over hundreds of
    iterations before |loss| passes ``recovery.MAX_ABS_LOSS``), so this rollback goes one
    checkpoint further back, to ``previous.pt``.

    The rolled-back state (its lr scale, recovery count, reseeded chains and where it came
    from) is written over ``latest.pt`` at once, so a run killed before its next checkpoint
    resumes as if it had never stopped.
    """
    cfg, shard = state.cfg, state.shard
    if state.record.recoveries >= cfg.run.max_recoveries:
        raise RunError(f"training diverged at {state.n_images} images ({reason})"
                       f" after {state.record.recoveries} recoveries; see "
                       f"{run_dir / 'metrics.jsonl'}")
    recoveries, lr_scale = state.record.recoveries + 1, state.lr_scale * 0.5
    failed_at, current = state.n_images, state  # its time spent stays spent
    latest = source = run_dir / "checkpoints" / "latest.pt"
    state = rolled_back(latest, current)
    if state.n_images == state.record.rolled_back_to and latest.with_name("previous.pt").exists():
        source = latest.with_name("previous.pt")
        state = rolled_back(source, current)
    state.record.recoveries, state.record.rolled_back_to = recoveries, state.n_images
    state.lr_scale = lr_scale
    state.generator.manual_seed(cfg.train.seed + RECOVERY_SEED_STRIDE * recoveries)
    shard.barrier()  # every rank has read the checkpoints before rank 0 changes latest.pt
    if shard.is_main:  # not save_latest: previous.pt stays the checkpoint before this one
        save_state(state, latest)
    runlog.write({"event": "recovery", "n_images": failed_at, "rolled_back_to": state.n_images,
                  "checkpoint": source.name, "loss": metrics["loss"], "reason": reason,
                  "lr_scale": lr_scale, "recoveries": recoveries})
    log.warning("divergence at %d images (%s); rolled back to %d (%s) with lr x%.3g",
                failed_at, reason, state.n_images, source.name, lr_scale)
    return state


def run_training(cfg: Config, run_dir: str | Path, *, resume: bool = False,
                 stop_at: int | None = None, time_budget: float | None = None,
                 progress: bool = True, shard: Shard | None = None) -> TrainState:
    """Train ``cfg`` in ``run_dir`` until the schedule ends (or ``stop_at`` images).

    ``time_budget`` stops the run once ``state.record.train_seconds`` (wall-clock seconds spent in
    training iterations, not in evaluations, grids or checkpoints) reaches it. ``shard``: this
    process's rank in a data-parallel run (``distributed.process_group``); default one process.
    """
    shard = Shard() if shard is None else shard
    shard.check(cfg.growth.batch_size)
    run_dir, main = Path(run_dir), shard.is_main
    # the data first: a missing or unreadable dataset stops here, before a run folder exists
    images, sources = training_data(cfg)  # sources: translation runs' chain starts, else None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    state = open_run(cfg, run_dir, resume, shard)
    if main:
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        log.info("%s, %d process(es)", describe_speed(cfg, state.device), shard.world)
        for warning in (precision_warning(cfg.train.precision, state.device),
                        busy_cpu_warning(state.device)):
            if warning is not None:
                log.warning(warning)
    stream = BatchStream(images, cfg.train.seed)
    end = total_images(cfg.growth) if stop_at is None else min(stop_at, total_images(cfg.growth))
    runlog, averager = RunLog(run_dir, enabled=main), _Averager()
    evaluator = None
    if cfg.eval.every:  # on every rank: its sampling is shared out
        best = best_fid(run_dir / "checkpoints" / "best.pt", cfg) if main else math.inf
        evaluator = TrainingEval(cfg, state.device, best)
    bar = tqdm(total=end, initial=min(state.n_images, end), unit="img", unit_scale=True,
               disable=not (progress and main), dynamic_ncols=True)
    if state.n_images == 0 and main:
        save_samples(state, run_dir / "samples" / "0000.0k-init.png")
    budget, stop, rewound = math.inf if time_budget is None else time_budget, False, False
    with _stop_on_signals() as signals:
        while state.n_images < end and state.record.train_seconds < budget and not stop:
            before, growth, started = state.n_images, state.growth, time.perf_counter()
            x_data = data_batch(state, stream)
            start = source_batch(sources, state.n_images, state.growth, state.device, shard)
            metrics = (train_step(state, x_data) if start is None
                       else train_step(state, x_data, start))
            seconds, stop = shard.agree(time.perf_counter() - started, bool(signals))
            state.record.train_seconds += seconds
            if (reason := divergence(metrics["loss"], state.record.loss_watch)) is not None:
                state = _recover(state, run_dir, runlog, metrics, reason)
                bar.n = state.n_images
                averager = _Averager()  # its iterations belong to the discarded trajectory
                continue
            averager.add(metrics)
            bar.update(state.n_images - before)
            bar.set_postfix_str(f"stage {growth.stage} {growth.resolution}px β={growth.beta:.2f} "
                                f"E(data)={metrics['e_data']:.3f} "
                                f"E(samples)={metrics['e_sample']:.3f}", refresh=False)
            final = state.n_images >= end or state.record.train_seconds >= budget
            row = None
            if main:
                row = _maintain(state, before, growth, run_dir, runlog, averager, final,
                                evaluator)
            elif evaluator is not None and evaluates(before, state.n_images, cfg.growth,
                                                     cfg.eval, final):
                row, _ = evaluator(state)  # its part of rank 0's evaluation
            rewound = False  # by the FID watch, at this iteration
            if row is not None and cfg.eval.fid_watch:
                failed_at = state.n_images
                state = watch(state, row, run_dir, runlog)
                rewound = state.n_images != failed_at
                if rewound:
                    bar.n, averager = state.n_images, _Averager()
    bar.close()
    if main and state.n_images < end and state.record.train_seconds >= budget:
        log.warning("the time budget ran out at %d of %d images (%.0f s of training): the "
                    "schedule and its lr decay are unfinished", state.n_images, end,
                    state.record.train_seconds)
    if rewound and main:  # the last grid showed the evaluation that was rolled back
        save_samples(state, run_dir / "samples" / "final.png")
    if stop and main:  # the last iteration was not a final one: save it
        log.warning("stopped by signal %s at %d images",
                    signals[0] if signals else "on another rank", state.n_images)
        save_latest(state, run_dir)
    if main:
        plot_metrics(runlog.path, run_dir / "training.png")
    runlog.close()
    shard.barrier()  # rank 0's files are complete when any rank returns
    return state


def _maintain(state: TrainState, before: int, growth: Growth, run_dir: Path, runlog: RunLog,
              averager: _Averager, final: bool,
              evaluator: TrainingEval | None = None) -> dict | None:
    """Per-iteration bookkeeping: metrics lines, evaluations, sample grids, checkpoints.
    Returns the evaluation's metrics row if this iteration ended with one."""
    t, now, after = state.cfg.run, state.n_images, state.growth
    evaluation = None
    stage_done = after.stage != growth.stage or final
    if crossed(before, now, t.log_every) or stage_done:
        row = {"n_images": now, "kimg": now / 1000, "stage": growth.stage,
               "resolution": growth.resolution, "beta": growth.beta,
               "lr": growth.lr * state.lr_scale,  # as stepped: after rollbacks scaled it
               **averager.pop(), "loss_spike": state.record.loss_watch.pop_peak(),
               "train_seconds": state.record.train_seconds, "time": time.time()}
        runlog.write(row)
    if evaluator is not None and evaluates(before, now, state.cfg.growth, state.cfg.eval, final):
        evaluation, improved = evaluator(state)
        runlog.write({**evaluation, "train_seconds": state.record.train_seconds})
        if improved:  # the file carries its FID, so a resumed run keeps comparing with it
            atomic_save({**state_dict(state), "eval": evaluation},
                        run_dir / "checkpoints" / "best.pt")
    tag = "final" if final else f"{now / 1000:06.1f}k-{growth.resolution}x{growth.resolution}"
    if crossed(before, now, t.sample_every) or stage_done:
        save_samples(state, run_dir / "samples" / f"{tag}.png", growth)
        plot_metrics(runlog.path, run_dir / "training.png")
    if stage_done and after.stage != growth.stage:
        save_state(state, run_dir / "checkpoints" /
                   f"stage{growth.stage}-{growth.resolution}x{growth.resolution}.pt")
    if crossed(before, now, t.checkpoint_every) or stage_done:
        save_latest(state, run_dir)
    return evaluation
