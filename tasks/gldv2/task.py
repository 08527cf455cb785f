"""GLDv2 landmark recognition (gld23k / gld160k), the paper's protocol.

Data: TFF's federated GLDv2 train split read from TFF's cache layout
(`tasks/gldv2/data`); clients are photographers. TFF's test split is not per
client, so, as in Pillutla et al. (ICML 2022, App. C), each client's examples
are split 50/50 into train and test, seeded by client id
(`tasks/vision/splits`); `heldout_fraction` of the train half is held out for
periodic evaluation and heldout gating.

Preprocessing as the paper's: training images are resized to `image_size`
squared, randomly cropped to `crop_size` and randomly flipped; test images are
resized and centre-cropped. Pixels are scaled to [-1, 1] as in TFF's landmark
baseline. Models: ResNet-18-GN (`tasks/vision/resnet`, ImageNet stem) and
TFF's MobileNetV2 with GroupNorm (`tff.simulation.models.mobilenet_v2`, the
TFF landmark baseline; no adapters).
"""

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.models import partition as partition_lib
from partial_personalization.models import task as task_lib
from tasks.gldv2 import data as data_lib
from tasks.vision import classification
from tasks.vision import resnet
from tasks.vision import splits

MOBILENET_PARTITIONS = partition_lib.PartitionRegistry()
resnet.register_partitions(MOBILENET_PARTITIONS, stem_layers=('initial_conv', 'initial_gn'),
                           head_layers=('logits',), adapters_supported=False)
PARTITIONS = {'resnet18': resnet.PARTITIONS, 'mobilenet_v2': MOBILENET_PARTITIONS}
TEST_FRACTION = 0.5  # The paper's per-client train/test split.


def _rgb_float(element, image_size):
  image = element['image/decoded']
  # A few GLDv2 JPEGs are greyscale: TFF decodes them with one channel.
  image = tf.cond(tf.shape(image)[-1] == 1,
                  lambda: tf.image.grayscale_to_rgb(image), lambda: image[..., :3])
  image = tf.ensure_shape(image, [None, None, 3])
  image = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size])
  label = tf.cast(tf.reshape(element['class'], []), tf.int32)
  return image, label


def _to_unit_range(image):
  return image * (2.0 / 255.0) - 1.0


def create_model(name: str, *, num_classes: int, crop_size: int, adapters: bool,
                 width_multiplier: float, dropout: float) -> tf.keras.Model:
  """ResNet-18-GN (logits) or TFF's MobileNetV2-GN (softmax probabilities).

  Raises:
    ValueError: unknown model, or options the model lacks.
  """
  shape = (crop_size, crop_size, 3)
  if name == 'resnet18':
    if dropout:
      raise ValueError('`dropout` applies to `model=mobilenet_v2`; the ResNet-18 has none')
    return resnet.create_resnet18(resnet.ResNetConfig(
        input_shape=shape, num_classes=num_classes, stem='imagenet', adapters=adapters,
        width_multiplier=width_multiplier))
  if name == 'mobilenet_v2':
    if adapters:
      raise ValueError("MobileNetV2 has no adapters; use personalization 'stem', 'head', "
                       "'representation' or 'full', or `model=resnet18`")
    return tff.simulation.models.mobilenet_v2.create_mobilenet_v2(
        input_shape=shape, alpha=width_multiplier, num_groups=2, num_classes=num_classes,
        dropout_prob=dropout or None)
  raise ValueError(f'unknown GLDv2 model {name!r}; choose one of {sorted(PARTITIONS)}')


def create_task(
    cache_dir: str,
    *,
    variant: str = 'gld23k',
    model: str = 'resnet18',
    personalization: str = 'head',
    dropout: float = 0.0,
    width_multiplier: float = 1.0,
    image_size: int = 256,
    crop_size: int = 224,
    heldout_fraction: float = 0.1,
    batch_size: int = 16,
    max_elements_per_client: int = 512,
    shuffle_buffer_size: int = 128,
    eval_batch_size: int = 32,
    split_seed: int = 0,
) -> task_lib.PersonalizationTask:
  """Builds the GLDv2 task.

  Args:
    cache_dir: Folder holding `gld23k/train/` or `gld160k/train/` in TFF's
      layout (see `data_lib.load_train_data`).
    variant: 'gld23k' (233 clients, 203 classes) or 'gld160k' (1,262 clients,
      2,028 classes).
    model: 'resnet18' (the paper's) or 'mobilenet_v2' (TFF's baseline).
    personalization: none, stem, head, adapter (ResNet only), representation,
      full.
    dropout: MobileNetV2's dropout rate.
    width_multiplier: ResNet width scale, or MobileNetV2's alpha.
    image_size: Side in pixels images are resized to.
    crop_size: Side of the (random for training, central for test) crop; the
      model's input size.
    heldout_fraction: Expected fraction of each client's train half held out.
    batch_size, max_elements_per_client, shuffle_buffer_size: Training batches.
    eval_batch_size: Evaluation batch size.
    split_seed: Seed of the per-client splits.

  Raises:
    FileNotFoundError: no cache at `cache_dir`. ValueError: bad options.
  """
  if model not in PARTITIONS:
    raise ValueError(f'unknown GLDv2 `model` {model!r}; choose one of {sorted(PARTITIONS)}')
  registry = PARTITIONS[model]
  partition_fn = registry.get(personalization)
  if not 0 < crop_size <= image_size:
    raise ValueError(f'need 0 < `crop_size` <= `image_size`, got {crop_size} and {image_size}')
  if not 0 < heldout_fraction < 1:
    raise ValueError(f'`heldout_fraction` must be in (0, 1), got {heldout_fraction}')
  train_all = data_lib.load_train_data(cache_dir, variant)
  h = heldout_fraction * (1 - TEST_FRACTION)
  test, heldout, train = splits.split_client_data(
      train_all, (TEST_FRACTION, h, 1 - TEST_FRACTION - h), seed=split_seed)
  options = dict(num_classes=data_lib.NUM_CLASSES[variant], crop_size=crop_size,
                 width_multiplier=width_multiplier, dropout=dropout, adapters=False)
  options.update(registry.model_overrides(personalization))
  if options['adapters'] and model != 'resnet18':
    raise ValueError("personalization 'adapter' needs `model=resnet18` (MobileNetV2 has no "
                     'adapters)')

  def train_map_fn(element, seed):
    image, label = _rgb_float(element, image_size)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_crop(image, [crop_size, crop_size, 3], seed=crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return _to_unit_range(image), label

  def eval_map_fn(element):
    image, label = _rgb_float(element, image_size)
    image = tf.image.resize_with_crop_or_pad(image, crop_size, crop_size)  # Centre crop.
    return _to_unit_range(image), label

  return classification.create_classification_task(
      name='gldv2', train_data=train, heldout_data=heldout, test_data=test,
      train_map_fn=train_map_fn, eval_map_fn=eval_map_fn,
      image_shape=(crop_size, crop_size, 3),
      keras_model_fn=lambda: create_model(model, **options),
      partition_name=personalization, partition_fn=partition_fn,
      from_logits=model == 'resnet18',
      batch_size=batch_size, max_elements_per_client=max_elements_per_client,
      shuffle_buffer_size=shuffle_buffer_size, eval_batch_size=eval_batch_size)
