"""cfebm: energy-based models learned by coarse-to-fine expanding and sampling (ICLR 2021)."""

__version__ = "0.1.0"
