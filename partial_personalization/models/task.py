"""What an algorithm needs from a task: data, a Keras model, loss, metrics, partition.

Tasks (`tasks/<name>/task.py`) return a `PersonalizationTask`. The library turns
it into TFF models: `variable_model_fn` (for TFF's FedAvg) and
`reconstruction_model_fn` (u global, v local: for FedAlt/FedSim and
`build_fed_recon`). Keras variable names identify weights across both.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.models import partition as partition_lib

SPLITS = ('train', 'heldout', 'test')


def round_sample(dataset: tf.data.Dataset, *, seed: int, shuffle_buffer_size: int,
                 max_elements: int) -> tf.data.Dataset:
  """A client's examples of one round: the same examples in every local pass.

  A seeded sample of up to `max_elements` examples (a shuffle through
  `shuffle_buffer_size` that does not reshuffle, then `take`), reshuffled on
  each pass over it. Pillutla et al.'s reference code trains every local pass
  (FedAlt's v pass, then its u pass; each epoch) on the same examples; one
  reshuffling shuffle before `take` would draw a different subset per pass
  (two passes over 128 of 256 sentences share about half). It also makes FFGG's
  full-batch steps full-batch on one fixed sample.
  """
  sample = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=False)
  sample = sample.take(max_elements)
  return sample.shuffle(max_elements, seed=seed, reshuffle_each_iteration=True)


@dataclasses.dataclass(frozen=True)
class PersonalizationTask:
  """A federated task with a shared/personal split of its model.

  Attributes:
    name: Task name, e.g. 'stackoverflow'.
    train_data, heldout_data, test_data: Raw `tff.simulation.datasets.ClientData`.
    train_preprocess_fn: (raw dataset, int seed) -> batched training dataset;
      the seed fixes the shuffle, so a round is reproducible.
    eval_preprocess_fn: raw dataset -> batched evaluation dataset.
    keras_model_fn: No-arg function building the uncompiled Keras model.
    loss_fn: No-arg function returning a Keras loss on (labels, logits).
    metrics_fn: No-arg function returning Keras mean-type metrics; the first is
      the one reported per client (e.g. masked next-word accuracy).
    input_spec: (inputs spec, labels spec) of one batch.
    partition_name: Name of the personalization (see the task's registry).
    partition_fn: keras model -> personal variables.
    complete_weights_fn: (named weights loaded from another variant of the
      model, {name: shape} of this model) -> named weights; fills variables the
      other variant lacks from ones it has (e.g. an untied decoder from the
      tied embedding). Identity by default.
    client_groups_fn: No-arg function returning {client id: group} from the
      data's metadata (Stack Exchange: the site), or None if it has none.
    train_dataset_fn: Optional fast path of `train_dataset`: (client id, seed)
      -> the same batches as `train_preprocess_fn` on that client's raw data
      (StackOverflow: token ids cached once, see `token_cache`).
    eval_dataset_fn: Optional fast path of `eval_dataset`: (split, client id)
      -> the same batches as `eval_preprocess_fn`.
    evaluation_loss_fn: Optional loss for evaluation only, where no gradient
      is taken (the same values as `loss_fn`, cheaper); default `loss_fn`.
    data_files: The files the data is read from; a run records their hash and
      refuses to resume on other data (empty: not checked).
  """

  name: str
  train_data: Any
  heldout_data: Any
  test_data: Any
  train_preprocess_fn: Callable[[tf.data.Dataset, int], tf.data.Dataset]
  eval_preprocess_fn: Callable[[tf.data.Dataset], tf.data.Dataset]
  keras_model_fn: Callable[[], tf.keras.Model]
  loss_fn: Callable[[], tf.keras.losses.Loss]
  metrics_fn: Callable[[], list[tf.keras.metrics.Metric]]
  input_spec: Any
  partition_name: str
  partition_fn: partition_lib.PartitionFn
  complete_weights_fn: Callable[[dict, dict], dict] = lambda named, shapes: named
  client_groups_fn: Optional[Callable[[], dict]] = None
  train_dataset_fn: Optional[Callable[[str, int], tf.data.Dataset]] = None
  eval_dataset_fn: Optional[Callable[[str, str], tf.data.Dataset]] = None
  evaluation_loss_fn: Optional[Callable[[], tf.keras.losses.Loss]] = None
  data_files: tuple[str, ...] = ()

  def __post_init__(self):
    if self.evaluation_loss_fn is None:
      object.__setattr__(self, 'evaluation_loss_fn', self.loss_fn)

  def client_data(self, split: str):
    """The raw `ClientData` of 'train', 'heldout' or 'test'.

    Raises:
      ValueError: another split name.
    """
    if split not in SPLITS:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    return {'train': self.train_data, 'heldout': self.heldout_data,
            'test': self.test_data}[split]

  def train_dataset(self, client_id: str, seed: int) -> tf.data.Dataset:
    """A client's shuffled, capped training batches (the shuffle seeded by `seed`)."""
    if self.train_dataset_fn is not None:
      return self.train_dataset_fn(client_id, seed)
    return self.train_preprocess_fn(
        self.train_data.create_tf_dataset_for_client(client_id), seed)

  def eval_dataset(self, split: str, client_id: str) -> tf.data.Dataset:
    """A client's evaluation batches of `split` ('train', 'heldout', 'test')."""
    if self.eval_dataset_fn is not None:
      return self.eval_dataset_fn(split, client_id)
    return self.eval_preprocess_fn(
        self.client_data(split).create_tf_dataset_for_client(client_id))

  @property
  def report_metric(self) -> str:
    with tf.Graph().as_default():
      return self.metrics_fn()[0].name

  def variable_model_fn(self) -> tff.learning.models.VariableModel:
    return tff.learning.models.from_keras_model(
        self.keras_model_fn(), loss=self.loss_fn(),
        input_spec=self.input_spec, metrics=self.metrics_fn())

  def reconstruction_model_fn(self) -> partition_lib.PersonalModel:
    return partition_lib.build_reconstruction_model(
        self.keras_model_fn(), self.partition_fn, self.input_spec)

  @functools.cached_property
  def partition(self) -> partition_lib.VariablePartition:
    with tf.Graph().as_default():
      return partition_lib.VariablePartition.from_model(
          self.keras_model_fn(), self.partition_fn)

  def initial_weights(self, seed: int) -> dict:
    """Named initial weights of the Keras model, reproducible for a seed."""
    with tf.Graph().as_default():
      tf.keras.utils.set_random_seed(seed)
      model = self.keras_model_fn()
      init = tf.compat.v1.global_variables_initializer()
      with tf.compat.v1.Session() as sess:
        sess.run(init)
        return dict(zip([v.name for v in model.variables], sess.run(model.variables)))
