"""In-training evaluation (``eval.every``) and the best checkpoint it keeps.

``TrainingEval`` scores samples drawn as trained with a small sample count (``eval.n``)
during a run; ``loop.run_training`` writes its rows to ``metrics.jsonl`` and the best state to
``checkpoints/best.pt``, whose stored FID ``best_fid`` reads back on resume. The FID watch
(below) judges the same rows.

The FID watch: rolling back an evaluation that lost what the coarse stage knew (``eval.fid_watch``).

Issue 11's replays (docs/notebook/fades.md) found that a fade into a new resolution now and then
jumps: for one or two in-training evaluations (1,600–3,200 images) its samples, pooled to the
stage before's resolution, score 3–15× the FID that stage ended on, and then recover. The images
a fade meets time the jumps (the same batches with other chain noise jump at the same
evaluation; another image order does not), and no optimiser, penalty or learning rate tried
removes them. So the watch treats a jump like a divergence, with fresh images: the run returns
to the state of its last evaluation that passed and reads on in the data stream from where the
failed stretch ended, so no batch is read twice. The learning rate stays: halving it at each
rollback (as a divergence's rollback does) made the jumps rarer, but compounded over 25
rollbacks it froze a model in a failed state, and with a floor a whole 30-minute run scored
FMNIST-FID 81.4 against 57.5 without the watch (docs/notebook/fades.md, "The FID watch").

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
import math
import statistics
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from cfebm.chains import sample_negatives
from cfebm.config import Config, EvalConfig, GrowthConfig
from cfebm.data import downsample, load_images, to_float
from cfebm.files import config_of, read
from cfebm.growth import crossed, stage_starts
from cfebm.metrics.evaluate import EvalResult, at_resolution, evaluate_samples, make_extractor
from cfebm.metrics.reference import FEATURE_BATCH, EvalError, Reference, reference_of
from cfebm.model import frozen
from cfebm.sampling import Slice
from cfebm.train.checkpoint import rolled_back, save_state
from cfebm.train.step import TrainState

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 2  # from train.seed: the evaluation's chains share no stream with training's

TRAINING_REFERENCE_MAX = 10_000   # validation images in the in-training reference at most
REFERENCE_SPLIT = "validation"    # what in-training evaluation compares with; never "test"
TRAINING_KID_SUBSETS = 10         # fewer than the final evaluation's 100: it runs often


def features_for(cfg: Config) -> str:
    """The features in-training evaluation scores in: the Fashion-MNIST classifier's
    ("fmnist") for grayscale Fashion-MNIST, where the FID our tables report is FMNIST-FID,
    else Inception's ("inception")."""
    fmnist = cfg.data.dataset == "fashion_mnist" and cfg.model.image_channels == 1
    return "fmnist" if fmnist else "inception"


def evaluates(before: int, after: int, growth: GrowthConfig, ev: EvalConfig,
              final: bool) -> bool:
    """Whether the iteration from ``before`` to ``after`` images ends with an evaluation: every
    ``eval.every`` images, or with ``eval.fades_only`` only while a stage fades in
    and over the ``REFERENCE_EVALS`` evaluations before it (what the FID watch reads),
    and always at the end (``final``). Never without ``eval.every``."""
    if not ev.every:
        return False
    if final:
        return True
    if not crossed(before, after, ev.every):
        return False
    if not ev.fades_only:
        return True
    starts, fades = stage_starts(growth), growth.fade_images
    lead = REFERENCE_EVALS * ev.every
    return any(starts[s] - lead <= after <= starts[s] + fades[s]
               for s in range(1, len(fades)) if fades[s] > 0)


