"""GLDv2 federated data from TFF's cache layout, with a fix for TFF 0.87's cache lookup.

TFF's `tff.simulation.datasets.gldv2.load_data(cache_dir, gld23k)` writes and
reads `<cache_dir>/gld23k|gld160k/train/<user_id>` (one TFRecord per user,
features `image/encoded_jpeg` and `class`) and `.../test.tfRecord`. In TFF
0.87, `vision_datasets_utils.load_data_from_cache` hands
`FilePerUserClientData.create_from_dir` the two-argument `load_tfrecord`, so
every cache hit raises a TypeError that `load_data` swallows, and it starts a
full download instead. `load_train_data` is that same cache read with the
logger tag bound; everything else (file layout, parsing, JPEG decoding) is
TFF's code. Remove it when `tests/gldv2_test.py::test_tff_cache_bug_still_present`
fails, i.e. TFF reads its cache again.
"""

import functools
import os

import tensorflow_federated as tff
# TFF's parser of its GLDv2 TFRecords; not exported under tff.simulation.
from partial_personalization.execution.tff_compat import vision_datasets_utils

gldv2 = tff.simulation.datasets.gldv2
VARIANTS = {'gld23k': gldv2.MINI_GLD_CACHE, 'gld160k': gldv2.FED_GLD_CACHE}
NUM_CLASSES = {'gld23k': 203, 'gld160k': 2028}


def train_dir(cache_dir: str, variant: str) -> str:
  """`<cache_dir>/<gld23k|gld160k>/train`, where TFF keeps one TFRecord per user."""
  if variant not in VARIANTS:
    raise ValueError(f'unknown GLDv2 variant {variant!r}; choose one of {sorted(VARIANTS)}')
  return os.path.join(cache_dir, VARIANTS[variant], gldv2.TRAIN_SUB_DIR)


def load_train_data(cache_dir: str, variant: str = 'gld23k') -> tff.simulation.datasets.ClientData:
  """TFF's federated GLDv2 train split read from its cache (no download).

  Returns:
    `ClientData` of users; elements are OrderedDicts `image/decoded` (uint8
    [H, W, C], JPEG-decoded) and `class` (int64 [1]).

  Raises:
    ValueError: unknown variant.
    FileNotFoundError: no cache at the expected place (names it and how to
      make it).
  """
  path = train_dir(cache_dir, variant)
  if not os.path.isdir(path) or not os.listdir(path):
    raise FileNotFoundError(
        f'no GLDv2 cache at {path}. Point `cache_dir` at the folder holding {VARIANTS[variant]}/'
        'train/<user_id> TFRecords, as written by tff.simulation.datasets.gldv2.load_data '
        '(run it once on a machine with network access, then copy the folder); see docs/data.md')
  load_tfrecord = functools.partial(vision_datasets_utils.load_tfrecord, logger_tag=gldv2.LOGGER)
  return tff.simulation.datasets.FilePerUserClientData.create_from_dir(path, load_tfrecord)
