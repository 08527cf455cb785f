"""StackOverflow next-word prediction on TFF's StackOverflow data format.

Data is read through TFF's loader
(`tff.simulation.datasets.stackoverflow.load_data(cache_dir)`) from a
`stackoverflow.sqlite` written by `convert_lib` (or TFF's own file);
sentences become token ids with TFF's own StackOverflow preprocessing
(vocabulary of the most frequent train words, one OOV bucket, pad=0, BOS, EOS;
so 10,000 words give 10,004 tokens). Accuracy is TFF's masked accuracy without
pad, OOV, BOS and EOS; the loss is cross-entropy over non-pad tokens.
"""

import functools
import os

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.models import task as task_lib
from tasks.stackoverflow import convert_lib
from tasks.stackoverflow import model as model_lib
from tasks.stackoverflow import token_cache

_preprocessing = tff.simulation.baselines.stackoverflow.word_prediction_preprocessing
PARTITIONS = model_lib.PARTITIONS


class MaskedSparseCrossEntropy(tf.keras.losses.Loss):
  """Mean cross-entropy over tokens whose label is not padding (id 0).

  `fused=True` uses TensorFlow's softmax-cross-entropy kernel, which computes
  the gradient together with the loss: the fastest for training. With
  `fused=False` the loss is log-sum-exp minus the label's logit, the same
  value (to float rounding) in half the time when no gradient is taken:
  the task's `evaluation_loss_fn`.

  A call with the very tensors of the previous call returns the previous
  result instead of a second softmax over the 10k-token vocabulary: TFF's
  Keras wrapper (`tff.learning.models.from_keras_model`, used by FedAvg)
  computes the batch loss for the gradient and then again, on the same
  tensors, for its `loss` metric, and that second softmax is a third of a
  training step. Tensors are immutable, so the reuse cannot change a value.
  """

  def __init__(self, pad_token=0, fused=True, name='masked_cross_entropy', **kwargs):
    super().__init__(name=name, **kwargs)
    self.pad_token = pad_token
    self.fused = fused
    self._last = None  # (y_true, y_pred, loss) of the previous call.

  def call(self, y_true, y_pred):
    y_true = tf.cast(y_true, tf.int64)
    if self.fused:
      per_token = tf.keras.losses.sparse_categorical_crossentropy(
          y_true, y_pred, from_logits=True)
    else:
      per_token = (tf.reduce_logsumexp(y_pred, axis=-1)
                   - tf.gather(y_pred, y_true, batch_dims=len(y_true.shape)))
    mask = tf.cast(tf.not_equal(y_true, self.pad_token), per_token.dtype)
    return tf.reduce_sum(per_token * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

  def __call__(self, y_true, y_pred, sample_weight=None):
    # Already reduced over tokens: skip Keras' own reduction and masking.
    if sample_weight is None and self._last is not None and (
        self._last[0] is y_true and self._last[1] is y_pred):
      return self._last[2]
    loss = self.call(y_true, y_pred)
    self._last = (y_true, y_pred, loss)
    return loss

  def get_config(self):
    return {**super().get_config(), 'pad_token': self.pad_token, 'fused': self.fused}


def create_task(
    cache_dir: str,
    *,
    model_size: str = 'tiny',
    personalization: str = 'last_block',
    adapter_size: int = 0,
    dropout: float = 0.0,
    vocab_size: int = 10000,
    sequence_length: int = 20,
    batch_size: int = 16,
    max_elements_per_client: int = 256,
    shuffle_buffer_size: int = 256,
    eval_batch_size: int = 64,
) -> task_lib.PersonalizationTask:
  """Builds the StackOverflow task.

  Args:
    cache_dir: Folder holding `stackoverflow.sqlite` and
      `stackoverflow.word_count` (see `runners/convert_stackexchange`).
    model_size: A key of `model_lib.MODEL_SIZES` ('tiny', 'mini').
    personalization: A partition name of `PARTITIONS`.
    adapter_size: Bottleneck size of adapters (0: none; needed by 'adapter').
    dropout: Dropout rate of the transformer (the paper's regularization study).
    vocab_size: Number of vocabulary words (tokens = words + 4).
    sequence_length: Tokens per example (truncated / padded).
    batch_size: Training batch size (examples).
    max_elements_per_client: Cap on training examples a client uses per round.
    shuffle_buffer_size: Per-client shuffle buffer for training.
    eval_batch_size: Evaluation batch size.

  Raises:
    FileNotFoundError: the converted data is missing (names the command that
      creates it). ValueError: an unknown model size or personalization.
  """
  if model_size not in model_lib.MODEL_SIZES:
    raise ValueError(f'unknown model_size {model_size!r}; choose one of {list(model_lib.MODEL_SIZES)}')
  partition_fn = PARTITIONS.get(personalization)
  if personalization == 'adapter' and adapter_size <= 0:
    raise ValueError("personalization 'adapter' needs `adapter_size` > 0 (the paper uses 16 or 64)")
  vocab = convert_lib.load_vocab(cache_dir, vocab_size)
  convert_lib.check_loadable(cache_dir)
  train, heldout, test = tff.simulation.datasets.stackoverflow.load_data(cache_dir=cache_dir)
  special = _preprocessing.get_special_tokens(len(vocab), num_out_of_vocab_buckets=1)
  config = model_lib.TransformerConfig(
      vocab_size=len(vocab) + 4, sequence_length=sequence_length,
      adapter_size=adapter_size, dropout=dropout,
      **model_lib.MODEL_SIZES[model_size], **PARTITIONS.model_overrides(personalization))

  train_spec = tff.simulation.baselines.ClientSpec(
      num_epochs=1, batch_size=batch_size, max_elements=max_elements_per_client,
      shuffle_buffer_size=1)  # Shuffling is done below, with a seed.
  to_train_batches = _preprocessing.create_preprocess_fn(
      train_spec, vocab, sequence_length=sequence_length)
  to_eval_batches = _preprocessing.create_preprocess_fn(
      tff.simulation.baselines.ClientSpec(num_epochs=1, batch_size=eval_batch_size, shuffle_buffer_size=1),
      vocab, sequence_length=sequence_length)

  def train_preprocess_fn(dataset, seed):
    return to_train_batches(task_lib.round_sample(
        dataset, seed=seed, shuffle_buffer_size=shuffle_buffer_size,
        max_elements=max_elements_per_client))

  # The same batches from token ids computed once (token_cache); built on
  # first use, so tasks that never make a dataset never tokenize.
  @functools.cache
  def tokens():
    return token_cache.load_or_build(
        cache_dir, {'train': train, 'heldout': heldout, 'test': test}, vocab, sequence_length)

  def train_dataset_fn(client_id, seed):
    return token_cache.batched_dataset(
        tokens()['train'].client_tokens(client_id), batch_size=batch_size,
        sample=functools.partial(task_lib.round_sample, seed=seed,
                                 shuffle_buffer_size=shuffle_buffer_size,
                                 max_elements=max_elements_per_client))

  def eval_dataset_fn(split, client_id):
    return token_cache.batched_dataset(
        tokens()[split].client_tokens(client_id), batch_size=eval_batch_size)

  def metrics_fn():
    masked = [special.padding, *special.out_of_vocab,
              special.beginning_of_sentence, special.end_of_sentence]
    return [tff.simulation.baselines.keras_metrics.MaskedCategoricalAccuracy(
        masked_tokens=masked, name='accuracy')]

  spec = tf.TensorSpec([None, sequence_length], tf.int64)
  return task_lib.PersonalizationTask(
      name='stackoverflow',
      train_data=train, heldout_data=heldout, test_data=test,
      train_preprocess_fn=train_preprocess_fn,
      eval_preprocess_fn=to_eval_batches,
      keras_model_fn=lambda: model_lib.create_transformer(config),
      loss_fn=MaskedSparseCrossEntropy,
      evaluation_loss_fn=functools.partial(MaskedSparseCrossEntropy, fused=False),
      metrics_fn=metrics_fn,
      input_spec=(spec, spec),
      partition_name=personalization,
      partition_fn=partition_fn,
      complete_weights_fn=model_lib.untie_decoder_weights,
      client_groups_fn=lambda: convert_lib.load_client_groups(cache_dir),
      train_dataset_fn=train_dataset_fn,
      eval_dataset_fn=eval_dataset_fn,
      data_files=tuple(os.path.join(cache_dir, name) for name in (
          convert_lib.DATABASE_FILENAME, convert_lib.WORD_COUNT_FILENAME)),
  )