class TrainingEval:
    """FID and KID of ``eval.n`` samples of the sampling network during training.

    Samples come from the sampler of the current stage (training's negatives: Algorithm 1 during
    a fade, Algorithm 2 once grown; chains from noise, since a translation run cannot evaluate:
    config refuses ``eval.every`` with ``task.kind = "translate"``), always from the same seed, so successive evaluations differ
    only by the network. In a data-parallel run each rank samples its rows of every batch
    (``Shard.rows``, as in training) and all ranks score the gathered batches. The reference is
    the run's validation split (``data.validation`` images held out of the training files, at
    most 10,000), never the test split, since these scores choose (the best checkpoint, the FID
    watch's rollbacks); at the same resolution, pooled from the top resolution as the training
    data is; its features are computed once per resolution. Only
    evaluations at the last stage, fully faded in, compete for the best checkpoint. After the
    first stage the same samples are also scored pooled to the stage before's resolution.

    Args:
        cfg: the run's config (``eval.n``; ``data`` for the validation split and, through
            ``features_for``, the features).
        device: where sampling and features run.
        best: the best FID so far (``best_fid(run_dir/checkpoints/best.pt, …)`` on resume).
    """

    def __init__(self, cfg: Config, device: torch.device, best: float = math.inf):
        m = cfg.model
        self.cfg, self.device, self.best = cfg, device, best
        self.extractor = make_extractor(features_for(cfg), dataset=cfg.data.dataset,
                                        channels=m.image_channels, device=device)
        held_out = load_images(cfg.data, split=REFERENCE_SPLIT, resolution=m.max_resolution,
                               image_channels=m.image_channels)
        self.images = held_out.get_batch(torch.arange(min(len(held_out),
                                                          TRAINING_REFERENCE_MAX)))
        self.references: dict[int, Reference] = {}

    def reference(self, resolution: int) -> Reference:
        if resolution not in self.references:
            extractor = at_resolution(self.extractor, resolution)
            batches = (downsample(to_float(x.to(self.device)), resolution)
                       for x in self.images.split(FEATURE_BATCH))
            ref = reference_of(batches, extractor, dataset=self.cfg.data.dataset,
                               split=REFERENCE_SPLIT, validation=self.cfg.data.validation,
                               resolution=resolution)
            require_validation(ref)  # once per resolution, not at every evaluation
            self.references[resolution] = ref
        return self.references[resolution]

    def __call__(self, state) -> tuple[dict, bool]:
        """Evaluate ``state`` (a ``TrainState``): (metrics row, whether it is the best yet)."""
        cfg, growth, net, shard = self.cfg, state.growth, state.sampling_net(), state.shard
        energy = state.sampling_energy()
        generator = torch.Generator(device=self.device)
        generator.manual_seed(cfg.train.seed + EVAL_SEED_OFFSET)
        batch = growth.batch_size
        # After the first stage the samples are also scored pooled to the stage before's
        # resolution (like for like with that stage's last evaluation: does the fade, or the
        # stage after it, lose what the coarse model knew?); only the pooled copies are kept,
        # the full-size batches stream through.
        coarse = cfg.growth.resolutions[growth.stage - 1] if growth.stage else 0
        pooled: list[Tensor] = []

        def batches() -> Iterator[Tensor]:
            # whole training batches, the last one cut to eval_n: a compiled energy then
            # meets no new shape (a recompile costs more than the spare chains)
            first, rows = shard.rows(batch)
            chains = generator if shard.world == 1 else Slice(generator, first, rows, batch)
            for start in range(0, cfg.eval.n, batch):
                with frozen(net):
                    x = sample_negatives(energy, growth, rows, cfg.sampler, coarse=state.coarse,
                                         generator=chains, device=self.device,
                                         autocast=state.autocast)
                x = shard.gather(x.detach(), batch)[:cfg.eval.n - start]
                if coarse:
                    pooled.append(downsample(x, coarse))
                yield x

        result = self.score(batches(), growth.resolution)
        candidate = growth.stage == len(cfg.growth.resolutions) - 1 and not growth.fading
        improved = candidate and result.fid < self.best
        if improved:
            self.best = result.fid
        row = {"n_images": state.n_images, "eval_resolution": growth.resolution,
               "eval_beta": growth.beta, "eval_n": cfg.eval.n, "eval_fid": result.fid,
               "eval_kid": result.kid, "eval_kid_std": result.kid_std, "eval_best": improved}
        if coarse:
            row.update(eval_coarse_resolution=coarse,
                       eval_fid_coarse=self.score(pooled, coarse).fid)
        return row, improved

    def score(self, samples: Iterable[Tensor], resolution: int) -> EvalResult:
        """FID and KID of sample batches (B, C, R, R) in [-1, 1] at ``resolution`` R."""
        result, _ = evaluate_samples(samples, self.reference(resolution),
                                     at_resolution(self.extractor, resolution),
                                     kid_subsets=TRAINING_KID_SUBSETS, precision_recall_k=None)
        return result


