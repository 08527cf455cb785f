"""The paper's StackOverflow next-word transformer, and its named partitions.

Pillutla et al., "Federated Learning with Partial Model Personalization", ICML
2022, Sec. 4 / App. C: a causal transformer with token and position embeddings,
`num_layers` blocks (multi-head self-attention and a ReLU feed-forward layer,
each with a residual connection and layer norm, pre- or post-norm), and an
output decoder tied to the token embedding (plus a bias); `tie_decoder=False`
gives the decoder its own projection, which the `embeddings` and `decoder`
partitions need (one cannot be personal while the other is shared if they are
the same matrix). Adapters are
Houlsby-style bottlenecks (down, ReLU, up) applied to each sub-layer's output
before the residual sum; the up-projection starts at zero so a model with
fresh adapters computes the same function as without them.

Inputs: int64 token ids, shape [batch, sequence_length] (0 is padding).
Outputs: float32 logits, shape [batch, sequence_length, vocab_size].
"""

import dataclasses

import tensorflow as tf

from partial_personalization.models import partition as partition_lib


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes of the transformer. `vocab_size` counts all tokens (words, OOV, pad, BOS, EOS)."""

  vocab_size: int
  sequence_length: int = 20
  num_layers: int = 4
  num_heads: int = 4
  d_model: int = 256
  d_ff: int = 1024
  dropout: float = 0.0
  pre_norm: bool = True
  adapter_size: int = 0  # 0: no adapters.
  tie_decoder: bool = True  # False: decoder/kernel [d_model, vocab] of its own.


# Named sizes. `mini` is the paper's StackOverflow model (about 5.7M parameters
# with a 10,004-token vocabulary); `tiny` is for tests and the demo.
MODEL_SIZES = {
    'mini': dict(num_layers=4, num_heads=4, d_model=256, d_ff=1024),
    'tiny': dict(num_layers=2, num_heads=2, d_model=64, d_ff=128),
}


class Adapter(tf.keras.layers.Layer):
  """Bottleneck adapter: returns x + up(relu(down(x))); starts as the identity."""

  def __init__(self, size, **kwargs):
    super().__init__(**kwargs)
    self.size = size

  def build(self, input_shape):
    self.down = tf.keras.layers.Dense(self.size, activation='relu', name='down')
    self.up = tf.keras.layers.Dense(input_shape[-1], kernel_initializer='zeros', name='up')
    super().build(input_shape)

  def call(self, x):
    return x + self.up(self.down(x))


class TransformerBlock(tf.keras.layers.Layer):
  """Causal self-attention and feed-forward sub-layers with residuals and norms."""

  def __init__(self, config: TransformerConfig, **kwargs):
    super().__init__(**kwargs)
    c = self.config = config
    self.attention = tf.keras.layers.MultiHeadAttention(
        c.num_heads, key_dim=c.d_model // c.num_heads, dropout=c.dropout, name='attention'
    )
    self.attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-5, name='attention_norm')
    self.ffn_in = tf.keras.layers.Dense(c.d_ff, activation='relu', name='ffn_in')
    self.ffn_out = tf.keras.layers.Dense(c.d_model, name='ffn_out')
    self.ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-5, name='ffn_norm')
    self.dropout = tf.keras.layers.Dropout(c.dropout)
    self.adapters = []
    if c.adapter_size:
      self.attention_adapter = Adapter(c.adapter_size, name='attention_adapter')
      self.ffn_adapter = Adapter(c.adapter_size, name='ffn_adapter')
      self.adapters = [self.attention_adapter, self.ffn_adapter]

  def _sublayer(self, x, fn, norm, adapter, training):
    h = norm(x) if self.config.pre_norm else x
    h = self.dropout(fn(h), training=training)
    if adapter is not None:
      h = adapter(h)
    x = x + h
    return x if self.config.pre_norm else norm(x)

  def call(self, x, training=None):
    adapters = self.adapters or [None, None]
    x = self._sublayer(
        x,
        lambda h: self.attention(h, h, use_causal_mask=True, training=training),
        self.attention_norm, adapters[0], training,
    )
    return self._sublayer(
        x, lambda h: self.ffn_out(self.ffn_in(h)), self.ffn_norm, adapters[1], training
    )


def _project(h, weights, bias, *, transpose: bool):
  """h [batch, time, d] @ weights (+ bias) as one 2-D matmul.

  A 3-D @ 2-D `tf.matmul` runs as a broadcasting BatchMatMulV2 whose gradient
  for `weights` is one matmul per sequence, then a sum: 4x the time of the
  same product over [batch * time, d] rows, which dominated training steps.
  """
  d = tf.shape(h)[-1]
  logits = tf.matmul(tf.reshape(h, [-1, d]), weights, transpose_b=transpose) + bias
  logits = tf.reshape(logits, tf.concat([tf.shape(h)[:-1], [-1]], 0))
  logits.set_shape(h.shape[:-1].concatenate(bias.shape))
  return logits


class TiedDecoder(tf.keras.layers.Layer):
  """Logits = h @ E^T + b with E the token embedding matrix (only b is new)."""

  def __init__(self, embedding: tf.keras.layers.Embedding, **kwargs):
    super().__init__(**kwargs)
    self.embedding = embedding

  def build(self, input_shape):
    self.bias = self.add_weight(
        name='bias', shape=[self.embedding.input_dim], initializer='zeros'
    )
    super().build(input_shape)

  def call(self, h):
    return _project(h, self.embedding.embeddings, self.bias, transpose=True)


class UntiedDecoder(tf.keras.layers.Layer):
  """Logits = h @ W + b with W [d_model, vocab_size] a variable of its own."""

  def __init__(self, vocab_size, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = vocab_size

  def build(self, input_shape):
    self.kernel = self.add_weight(
        name='kernel', shape=[input_shape[-1], self.vocab_size],
        initializer=tf.keras.initializers.RandomNormal(stddev=0.02))
    self.bias = self.add_weight(name='bias', shape=[self.vocab_size], initializer='zeros')
    super().build(input_shape)

  def call(self, h):
    return _project(h, self.kernel, self.bias, transpose=False)


def untie_decoder_weights(named: dict, target_shapes: dict) -> dict:
  """Fills an untied model's `decoder/kernel` from a tied model's embedding.

  A FedAvg model trained with the tied decoder starts an untied one computing
  the same function: W = E^T. Returns a new dict; other names are untouched.
  """
  named = dict(named)
  kernel, embedding = 'decoder/kernel:0', 'token_embedding/embeddings:0'
  if kernel in target_shapes and kernel not in named and embedding in named:
    named[kernel] = named[embedding].T.copy()
  return named


class PositionEmbedding(tf.keras.layers.Layer):
  """Adds a learned embedding of each position to its input."""

  def __init__(self, sequence_length, **kwargs):
    super().__init__(**kwargs)
    self.sequence_length = sequence_length

  def build(self, input_shape):
    self.embeddings = self.add_weight(
        name='embeddings',
        shape=[self.sequence_length, input_shape[-1]],
        initializer=tf.keras.initializers.RandomNormal(stddev=0.02),
    )
    super().build(input_shape)

  def call(self, x):
    return x + self.embeddings[: tf.shape(x)[1]]


def create_transformer(config: TransformerConfig) -> tf.keras.Model:
  """Builds the (uncompiled) transformer; layer names are stable across calls."""
  tokens = tf.keras.Input(shape=[config.sequence_length], dtype=tf.int64, name='tokens')
  embedding = tf.keras.layers.Embedding(
      config.vocab_size, config.d_model,
      embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.02),
      name='token_embedding',
  )
  x = PositionEmbedding(config.sequence_length, name='position_embedding')(embedding(tokens))
  x = tf.keras.layers.Dropout(config.dropout)(x)
  for i in range(config.num_layers):
    x = TransformerBlock(config, name=f'block_{i}')(x)
  if config.pre_norm:
    x = tf.keras.layers.LayerNormalization(epsilon=1e-5, name='final_norm')(x)
  if config.tie_decoder:
    logits = TiedDecoder(embedding, name='decoder')(x)
  else:
    logits = UntiedDecoder(config.vocab_size, name='decoder')(x)
  return tf.keras.Model(tokens, logits, name='transformer')


# The partitions of Pillutla et al. (Table 1 / Sec. 4): what is personal.
PARTITIONS = partition_lib.PartitionRegistry()


def _blocks(model):
  return [l for l in model.layers if isinstance(l, TransformerBlock)]


@PARTITIONS.register('none')
def _none(model):
  del model
  return []


@PARTITIONS.register('full')
def _full(model):
  return list(model.variables)


_UNTIED = {'tie_decoder': False}


@PARTITIONS.register('embeddings', model_overrides=_UNTIED)
def _embeddings(model):
  """The paper's "input layer": token and position embeddings (decoder untied)."""
  return (model.get_layer('token_embedding').variables
          + model.get_layer('position_embedding').variables)


@PARTITIONS.register('decoder', model_overrides=_UNTIED)
def _decoder(model):
  """The paper's "output layer": the output projection and its bias (untied)."""
  return model.get_layer('decoder').variables


@PARTITIONS.register('first_block')
def _first_block(model):
  """The first transformer block (the paper's "first block" variant)."""
  return _blocks(model)[0].variables


@PARTITIONS.register('last_block')
def _last_block(model):
  """The last transformer block (the paper's "last block" variant)."""
  return _blocks(model)[-1].variables


@PARTITIONS.register('adapter')
def _adapter(model):
  """Adapters in every block plus all layer norms (needs adapter_size > 0)."""
  personal = []
  for block in _blocks(model):
    if not block.adapters:
      raise ValueError(
          "personalization 'adapter' needs a model with adapters: set "
          '`adapter_size` to a positive size (the paper uses 16 or 64)'
      )
    for adapter in block.adapters:
      personal += adapter.variables
  for layer in model.submodules:
    if isinstance(layer, tf.keras.layers.LayerNormalization):
      personal += layer.variables
  return personal
