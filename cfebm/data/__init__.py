"""Images for training and evaluation: one package, one module per concern.

- ``images``: the pixel conventions, image sets, ``load_images`` and the reproducible
  ``BatchStream`` (the names below come from it);
- ``readers``: the on-disk formats (IDX, CIFAR pickles, SVHN ``.mat``, LSUN, image folders);
- ``cache``: the multi-resolution uint8 cache that ``cfebm prepare`` writes;
- ``domains``: the two image domains of unpaired translation.
"""

from cfebm.data.images import (
    DATASETS,
    SPLITS,
    BatchStream,
    DataError,
    ImageSet,
    LazyImages,
    TensorImages,
    downsample,
    fake_images,
    load_images,
    random_hflip,
    to_float,
    to_uint8,
)

__all__ = ["DATASETS", "SPLITS", "BatchStream", "DataError", "ImageSet", "LazyImages",
           "TensorImages", "downsample", "fake_images", "load_images", "random_hflip", "to_float",
           "to_uint8"]
