"""The committed Fashion-MNIST feature net is a fixed function, and its accuracy is measured here.

- Features of an image cannot depend on the other images in its batch or on the call: batch
  norm must use its running statistics and dropout must be off (eval mode). Random images are
  enough to see this, so the check needs no data.
- The test accuracy recorded in the weights file is recomputed on the real 10,000-image test
  split, not read back from the file.
"""

import pytest
import torch

from cfebm.metrics import FMNISTFeatures
from cfebm.metrics.classifier import load_fashion_mnist


@pytest.fixture(scope="module")
def extractor():
    return FMNISTFeatures(batch_size=1000)


def test_feature_net_is_in_eval_mode_and_batch_independent(extractor):
    """One image alone, the same image inside a batch of 64, and a second call all give the same
    features and logits."""
    assert not any(m.training for m in extractor.net.modules())
    x = torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch_features, batch_logits = extractor(x), extractor.logits(x)
    for i in (0, 17, 63):
        torch.testing.assert_close(extractor(x[i:i + 1]), batch_features[i:i + 1])
        torch.testing.assert_close(extractor.logits(x[i:i + 1]), batch_logits[i:i + 1])
    torch.testing.assert_close(extractor.logits(x), batch_logits, rtol=0, atol=0)


@pytest.mark.fmnist
@pytest.mark.slow
def test_recomputed_test_accuracy_matches_the_recorded_one(extractor):
    """Accuracy on all 10,000 test images, counted here, is the file's figure (rounded to 4
    places by the training script) to within 3 images of round-off on another CPU."""
    x, y = load_fashion_mnist("test")
    assert len(y) == 10_000
    correct = (extractor.predict_classes(x) == y).sum().item()
    assert correct >= 9_000
    assert abs(correct - round(extractor.metadata["test_accuracy"] * 10_000)) <= 3
