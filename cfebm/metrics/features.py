"""Feature extractors for FID/KID/precision-recall, behind one small protocol.

A feature extractor is a callable ``extractor(x) -> features``: ``x`` float images (N, C, H, W)
in [−1, 1], ``features`` float32 (N, D) on ``x``'s device. It also has

- ``name``: which network (e.g. ``"inception-v3-tf-2015-12-05"``),
- ``protocol``: how images are resized and normalised before the network. Reference statistics
  record it (``cfebm.metrics.fid.feature_stats``), so statistics made under another protocol
  can be refused (``cfebm.metrics.fid.check_compatible``),
- ``dim``: D.

Two are provided:

- ``InceptionFeatures``: the TF-FID protocol through torch-fidelity's port of the 2015-12-05
  TensorFlow Inception-v3 (pool3, 2048-d), so numbers are comparable with published FIDs.
- ``FMNISTFeatures``: the penultimate layer (128-d) of the project's Fashion-MNIST classifier
  (``cfebm/weights/fmnist_classifier.safetensors``), plus ``predict_classes`` for
  ``class_coverage`` (mode collapse over the 10 classes).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from cfebm.data import to_uint8  # the pixel convention of the whole package
from cfebm.metrics.classifier import FEATURE_DIM, load_classifier


@runtime_checkable
class FeatureExtractor(Protocol):
    """Images (N, C, H, W) in [−1, 1] -> features (N, D)."""

    name: str
    protocol: str
    dim: int

    def __call__(self, x: Tensor) -> Tensor: ...


def _check_images(x: Tensor, channels: tuple[int, ...]) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4:
        raise ValueError(f"expected float images (N, C, H, W) in [-1, 1], got {_describe(x)}")
    if x.shape[1] not in channels:
        raise ValueError(f"expected {' or '.join(map(str, channels))} channels, got {_describe(x)}")


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


# ------------------------------------------------------------------------------------------------
# Inception-v3 (TF-FID protocol) through torch-fidelity

INCEPTION_WEIGHTS_ENV = "CFEBM_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)
INCEPTION_PROTOCOL = (
    "tf-fid-v1: torch-fidelity inception-v3-compat pool3 2048-d; uint8 = round((x+1)*127.5); "
    "grayscale replicated to RGB; TF1-compatible bilinear resize to 299x299; (u8-128)/128"
)

_NO_WEIGHTS_HELP = f"""\
InceptionFeatures could not get the Inception-v3 weights ({INCEPTION_WEIGHTS_FILE}, about 91 MiB):
no local file was given and the download failed (offline?). Provide the file in one of these ways:
  1. InceptionFeatures(weights_path="/path/to/{INCEPTION_WEIGHTS_FILE}")
  2. export {INCEPTION_WEIGHTS_ENV}=/path/to/{INCEPTION_WEIGHTS_FILE}
  3. put it in torch.hub's cache: {{cache}}
The file can be downloaded on a machine with internet from
  {INCEPTION_WEIGHTS_URL}
Original error: {{error}}"""


class InceptionFeatures:
    """TF-FID Inception-v3 pool3 features (N, 2048), via torch-fidelity.

    Protocol (``INCEPTION_PROTOCOL``): images in [−1, 1] are mapped to uint8 by
    round((x + 1)·127.5), grayscale is replicated to 3 channels, and torch-fidelity resizes to
    299×299 with its TensorFlow-1-compatible bilinear interpolation, as the original TF FID code.

    Args:
        weights_path: a local copy of torch-fidelity's
            ``weights-inception-2015-12-05-6726825d.pth``. If None, ``$CFEBM_INCEPTION_WEIGHTS``;
            if that is unset too, torch-fidelity's usual route (torch.hub cache, else download).
            Offline without the file, a ``RuntimeError`` says how to provide it. A given file is
            first checked to load with ``torch.load(weights_only=True)`` (no arbitrary pickle),
            then handed to torch-fidelity.
        device: where the network runs; features come back on the input's device.
        batch_size: images per forward pass (memory at 299×299 is ~0.1 GB per 32 images).

    Needs the optional dependency torch-fidelity (``pip install 'cfebm[metrics]'``).
    """

    name = "inception-v3-tf-2015-12-05"
    protocol = INCEPTION_PROTOCOL
    dim = 2048

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:
            raise ImportError(
                "InceptionFeatures needs torch-fidelity: pip install 'cfebm[metrics]' "
                "(or pip install torch-fidelity==0.4.0)"
            ) from e
        path = weights_path or os.environ.get(INCEPTION_WEIGHTS_ENV) or None
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"Inception weights file not found: {path}")
            torch.load(path, map_location="cpu", weights_only=True)   # refuse non-tensor pickles
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat",
                ["2048"],
                feature_extractor_weights_path=None if path is None else str(path),
                verbose=False,
            )
        except Exception as e:
            if path is not None:
                raise
            cache = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
            raise RuntimeError(_NO_WEIGHTS_HELP.format(cache=cache, error=repr(e))) from e
        self.device = torch.device(device)
        self.net.to(self.device)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Features (N, 2048) float32 of images (N, 1 or 3, H, W) in [−1, 1], any H, W."""
        _check_images(x, (1, 3))
        out = []
        for xb in x.split(self.batch_size):
            xb = to_uint8(xb.to(self.device))
            if xb.shape[1] == 1:
                xb = xb.expand(-1, 3, -1, -1)
            (features,) = self.net(xb)
            out.append(features.to(x.device))
        return torch.cat(out) if out else x.new_zeros(0, self.dim)


