"""Images for training and evaluation: one package, one module per concern.

- ``sets``: the pixel conventions and the image sets (in memory, decoded per item);
- ``images``: datasets by name and split (``load_images``) and the reproducible
  ``BatchStream`` (the names below come from it and from ``sets``);
- ``readers``: the on-disk formats (IDX, CIFAR pickles, SVHN ``.mat``, LSUN, image folders);
- ``cache``: reading the multi-resolution uint8 cache that ``prepare`` writes (``cfebm
  prepare``);
- ``domains``: the two image domains of unpaired translation.
"""

from cfebm.data.images import DATASETS, SPLITS, BatchStream, fake_images, load_images
from cfebm.data.readers import DataError
from cfebm.data.sets import ImageSet, LazyImages, TensorImages, random_hflip, to_float, to_uint8
from cfebm.sampling import downsample

__all__ = ["DATASETS", "SPLITS", "BatchStream", "DataError", "ImageSet", "LazyImages",
           "TensorImages", "downsample", "fake_images", "load_images", "random_hflip", "to_float",
           "to_uint8"]
