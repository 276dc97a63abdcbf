"""In-training evaluation (``eval.every``) and the best checkpoint it keeps.

``TrainingEval`` scores samples drawn as trained with a small sample count (``eval.n``)
during a run; ``loop.run_training`` writes its rows to ``metrics.jsonl`` and the best state to
``checkpoints/best.pt``, whose stored FID ``best_fid`` reads back on resume. The FID watch
(``fidwatch``) judges the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from cfebm import fidwatch
from cfebm.checkpoint import config_of, read
from cfebm.config import Config, EvalConfig, GrowthConfig
from cfebm.data import downsample, load_images, to_float
from cfebm.evaluate import EvalResult, at_resolution, evaluate_samples, make_extractor
from cfebm.growth import crossed, stage_starts
from cfebm.metrics.reference import FEATURE_BATCH, EvalError, Reference, reference_of
from cfebm.model import frozen
from cfebm.sampling import Slice
from cfebm.training import sample_negatives

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
    and over the ``fidwatch.REFERENCE_EVALS`` evaluations before it (what the FID watch reads),
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
    lead = fidwatch.REFERENCE_EVALS * ev.every
    return any(starts[s] - lead <= after <= starts[s] + fades[s]
               for s in range(1, len(fades)) if fades[s] > 0)


class TrainingEval:
    """FID and KID of ``eval.n`` samples of the sampling network during training.

    Samples come from the sampler of the current stage (training's negatives: Algorithm 1 during
    a fade, Algorithm 2 once grown), always from the same seed, so successive evaluations differ
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