# ------------------------------------------------------------------------------------------------
# Fashion-MNIST classifier

FMNIST_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "fmnist_classifier.safetensors"
FMNIST_PROTOCOL = "fmnist-classifier-v1, 32x32 grayscale in [-1,1], zero-padded 28->32"


class FMNISTFeatures:
    """Penultimate features (N, 128) of the project's Fashion-MNIST classifier.

    Protocol (``FMNIST_PROTOCOL``): exactly (N, 1, 32, 32) float images in [−1, 1], the 28×28
    Fashion-MNIST layout zero-padded by 2 px (cfebm's representation). Anything else is refused;
    samples at a lower resolution must be resized by the caller.

    Args:
        weights_path: a ``.safetensors`` file from ``scripts/train_fmnist_classifier.py``;
            default the committed ``cfebm/weights/fmnist_classifier.safetensors``.
        device: where the network runs; outputs come back on the input's device.
        batch_size: images per forward pass.

    Attributes:
        metadata: the training info stored in the file (architecture, recipe, seed,
            test_accuracy, torch_version, ...).
        weights_sha256: sha256 of the weights file.
    """

    name = "fmnist-classifier-v1"
    protocol = FMNIST_PROTOCOL
    dim = FEATURE_DIM

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 1000,
    ):
        path = Path(weights_path) if weights_path is not None else FMNIST_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"classifier weights not found: {path} (train them with "
                "scripts/train_fmnist_classifier.py)"
            )
        self.net, self.metadata = load_classifier(path)
        self.weights_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.device = torch.device(device)
        self.net.requires_grad_(False).to(self.device)
        self.batch_size = batch_size

    def _check(self, x: Tensor) -> None:
        ok = isinstance(x, Tensor) and x.is_floating_point() and tuple(x.shape[1:]) == (1, 32, 32)
        if not ok:
            raise ValueError(
                f"FMNISTFeatures takes float images (N, 1, 32, 32) in [-1, 1] (Fashion-MNIST "
                f"zero-padded 28->32), got {_describe(x)}; resize lower resolutions first"
            )

    @torch.no_grad()
    def _batched(self, fn, x: Tensor) -> Tensor:
        self._check(x)
        out = [fn(xb.to(self.device, torch.float32)) for xb in x.split(self.batch_size)]
        return torch.cat(out).to(x.device) if out else fn(x.to(self.device, torch.float32))

    def __call__(self, x: Tensor) -> Tensor:
        """Features (N, 128) float32, ≥ 0 (after ReLU)."""
        return self._batched(self.net.features, x)

    def logits(self, x: Tensor) -> Tensor:
        """Class logits (N, 10)."""
        return self._batched(self.net, x)

    def predict_classes(self, x: Tensor) -> Tensor:
        """Predicted class indices (N,) int64 (see ``classifier.CLASS_NAMES``)."""
        return self.logits(x).argmax(dim=1)

    def __repr__(self) -> str:
        acc = self.metadata.get("test_accuracy")
        return f"FMNISTFeatures(sha256={self.weights_sha256[:12]}, test_accuracy={acc})"


def class_coverage(predicted: Tensor, n_classes: int = 10) -> dict:
    """How evenly predicted classes cover the K = ``n_classes`` classes.

    Args:
        predicted: class indices (N,) in [0, K), e.g. ``FMNISTFeatures.predict_classes(samples)``.
        n_classes: K.

    Returns:
        dict with ``entropy`` (nats, of the predicted-class histogram; log K when uniform, 0 when
        one class), ``max_entropy`` (log K), ``n_covered`` (classes whose frequency lies in
        [0.5/K, 1.5/K], i.e. within ±50% of uniform: K when uniform, 0 when all samples fall in
        one class), ``n_present`` (classes predicted at least once) and ``frequencies`` (list of
        K floats summing to 1).
    """
    predicted = torch.as_tensor(predicted).flatten().long()
    if predicted.numel() == 0:
        raise ValueError("no predictions")
    if predicted.min() < 0 or predicted.max() >= n_classes:
        raise ValueError(f"predicted classes must lie in [0, {n_classes})")
    freq = torch.bincount(predicted.cpu(), minlength=n_classes).double() / predicted.numel()
    nonzero = freq[freq > 0]
    entropy = float(-(nonzero * nonzero.log()).sum()) + 0.0   # + 0.0 turns −0.0 into 0.0
    return {
        "entropy": entropy,
        "max_entropy": math.log(n_classes),
        "n_covered": int(((freq >= 0.5 / n_classes) & (freq <= 1.5 / n_classes)).sum()),
        "n_present": len(nonzero),
        "frequencies": freq.tolist(),
    }
