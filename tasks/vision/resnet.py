"""ResNet-18 with GroupNorm and residual adapters, and its partitions.

The paper's vision model (Pillutla et al., ICML 2022, Sec. 5 and App. C):
ResNet-18 (He et al. 2016, BasicBlocks [2, 2, 2, 2], widths 64-512) with
GroupNorm instead of BatchNorm, since batch statistics do not suit federated
clients (Hsieh et al. 2020). Two stems:
* `imagenet` (GLDv2): 7x7 stride-2 conv, then 3x3 stride-2 max-pool;
* `small` (EMNIST 28x28): 3x3 stride-1 conv, no max-pool.

Residual adapters (Rebuffi et al. 2017, the paper's "adapter" partition): after
each 3x3 conv + GroupNorm of a block, `x + GN(conv1x1(x))` with C x C
weights. Their GroupNorm scale starts at zero, so a model with adapters computes
exactly the model without them until they are trained; a pretrained backbone
therefore starts every adapter run unchanged.

Partitions (what is personal): `stem` (input layer: first conv and its
norm), `head` (output layer: the final dense layer), `adapter` (all adapters
and all normalization layers; builds the model with adapters),
`representation` (all but the head), `full`, `none`.
"""

import dataclasses
from typing import Sequence

import tensorflow as tf

from partial_personalization.models import partition as partition_lib

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """ResNet-18-GN settings.

  Attributes:
    input_shape: (height, width, channels) of one image, e.g. (28, 28, 1).
    num_classes: Output logits.
    stem: 'imagenet' (7x7/2 conv + max-pool) or 'small' (3x3/1 conv).
    num_groups: GroupNorm groups (the paper uses 2).
    adapters: Whether blocks carry residual adapters.
    width_multiplier: Scales every width (1.0: the paper's ResNet-18; tests
      use small values).
  """

  input_shape: tuple
  num_classes: int
  stem: str = 'imagenet'
  num_groups: int = 2
  adapters: bool = False
  width_multiplier: float = 1.0

  def widths(self) -> list[int]:
    return [max(self.num_groups, int(w * self.width_multiplier)) for w in STAGE_WIDTHS]


def _norm(groups, name, *, zero_init=False):
  return tf.keras.layers.GroupNormalization(
      groups=groups, epsilon=1e-5, name=name,
      gamma_initializer='zeros' if zero_init else 'ones')


def _conv(filters, kernel, strides, name):
  return tf.keras.layers.Conv2D(
      filters, kernel, strides=strides, padding='same', use_bias=False,
      kernel_initializer='he_normal', name=name)


def residual_adapter(x, groups: int, name: str):
  """x + GN(conv1x1(x)), identity at initialization (zero GroupNorm scale)."""
  y = _conv(x.shape[-1], 1, 1, f'{name}/conv')(x)
  y = _norm(groups, f'{name}/norm', zero_init=True)(y)
  return tf.keras.layers.Add(name=f'{name}/add')([x, y])


def _basic_block(x, filters, strides, config, name):
  groups = config.num_groups
  shortcut = x
  y = _conv(filters, 3, strides, f'{name}/conv1')(x)
  y = _norm(groups, f'{name}/norm1')(y)
  if config.adapters:
    y = residual_adapter(y, groups, f'{name}/adapter1')
  y = tf.keras.layers.ReLU(name=f'{name}/relu1')(y)
  y = _conv(filters, 3, 1, f'{name}/conv2')(y)
  y = _norm(groups, f'{name}/norm2')(y)
  if config.adapters:
    y = residual_adapter(y, groups, f'{name}/adapter2')
  if strides != 1 or x.shape[-1] != filters:
    shortcut = _conv(filters, 1, strides, f'{name}/shortcut_conv')(x)
    shortcut = _norm(groups, f'{name}/shortcut_norm')(shortcut)
  y = tf.keras.layers.Add(name=f'{name}/add')([shortcut, y])
  return tf.keras.layers.ReLU(name=f'{name}/out')(y)


