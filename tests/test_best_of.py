"""Choosing among candidate chains by the guide (``guides.best_of``, ``--candidates``).

Three truths: a chain run in two parts is the uninterrupted chain (its noise schedule and its
random numbers carry over); with the choice made before any step, each sample is the smallest
of k uniform draws, whose law is an order statistic in closed form; and choosing part-way
changes which chains come out, not the chains: each sample is exactly the uninterrupted chain
of the candidate whose guide term was lowest at the choice.
"""

import numpy as np
import pytest
import torch
from conftest import gaussian_energy
from PIL import Image

from cfebm import guides
from cfebm.cli import main
from cfebm.config import SamplerConfig
from cfebm.data import to_uint8
from cfebm.sampling import Rows, Streams, draw, init_noise, langevin_cfg
from cfebm.trained import load


def test_rows_draw_what_the_whole_batch_would_have_drawn_at_those_rows():
    index = torch.tensor([4, 0, 3])
    for make in (lambda: torch.Generator().manual_seed(3),
                 lambda: Streams.for_chains(3, 0, 120)):
        total = 5 if isinstance(make(), torch.Generator) else 120
        whole = draw(torch.randn, (total, 2, 2), make(), "cpu")
        assert torch.equal(draw(torch.randn, (3, 2, 2), Rows(make(), index, total), "cpu"),
                           whole[index])
    with pytest.raises(ValueError, match=r"in \[0, 5\)"):
        Rows(torch.Generator(), torch.tensor([5]), 5)
    with pytest.raises(ValueError, match="3 rows, got a batch of 2"):
        draw(torch.rand, (2, 1), Rows(torch.Generator(), index, 5), "cpu")


def test_a_chain_run_in_two_parts_is_the_uninterrupted_chain():
    cfg = SamplerConfig(eta0=0.3)
    x0 = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    whole = langevin_cfg(gaussian_energy, x0, 9, cfg,
                         generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    first = langevin_cfg(gaussian_energy, x0, 4, cfg, generator=g, part=(0, 9))
    assert not torch.equal(first, whole)
    assert torch.equal(langevin_cfg(gaussian_energy, first, 5, cfg, generator=g, part=(4, 9)),
                       whole)
    with pytest.raises(ValueError, match=r"steps \[7, 10\) are not in a chain of 9"):
        langevin_cfg(gaussian_energy, x0, 3, cfg, part=(7, 9))


@pytest.mark.parametrize("k", [1, 4])
def test_a_choice_before_any_step_keeps_the_order_statistic_of_k_draws(k):
    """One-pixel images, a guide equal to the pixel and chains of no steps: each sample is the
    least of its k U(−1, 1) starts, P(X ≤ x) = 1 − ((1 − x)/2)^k, mean −1 + 2/(k + 1)."""
    n = 4000
    starts = torch.rand(k * n, 1, 1, 1, generator=torch.Generator().manual_seed(k)) * 2 - 1
    x = guides.best_of(gaussian_energy, lambda x: x.flatten(1).sum(1), starts, k, 0, 0,
                       SamplerConfig()).flatten().double()
    assert x.shape == (n,)
    assert torch.equal(x, starts.view(n, k).min(1).values.double())
    sd = 2 * (k / ((k + 1) ** 2 * (k + 2))) ** 0.5
    assert abs(x.mean().item() - (-1 + 2 / (k + 1))) < 4 * sd / n**0.5
    grid = np.linspace(-1, 1, 41)
    empirical = (x.numpy()[:, None] <= grid).mean(0)
    assert np.abs(empirical - (1 - ((1 - grid) / 2) ** k)).max() < 1.63 / n**0.5  # KS, 1%


def brightness(weight: float) -> guides.Guide:
    """λ·mean(x) at 16²: prefers dark images, lowest for the darkest."""
    return guides.energy(lambda x: x.flatten(1).mean(1), weight, 16)


def test_the_chosen_chains_are_the_uninterrupted_chains_of_the_best_candidates(tiny_checkpoint):
    model, k, n, steps, at = load(tiny_checkpoint), 3, 5, 6, 2
    guide = brightness(2.0)
    states = {}
    every = model.sample(k * n, seed=7, steps=steps, guide=guide,
                         callback=lambda s: states.setdefault(s.i, s.x.clone()))
    chosen = guide(states[at - 1]).view(n, k).argmin(1) + torch.arange(0, k * n, k)
    x = model.sample(n, seed=7, steps=steps, guide=guide, candidates=k, choose_at=at)
    torch.testing.assert_close(x, every[chosen], atol=1e-5, rtol=0)
    assert not torch.allclose(x, every[::k])  # the choice did pick other candidates


def test_candidates_choose_at_two_thirds_by_default_and_darken_under_a_dark_guide(
        tiny_checkpoint):
    model = load(tiny_checkpoint)
    guide = brightness(2.0)
    default = model.sample(6, seed=2, steps=6, guide=guide, candidates=4)
    assert torch.equal(default, model.sample(6, seed=2, steps=6, guide=guide, candidates=4,
                                             choose_at=4))
    plain = model.sample(6, seed=2, steps=6, guide=guide)
    assert default.mean() < plain.mean()


def test_candidates_without_a_guide_or_from_images_are_refused(tiny_checkpoint, tmp_path,
                                                               capsys):
    model = load(tiny_checkpoint)
    for options, message in [({"candidates": 2}, "a guide to choose by"),
                             ({"candidates": 0, "guide": brightness(1.0)}, "whole number >= 1"),
                             ({"candidates": 2, "guide": brightness(1.0), "cascade": True},
                              "without the cascade")]:
        with pytest.raises(ValueError, match=message):
            model.sample(2, **options)
    with pytest.raises(ValueError, match="chains from noise"):
        model.sample(start=torch.zeros(2, 1, 16, 16), candidates=2, guide=brightness(1.0))
    assert main(["sample", tiny_checkpoint, "--candidates", "2", "--n", "2",
                 "--out", str(tmp_path / "a.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--class" in err


def test_the_cli_chooses_among_candidates_like_the_library(tiny_checkpoint, tmp_path):
    """--class alone is 4 candidates at λ = 3 (the validation's choice)."""
    model, net = load(tiny_checkpoint), guides.load_classifier()[0]
    each = tmp_path / "each"
    assert main(["sample", tiny_checkpoint, "--class", "trouser", "--n", "2", "--steps", "3",
                 "--seed", "1", "--out", str(tmp_path / "a.png"), "--each", str(each),
                 "--no-progress"]) == 0
    x = model.sample(2, steps=3, seed=1, guide=guides.classifier(net, 1, 3.0), candidates=4)
    written = sorted(each.glob("*.png"))
    assert len(written) == 2
    assert np.array_equal(np.stack([np.array(Image.open(f)) for f in written]),
                          to_uint8(x).squeeze(1).numpy())


def test_start_noise_of_candidates_is_the_models_own(tiny_checkpoint):
    """Candidate j·k + i starts where chain j·k + i of an ordinary run of k·n chains does."""
    model = load(tiny_checkpoint)
    cfg, k, n = model.cfg.sampler, 2, 3
    ours = init_noise(k * n, 1, 16, cfg.start_noise, first=model.growth.cascade[0][0],
                      generator=Streams.for_chains(0, 0, k * n))
    zero_steps = model.sample(k * n, seed=0, steps=0)
    assert torch.equal(ours, zero_steps)
    chosen = model.sample(n, seed=0, steps=0, candidates=k, guide=brightness(1.0))
    means = ours.flatten(1).mean(1).view(n, k)
    assert torch.equal(chosen, ours[means.argmin(1) + torch.arange(0, k * n, k)])
