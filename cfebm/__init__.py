"""cfebm: energy-based models learned by coarse-to-fine expanding and sampling (ICLR 2021).

    import cfebm
    model = cfebm.load("runs/f32/checkpoints/latest.pt")    # or an export, or "fmnist32-2h"
    x = model.sample(64)                                     # as trained, in [-1, 1]
"""

__version__ = "0.2.0"

# Imported after __version__, which cfebm.trained reads.
from cfebm.trained import TrainedModel, load

__all__ = ["TrainedModel", "__version__", "load"]
