"""EMNIST-62 character recognition, read by TFF's own federated EMNIST loader.

Data: `tff.simulation.datasets.emnist.load_data(only_digits, cache_dir)` on
`<cache_dir>/emnist_all.sqlite`, written from real LEAF FEMNIST by
`convert_lib` (clients are writers). Train and test are TFF's splits; a
heldout part (`heldout_fraction` of each writer's train examples, seeded by
writer id, `tasks/vision/splits`) serves periodic evaluation and heldout
gating. Images are 28x28x1 float32 with 1.0 = background, as TFF stores them;
training adds no augmentation (the paper's EMNIST setup).
"""

import os

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.models import task as task_lib
from tasks.emnist import convert_lib
from tasks.emnist import model as model_lib
from tasks.vision import classification
from tasks.vision import splits

MODELS = tuple(model_lib.PARTITIONS)


def _to_image_and_label(element):
  return tf.expand_dims(element['pixels'], -1), tf.cast(element['label'], tf.int32)


def create_task(
    cache_dir: str,
    *,
    model: str = 'cnn',
    personalization: str = 'head',
    dropout: float = 0.0,
    width_multiplier: float = 1.0,
    only_digits: bool = False,
    heldout_fraction: float = 0.1,
    batch_size: int = 20,
    max_elements_per_client: int = 512,
    shuffle_buffer_size: int = 512,
    eval_batch_size: int = 128,
    split_seed: int = 0,
) -> task_lib.PersonalizationTask:
  """Builds the EMNIST task.

  Args:
    cache_dir: Folder holding `emnist_all.sqlite` (`runners/convert_femnist`).
    model: 'cnn' or 'resnet18' (the paper's ResNet-18-GN with a 3x3 stem).
    personalization: A partition of the model: none, stem, head, adapter,
      representation, full.
    dropout: Dropout rate of the CNN.
    width_multiplier: Scales every layer width (1.0: the published sizes).
    only_digits: TFF's 10-class digits-only splits instead of 62 classes.
    heldout_fraction: Expected fraction of each writer's train examples held
      out (0 < f < 1).
    batch_size, max_elements_per_client, shuffle_buffer_size: Training batches.
    eval_batch_size: Evaluation batch size.
    split_seed: Seed of the heldout split.

  Raises:
    FileNotFoundError: the converted database is missing (names the fix).
    ValueError: unknown model or partition, or a bad fraction.
  """
  if model not in model_lib.PARTITIONS:
    raise ValueError(f'unknown EMNIST `model` {model!r}; choose one of {list(MODELS)}')
  registry = model_lib.PARTITIONS[model]
  partition_fn = registry.get(personalization)
  if not 0 < heldout_fraction < 1:
    raise ValueError(f'`heldout_fraction` must be in (0, 1), got {heldout_fraction}')
  database = os.path.join(cache_dir, convert_lib.DATABASE_FILENAME)
  if not os.path.isfile(database):
    # TFF's loader would try to download it; offline that hangs or fails late.
    raise FileNotFoundError(
        f'{database} not found; convert LEAF FEMNIST first: bazel run '
        f'//runners:convert_femnist -- --output_dir={cache_dir}')
  train_all, test = tff.simulation.datasets.emnist.load_data(
      only_digits=only_digits, cache_dir=cache_dir)
  heldout, train = splits.split_client_data(
      train_all, (heldout_fraction, 1 - heldout_fraction), seed=split_seed)
  options = dict(num_classes=10 if only_digits else convert_lib.NUM_CLASSES,
                 dropout=dropout, width_multiplier=width_multiplier,
                 **registry.model_overrides(personalization))
  options.setdefault('adapters', False)
  return classification.create_classification_task(
      name='emnist', train_data=train, heldout_data=heldout, test_data=test,
      train_map_fn=lambda element, seed: _to_image_and_label(element),
      eval_map_fn=_to_image_and_label,
      image_shape=model_lib.INPUT_SHAPE,
      keras_model_fn=lambda: model_lib.create_model(model, **options),
      partition_name=personalization, partition_fn=partition_fn,
      batch_size=batch_size, max_elements_per_client=max_elements_per_client,
      shuffle_buffer_size=shuffle_buffer_size, eval_batch_size=eval_batch_size,
      data_files=(database,))
