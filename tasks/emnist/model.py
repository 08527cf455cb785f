"""EMNIST models: the paper's ResNet-18-GN for 28x28 and a small CNN, with partitions.

`cnn` is the two-convolution network of TFF's EMNIST baselines (conv 32, conv
64, max-pool, dense 128, dense 62) with GroupNorm after each convolution (32
groups, Wu & He's default: on real FEMNIST it trained where 2 or 8 groups, and
no normalization, stalled near chance for an epoch at learning rate 0.1) and,
for the `adapter` partition, a residual 1x1 adapter after each (the ResNet's
adapter, `resnet.residual_adapter`). `resnet18` is `tasks/vision/resnet` with
the 3x3 stride-1 stem and no max-pool (Pillutla et al., ICML 2022, App. C).
Both use the partitions of `resnet.register_partitions`: `stem`, `head`,
`adapter`, `representation`, `full`, `none`.
"""

import dataclasses
import math

import tensorflow as tf

from partial_personalization.models import partition as partition_lib
from tasks.vision import resnet

INPUT_SHAPE = (28, 28, 1)


@dataclasses.dataclass(frozen=True)
class CnnConfig:
  """Small CNN settings; `adapters` is set by the `adapter` partition."""

  num_classes: int = 62
  num_groups: int = 32  # Per layer: the largest divisor of its width up to this.
  adapters: bool = False
  dropout: float = 0.0
  width_multiplier: float = 1.0

  def widths(self) -> tuple[int, int, int]:
    scale = lambda w: max(1, int(w * self.width_multiplier))
    return scale(32), scale(64), scale(128)

  def groups(self, width: int) -> int:
    return math.gcd(self.num_groups, width)


def create_cnn(config: CnnConfig) -> tf.keras.Model:
  """Input float32 [batch, 28, 28, 1]; output logits [batch, num_classes]."""
  c1, c2, dense = config.widths()
  inputs = tf.keras.Input(INPUT_SHAPE, name='images')
  x = inputs
  for name, width in (('stem', c1), ('conv2', c2)):
    x = tf.keras.layers.Conv2D(width, 3, use_bias=False, name=f'{name}/conv')(x)
    groups = config.groups(width)
    x = tf.keras.layers.GroupNormalization(groups, epsilon=1e-5, name=f'{name}/norm')(x)
    if config.adapters:
      x = resnet.residual_adapter(x, groups, f'{name}/adapter')
    x = tf.keras.layers.ReLU(name=f'{name}/relu')(x)
  x = tf.keras.layers.MaxPool2D(2, name='pool')(x)
  x = tf.keras.layers.Dropout(config.dropout, name='dropout1')(x)
  x = tf.keras.layers.Flatten(name='flatten')(x)
  x = tf.keras.layers.Dense(dense, activation='relu', name='dense')(x)
  x = tf.keras.layers.Dropout(config.dropout, name='dropout2')(x)
  logits = tf.keras.layers.Dense(config.num_classes, name='head')(x)
  return tf.keras.Model(inputs, logits, name='emnist_cnn')


def count_cnn_parameters(config: CnnConfig) -> dict[str, int]:
  """Parameters of each partition's personal part, from the architecture alone."""
  c1, c2, dense = config.widths()
  stem = 9 * 1 * c1 + 2 * c1
  conv2 = 9 * c1 * c2 + 2 * c2
  adapters = (c1 * c1 + 2 * c1 + c2 * c2 + 2 * c2) if config.adapters else 0
  flat = 12 * 12 * c2  # 28 -> 26 -> 24 (valid convs) -> 12 (pool).
  hidden = flat * dense + dense
  head = dense * config.num_classes + config.num_classes
  total = stem + conv2 + adapters + hidden + head
  return {'none': 0, 'full': total, 'stem': stem, 'head': head,
          'representation': total - head, 'adapter': adapters + 2 * c1 + 2 * c2}


CNN_PARTITIONS = partition_lib.PartitionRegistry()
resnet.register_partitions(CNN_PARTITIONS, stem_layers=('stem/conv', 'stem/norm'),
                           head_layers=('head',))

# Model name -> its partitions; `create_model` builds it.
PARTITIONS = {'cnn': CNN_PARTITIONS, 'resnet18': resnet.PARTITIONS}


def create_model(name: str, *, num_classes: int, adapters: bool, dropout: float,
                 width_multiplier: float) -> tf.keras.Model:
  """Builds `cnn` or `resnet18`.

  Raises:
    ValueError: unknown name, or dropout asked of the ResNet (it has none).
  """
  if name == 'cnn':
    return create_cnn(CnnConfig(num_classes=num_classes, adapters=adapters, dropout=dropout,
                                width_multiplier=width_multiplier))
  if name == 'resnet18':
    if dropout:
      raise ValueError('`dropout` applies to `model=cnn`; the ResNet-18 has no dropout')
    return resnet.create_resnet18(resnet.ResNetConfig(
        input_shape=INPUT_SHAPE, num_classes=num_classes, stem='small', adapters=adapters,
        width_multiplier=width_multiplier))
  raise ValueError(f'unknown EMNIST model {name!r}; choose one of {sorted(PARTITIONS)}')
