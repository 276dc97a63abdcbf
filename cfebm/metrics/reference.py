"""Reference statistics of real images: compute, save, load and check them.

A reference is an ``.npz`` with μ, Σ, the count, the features themselves (for KID and
precision/recall) and string metadata: dataset, split (train, validation or test; the size of
the validation split held out of the training files), resolution, channels, the extractor's
``name`` and ``protocol`` (which includes how images reach it). ``check_reference`` refuses
statistics made another way than the samples they are compared with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from cfebm import __version__
from cfebm.config import DataConfig
from cfebm.data import ImageSet, load_images, to_float
from cfebm.metrics.features import FeatureExtractor
from cfebm.metrics.fid import FeatureStats

FEATURE_BATCH = 500   # real images per feature batch when building a reference


class EvalError(ValueError):
    """Evaluation inputs that do not fit together: features, reference, checkpoint."""


@dataclass
class Reference:
    """Features of real images: ``stats`` (μ, Σ, count, metadata strings) and ``features``
    (N, D) float32 for KID and precision/recall (None when the file holds no features)."""

    stats: FeatureStats
    features: Tensor | None

    @property
    def metadata(self) -> dict[str, str]:
        return self.stats.metadata


def reference_of(batches: Iterable[Tensor], extractor: FeatureExtractor,
                 **metadata: str | int) -> Reference:
    """The ``Reference`` of image batches (N, C, R, R) in [−1, 1]; ``metadata`` is stored as
    strings beside the extractor's name and protocol and the count."""
    with torch.no_grad():
        features = [extractor(x).float().cpu() for x in batches]
    if not features:
        raise EvalError("no images to compute reference statistics from")
    features = torch.cat(features)
    meta = {"name": extractor.name, "protocol": extractor.protocol, "count": len(features),
            "cfebm_version": __version__, **metadata}
    stats = FeatureStats(metadata={k: str(v) for k, v in meta.items()}).update(features)
    return Reference(stats, features)


def image_batches(images: ImageSet, batch_size: int, *, device: str | torch.device = "cpu",
                  progress: bool = False) -> Iterator[Tensor]:
    """All of ``images`` in order, as float batches (B, C, R, R) in [−1, 1] on ``device``."""
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, unit="batch",
                      desc="reference", dynamic_ncols=True):
        indices = torch.arange(start, min(start + batch_size, len(images)))
        yield to_float(images.get_batch(indices).to(device))


def compute_reference(data: DataConfig, split: str, extractor: FeatureExtractor, *,
                      resolution: int, image_channels: int, batch_size: int = FEATURE_BATCH,
                      device: str | torch.device = "cpu", progress: bool = False) -> Reference:
    """Reference statistics of one split of ``data`` at ``resolution`` (``load_images``).

    ``extractor`` must already be ``at_resolution(…, resolution)``. The first ``data.limit``
    images are used (0: all; not for the validation split); dataset, split, the validation
    split's size ``data.validation``, resolution, channels, limit and subset go into the
    metadata.
    """
    images = load_images(data, split=split, resolution=resolution, image_channels=image_channels)
    return reference_of(image_batches(images, batch_size, device=device, progress=progress),
                        extractor, dataset=data.dataset, split=split, resolution=resolution,
                        image_channels=image_channels, limit=data.limit, subset=data.subset,
                        validation=data.validation)


def reference_path(path: str | Path) -> Path:
    """``path`` as a Path, checked to end in .npz (numpy would silently append it)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise EvalError(f"reference statistics go to a .npz file, got {str(path)!r}")
    return path


def save_reference(ref: Reference, path: str | Path) -> Path:
    """Write ``ref`` to an ``.npz`` (μ, Σ, count, metadata and the float32 features)."""
    path = reference_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ref.stats.save_npz(path, features=ref.features)
    return path


def load_reference(path: str | Path) -> Reference:
    """Read a file written by ``save_reference`` (features are optional)."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"reference statistics {str(path)!r} do not exist")
    try:
        stats = FeatureStats.load_npz(path)
        with np.load(path, allow_pickle=False) as f:
            features = torch.from_numpy(f["features"]) if "features" in f.files else None
    except (OSError, KeyError, ValueError) as e:
        raise EvalError(f"cannot read {str(path)!r} as reference statistics ({e})") from e
    return Reference(stats, features)


def check_reference(ref: Reference, extractor: FeatureExtractor, *, dataset: str,
                    resolution: int, image_channels: int, validation: int | None = None) -> None:
    """Raise ``EvalError`` unless ``ref`` was made from ``dataset`` at this resolution and
    channel count, with ``extractor``'s network and protocol (resize step included); a
    validation-split reference also from the same held-out images (``validation``, the
    run's ``data.validation``), when given."""
    expected = {"dataset": dataset, "resolution": str(resolution),
                "image_channels": str(image_channels), "name": extractor.name,
                "protocol": extractor.protocol}
    if ref.metadata.get("split") == "validation" and validation is not None:
        expected["validation"] = str(validation)
    for key, want in expected.items():
        got = ref.metadata.get(key)
        if got != want:
            raise EvalError(f"the reference statistics have {key} {got!r} but the samples "
                            f"{want!r}; make matching ones with `cfebm fid-ref` or leave out --ref")


