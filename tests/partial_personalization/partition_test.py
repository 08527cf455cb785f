"""Shared/personal parameter counts of every named partition of the transformer."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from partial_personalization.models import partition as partition_lib
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
  embeddings = c.vocab_size * d + c.sequence_length * d
  decoder = (0 if c.tie_decoder else d * c.vocab_size) + c.vocab_size
  total = embeddings + c.num_layers * block + 2 * d + decoder
  personal = {
      'none': 0, 'full': total, 'first_block': block, 'last_block': block,
      'adapter': c.num_layers * (adapters + norms) + 2 * d,
      'embeddings': embeddings, 'decoder': decoder,
  }
  return total, personal


@pytest.mark.parametrize('size', ['mini', 'tiny'])
@pytest.mark.parametrize('name,adapter_size', [
    (n, 16 if n == 'adapter' else 0) for n in model_lib.PARTITIONS.names()] + [('adapter', 64)])
def test_partition_counts(size, name, adapter_size):
  config = model_lib.TransformerConfig(
      vocab_size=10004, adapter_size=adapter_size,
      **model_lib.MODEL_SIZES[size], **model_lib.PARTITIONS.model_overrides(name))
  (shared, personal), keras_total = _counts(config, name)
  total, expected_personal = _formula(config)
  assert keras_total == total
  assert personal == expected_personal[name]
  assert shared + personal == total


def test_mini_is_the_papers_size():
  config = model_lib.TransformerConfig(vocab_size=10004, **model_lib.MODEL_SIZES['mini'])
  (shared, _), _ = _counts(config, 'none')
  assert 5.6e6 < shared < 5.8e6   # "about 5.7M parameters"


def test_untied_model_from_tied_weights_computes_the_same_function():
  tied = model_lib.TransformerConfig(vocab_size=50, **model_lib.MODEL_SIZES['tiny'])
  untied = model_lib.TransformerConfig(vocab_size=50, tie_decoder=False,
                                       **model_lib.MODEL_SIZES['tiny'])
  a, b = model_lib.create_transformer(tied), model_lib.create_transformer(untied)
  shapes = {v.name: v.shape for v in b.variables}
  named = model_lib.untie_decoder_weights(partition_lib.named_weights(a), shapes)
  assert named.keys() == shapes.keys()
  for v in b.variables:
    v.assign(named[v.name])
  x = tf.constant([[5, 2, 3] + [0] * 17], tf.int64)
  tf.debugging.assert_near(a(x), b(x), atol=1e-5)


def test_embeddings_and_decoder_partitions_need_the_untied_model():
  for name in ('embeddings', 'decoder'):
    assert model_lib.PARTITIONS.model_overrides(name) == {'tie_decoder': False}
  assert model_lib.PARTITIONS.model_overrides('last_block') == {}


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


@pytest.mark.parametrize('tie_decoder', [True, False])
def test_decoder_as_one_2d_product_is_the_batched_product(tie_decoder):
  """The decoder flattens [batch, time] before its matmul (a speed fix); the
  logits must be those of the batched 3-D product, with static shapes kept."""
  config = model_lib.TransformerConfig(vocab_size=50, tie_decoder=tie_decoder,
                                       **model_lib.MODEL_SIZES['tiny'])
  model = model_lib.create_transformer(config)
  decoder = model.get_layer('decoder')
  h = tf.random.stateless_normal([3, config.sequence_length, config.d_model], seed=[1, 2])
  weights = decoder.embedding.embeddings if tie_decoder else decoder.kernel
  expected = tf.einsum('btd,vd->btv' if tie_decoder else 'btd,dv->btv', h, weights) + decoder.bias
  logits = decoder(h)
  assert logits.shape == (3, config.sequence_length, 50)
  np.testing.assert_allclose(logits.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
  assert model.output_shape == (None, config.sequence_length, 50)
