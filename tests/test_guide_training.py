"""scripts/train_guide_classifier.py, the recipe of the packaged guide classifier (issue 39).

Checked against independent truth: the adversarial move of a linear classifier reaches the
closed-form worst case in the L2 ball (eps along the difference of the two classes' weights);
the noise stage and the robust stage both learn a toy task that a glance solves.
"""

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from cfebm.guides import GuideClassifier

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_guide_classifier.py"
spec = importlib.util.spec_from_file_location("train_guide_classifier", SCRIPT)
recipe = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = recipe
spec.loader.exec_module(recipe)


def test_the_adversarial_move_of_a_linear_classifier_is_the_closed_form_worst_case():
    """Logits z = W x on 4×4 images, label 0: the loss log(1 + exp((w₁ − w₀)·x)) grows with
    (w₁ − w₀)·δ, so the worst δ with ‖δ‖ ≤ eps is eps·(w₁ − w₀)/‖w₁ − w₀‖, whatever x."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(2, 16, generator=g))
    x = torch.rand(5, 1, 4, 4, generator=g) * 2 - 1
    y = torch.zeros(5, dtype=torch.long)
    d = (net[1].weight[1] - net[1].weight[0]).detach()
    moved = recipe.pgd(net, x, y, eps=0.7, steps=3)
    expected = x + (0.7 * d / d.norm()).reshape(1, 1, 4, 4)
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=0)
    assert ((moved - x).flatten(1).norm(dim=1) <= 0.7 + 1e-5).all()


def toy(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """8×8 images: class 0 bright on top, class 1 bright below, with a little noise."""
    y = torch.randint(2, (n,), generator=g)
    x = torch.full((n, 1, 8, 8), -0.8) + 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    x[y == 0, :, :4] += 1.4
    x[y == 1, :, 4:] += 1.4
    return x.clamp(-1, 1), y


def test_both_stages_learn_a_toy_task_and_the_robust_one_keeps_it():
    g = torch.Generator().manual_seed(0)
    x, y = toy(256, g)
    x_val, y_val = toy(200, g)
    torch.manual_seed(0)
    net = GuideClassifier(channels=(8, 8, 8), n_classes=2)
    common = {"batch_size": 32, "weight_decay": 0.0, "sigma_max": 0.3}
    assert recipe.accuracy(net, x_val, y_val) < 0.9
    recipe.fit(net, x, y, g, epochs=5, lr=1e-2, **common)
    assert recipe.accuracy(net, x_val, y_val) >= 0.95
    recipe.fit(net, x, y, g, epochs=1.5, lr=1e-3, eps=0.5, pgd_steps=2, **common)
    assert recipe.accuracy(net, x_val, y_val) >= 0.95
    assert not net.training
