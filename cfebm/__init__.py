"""cfebm: energy-based models learned by coarse-to-fine expanding and sampling (ICLR 2021).

    import cfebm
    model = cfebm.load("runs/f32/checkpoints/latest.pt")    # or an export, or "fmnist32"
    x = model.sample(64)                                     # as trained, in [-1, 1]
"""

__version__ = "0.2.0"

from cfebm.trained import TrainedModel, load  # noqa: E402  (after __version__, which it reads)

__all__ = ["TrainedModel", "load", "__version__"]
