"""Shared/personal parameter counts of every named partition of the transformer."""

import sys

import pytest
import tensorflow as tf

from partial_personalization import partition as partition_lib
from tasks.stackoverflow import model as model_lib


def _counts(config, name):
  with tf.Graph().as_default():
    model = model_lib.create_transformer(config)
    part = partition_lib.VariablePartition.from_model(model, model_lib.PARTITIONS.get(name))
    return part.num_parameters(), model.count_params()


def _formula(c):
  """Parameter counts from the architecture (Sec. 4 of the paper)."""
  d, f, a = c.d_model, c.d_ff, c.adapter_size
  attention = 4 * (d * d + d)             # q, k, v and output projections
  ffn = d * f + f + f * d + d
  norms = 2 * 2 * d
  adapters = 2 * (d * a + a + a * d + d) if a else 0
  block = attention + ffn + norms + adapters
  total = c.vocab_size * d + c.sequence_length * d + c.num_layers * block + 2 * d + c.vocab_size
  personal = {
      'none': 0, 'full': total, 'first_block': block, 'last_block': block,
      'adapter': c.num_layers * (adapters + norms) + 2 * d,
  }
  return total, personal


@pytest.mark.parametrize('size', ['mini', 'tiny'])
@pytest.mark.parametrize('name', model_lib.PARTITIONS.names())
def test_partition_counts(size, name):
  config = model_lib.TransformerConfig(
      vocab_size=10004, adapter_size=16 if name == 'adapter' else 0,
      **model_lib.MODEL_SIZES[size])
  (shared, personal), keras_total = _counts(config, name)
  total, expected_personal = _formula(config)
  assert keras_total == total
  assert personal == expected_personal[name]
  assert shared + personal == total


def test_mini_is_the_papers_size():
  config = model_lib.TransformerConfig(vocab_size=10004, **model_lib.MODEL_SIZES['mini'])
  (shared, _), _ = _counts(config, 'none')
  assert 5.6e6 < shared < 5.8e6   # "about 5.7M parameters"


def test_adapter_partition_needs_adapters():
  config = model_lib.TransformerConfig(vocab_size=100, **model_lib.MODEL_SIZES['tiny'])
  with pytest.raises(ValueError, match='adapter_size'):
    _counts(config, 'adapter')


def test_unknown_partition_names_the_choices():
  with pytest.raises(ValueError, match='last_block'):
    model_lib.PARTITIONS.get('output_layer')


def test_fresh_adapters_are_the_identity():
  base = model_lib.TransformerConfig(vocab_size=50, **model_lib.MODEL_SIZES['tiny'])
  tf.keras.utils.set_random_seed(1)
  plain = model_lib.create_transformer(base)
  with_adapters = model_lib.create_transformer(
      model_lib.TransformerConfig(vocab_size=50, adapter_size=4, **model_lib.MODEL_SIZES['tiny']))
  named = partition_lib.named_weights(plain)
  for v in with_adapters.variables:
    if v.name in named:
      v.assign(named[v.name])
  x = tf.constant([[1, 2, 3] + [0] * 17], tf.int64)
  tf.debugging.assert_near(plain(x), with_adapters(x), atol=1e-5)


def test_split_merge_round_trip():
  config = model_lib.TransformerConfig(vocab_size=50, **model_lib.MODEL_SIZES['tiny'])
  model = model_lib.create_transformer(config)
  part = partition_lib.VariablePartition.from_model(model, model_lib.PARTITIONS.get('last_block'))
  named = partition_lib.named_weights(model)
  shared, personal = part.split(named)
  assert all(n.startswith('block_1/') for n in part.personal_names.trainable)
  merged = part.merge(shared, personal)
  assert merged.keys() == named.keys()
  assert all((merged[k] == named[k]).all() for k in named)
  with pytest.raises(KeyError, match='lack'):
    part.split({k: v for k, v in named.items() if 'block_1' not in k})


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