def create_resnet18(config: ResNetConfig) -> tf.keras.Model:
  """ResNet-18-GN returning logits [batch, num_classes] (float32).

  Input: float32 images [batch, *config.input_shape].

  Raises:
    ValueError: unknown stem.
  """
  if config.stem not in ('imagenet', 'small'):
    raise ValueError(f"stem must be 'imagenet' or 'small', got {config.stem!r}")
  widths = config.widths()
  inputs = tf.keras.Input(config.input_shape, name='images')
  if config.stem == 'imagenet':
    x = _conv(widths[0], 7, 2, 'stem/conv')(inputs)
  else:
    x = _conv(widths[0], 3, 1, 'stem/conv')(inputs)
  x = _norm(config.num_groups, 'stem/norm')(x)
  x = tf.keras.layers.ReLU(name='stem/relu')(x)
  if config.stem == 'imagenet':
    x = tf.keras.layers.MaxPool2D(3, 2, padding='same', name='stem/pool')(x)
  for stage, (width, blocks) in enumerate(zip(widths, BLOCKS_PER_STAGE)):
    for block in range(blocks):
      strides = 2 if stage > 0 and block == 0 else 1
      x = _basic_block(x, width, strides, config, f'stage{stage + 1}_block{block + 1}')
  x = tf.keras.layers.GlobalAveragePooling2D(name='pool')(x)
  logits = tf.keras.layers.Dense(config.num_classes, name='head')(x)
  return tf.keras.Model(inputs, logits, name='resnet18_gn')


def count_parameters(config: ResNetConfig) -> dict[str, int]:
  """Parameters of each partition's personal part, from the architecture alone.

  Independent of Keras: used by the tests and docs to check the partitions.
  """
  widths = config.widths()
  channels = config.input_shape[-1]
  kernel = 7 if config.stem == 'imagenet' else 3
  stem = kernel * kernel * channels * widths[0] + 2 * widths[0]
  body = norms = adapters = 0
  previous = widths[0]
  for stage, (width, blocks) in enumerate(zip(widths, BLOCKS_PER_STAGE)):
    for block in range(blocks):
      body += 9 * previous * width + 9 * width * width
      norms += 2 * 2 * width
      if config.adapters:
        adapters += 2 * (width * width + 2 * width)
      if (stage > 0 and block == 0) or previous != width:
        body += previous * width
        norms += 2 * width
      previous = width
  head = previous * config.num_classes + config.num_classes
  total = stem + body + norms + adapters + head
  return {
      'none': 0, 'full': total, 'stem': stem, 'head': head, 'representation': total - head,
      # The stem's norm is counted in `stem`; `adapter` holds all norms.
      'adapter': adapters + norms + 2 * widths[0],
  }


def is_norm(layer) -> bool:
  return isinstance(layer, tf.keras.layers.GroupNormalization)


def register_partitions(registry: partition_lib.PartitionRegistry, *,
                        stem_layers: Sequence[str], head_layers: Sequence[str],
                        adapters_supported: bool = True) -> None:
  """Registers `none`, `full`, `stem`, `head` and `adapter` for a CNN family.

  Args:
    stem_layers, head_layers: Names of the layers forming the input and the
      output layer of the family's models.
    adapters_supported: False for a family without adapters (e.g. TFF's
      MobileNetV2): `adapter` then raises ValueError naming the alternatives.
  """

  @registry.register('none')
  def _none(model):
    del model
    return []

  @registry.register('full')
  def _full(model):
    return list(model.variables)

  @registry.register('stem')
  def _stem(model):
    """The input layer: the first convolution and its normalization."""
    return [v for name in stem_layers for v in model.get_layer(name).variables]

  @registry.register('head')
  def _head(model):
    """The output layer: the final dense layer (kernel and bias)."""
    return [v for name in head_layers for v in model.get_layer(name).variables]

  @registry.register('representation')
  def _representation(model):
    """All but the output layer (the extreme opposite of `head`)."""
    head = {v.ref() for name in head_layers for v in model.get_layer(name).variables}
    return [v for v in model.variables if v.ref() not in head]

  @registry.register('adapter', model_overrides={'adapters': True})
  def _adapter(model):
    """Residual adapters of every block plus every normalization layer."""
    if not adapters_supported:
      raise ValueError("this model has no adapters; use personalization 'stem', 'head' or "
                       "'full', or `model=resnet18`")
    personal = [v for layer in model.layers if is_norm(layer) or '/adapter' in layer.name
                for v in layer.variables]
    if not any('/adapter' in v.name for v in personal):
      raise ValueError("personalization 'adapter' needs a model built with adapters=True")
    return personal


PARTITIONS = partition_lib.PartitionRegistry()
register_partitions(PARTITIONS, stem_layers=('stem/conv', 'stem/norm'), head_layers=('head',))
