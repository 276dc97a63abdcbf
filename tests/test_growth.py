import pytest

from cfebm.config import GrowthConfig
from cfebm.growth import growth_at, stage_starts, total_images

CFG = GrowthConfig(resolutions=(8, 16, 32), batch_size=(4, 2, 1), lr=(1e-3, 2e-3, 3e-3),
                   n_steps=(15, 30, 50), fade_images=(0, 40, 100), stage_images=(100, 80, 200))


@pytest.mark.parametrize("n, stage, resolution, beta", [
    (0, 0, 8, 1.0),
    (99, 0, 8, 1.0),       # the first stage never fades
    (100, 1, 16, 0.0),     # a new stage starts at β = 0
    (110, 1, 16, 0.25),
    (140, 1, 16, 1.0),     # fade over 40 images
    (179, 1, 16, 1.0),
    (180, 2, 32, 0.0),
    (230, 2, 32, 0.5),
    (379, 2, 32, 1.0),
    (10_000, 2, 32, 1.0),  # past the end: the last stage, fully grown
])
def test_stage_boundaries(n, stage, resolution, beta):
    g = growth_at(n, CFG)
    assert (g.stage, g.resolution, g.beta) == (stage, resolution, pytest.approx(beta))
    assert g.batch_size == CFG.batch_size[stage] and g.lr == CFG.lr[stage]
    assert g.n_steps == CFG.n_steps[stage]
    assert g.n_steps_coarse == (CFG.n_steps[stage - 1] if stage else 0)
    assert g.images_in_stage == n - (0, 100, 180)[stage]
    assert g.cascade == ((8, 15), (16, 30), (32, 50))[:stage + 1]


def test_beta_is_monotone_within_a_stage_and_total():
    assert stage_starts(CFG) == [0, 100, 180, 380] and total_images(CFG) == 380
    for start, stop in [(100, 180), (180, 380)]:
        betas = [growth_at(n, CFG).beta for n in range(start, stop)]
        assert betas == sorted(betas) and betas[-1] == 1.0


def test_zero_fade_means_no_fade_and_negative_raises():
    cfg = GrowthConfig(resolutions=(8, 16), batch_size=(1, 1), lr=(1e-3, 1e-3), n_steps=(1, 1),
                       fade_images=(0, 0), stage_images=(10, 10))
    assert growth_at(10, cfg).beta == 1.0
    with pytest.raises(ValueError, match="n_images must be >= 0, got -1"):
        growth_at(-1, cfg)


@pytest.mark.parametrize("n, lr", [
    (50, 1e-3), (150, 2e-3),  # earlier stages keep their lr
    (180, 3e-3), (280, 3e-3),  # the last stage's fade (180..280) at full lr
    (330, 1.5e-3),             # halfway from the fade's end (280) to the schedule's end (380)
    (355, 0.75e-3), (380, 0.0), (10_000, 0.0),
])
def test_linear_lr_decay_runs_from_the_last_fade_to_the_end(n, lr):
    cfg = GrowthConfig(**{**vars(CFG), "lr_decay": "linear"})
    assert growth_at(n, cfg).lr == pytest.approx(lr, abs=1e-12)
    assert growth_at(n, CFG).lr == CFG.lr[growth_at(n, CFG).stage]  # "none": constant


def test_unknown_lr_decay_is_refused():
    with pytest.raises(ValueError,
                       match="growth.lr_decay must be one of none, linear, got 'cosine'"):
        GrowthConfig(lr_decay="cosine")