def require_validation(ref: Reference) -> None:
    """Raise ``EvalError`` unless ``ref`` was made from a validation split: whatever chooses
    (a best checkpoint, a rollback, a tuned default) must not read the test split."""
    split = ref.metadata.get("split")
    if split != REFERENCE_SPLIT:
        raise EvalError(f"a choice made during training needs validation-split reference "
                        f"statistics, got split {split!r} (the test split is for reports only)")


def best_fid(path: str | Path, cfg: Config) -> float:
    """The FID stored in a best checkpoint written during training (its ``eval`` entry), or inf
    if there is none or it was measured otherwise (other ``eval.n`` or features): FID is biased
    by the sample count, so only like with like competes."""
    path = Path(path)
    if not path.is_file():
        return math.inf
    ckpt = read(path)
    row = ckpt.get("eval") or {}
    same = (row.get("eval_n") == cfg.eval.n
            and features_for(config_of(ckpt)) == features_for(cfg))
    return float(row["eval_fid"]) if same and "eval_fid" in row else math.inf


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
    verdict = judge(row, state.record.watch_reference, state.cfg.eval.fid_watch)
    reason, saved = shard.broadcast((verdict, snapshot.exists()) if shard.is_main else None)
    if reason is not None and not saved:
        log.warning("fid_watch: %s, but no evaluation was kept before it to go back to", reason)
    elif reason is not None and state.record.watch_retries >= RETRIES:
        log.warning("fid_watch: %s after %d rollbacks in a row; keeping it", reason,
                    state.record.watch_retries)
        runlog.write({"event": "fid_watch_kept", "n_images": state.n_images, "reason": reason})
    elif reason is not None:
        return _rewind(state, snapshot, runlog, row, reason)
    kept = state.record.watch_reference.setdefault(row["eval_resolution"], [])
    kept.append(row["eval_fid"])
    del kept[:-REFERENCE_EVALS]
    state.record.watch_retries = 0
    if shard.is_main:
        save_state(state, snapshot)
    return state


def _rewind(state: TrainState, snapshot: Path, runlog, row: dict, reason: str) -> TrainState:
    """The state saved at the last kept evaluation, reading the data on from ``state``'s
    position; its time spent, recoveries and lr scale are ``state``'s. Written over
    ``latest.pt`` at once, as a divergence's rollback is, so a crash loses
    nothing."""
    shard, failed_at = state.shard, state.n_images
    back = rolled_back(snapshot, state)
    back.lr_scale = state.lr_scale  # a divergence since the snapshot may have halved it
    back.record.rolled_back_to = None
    back.data_skip = state.data_skip + failed_at - back.n_images
    back.record.watch_retries = state.record.watch_retries + 1
    shard.barrier()  # every rank has read the snapshot before rank 0 writes
    if shard.is_main:
        save_state(back, snapshot.with_name("latest.pt"))
    runlog.write({"event": "fid_watch", "n_images": failed_at, "rolled_back_to": back.n_images,
                  "reason": reason, "eval_fid_coarse": row["eval_fid_coarse"],
                  "retry": back.record.watch_retries, "data_skip": back.data_skip})
    log.warning("fid_watch at %d images (%s); rolled back to %d, reading on at data position %d",
                failed_at, reason, back.n_images, failed_at + state.data_skip)
    return back
