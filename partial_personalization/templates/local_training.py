"""Local-training helpers that client updates are made of (inside `tf.function`s).

Every algorithm's client update (`algorithms/`) and the evaluation
computations (`evaluation/computations.py`) build the model with
`model_parts`, step with `local_sgd` (one pass, one gradient per batch for
the given `Trainable`s) or their own loop over `batches_after`, and report
`read_metrics` and `read_weights`. Steps use `tff.learning.optimizers`
(functional optimizers) whose state starts fresh every pass: client optimizer
state is not persisted, as in Pillutla et al. (ICML 2022).
"""

import collections
from typing import Callable, NamedTuple, Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.templates import client_work

ModelWeights = tff.learning.models.ModelWeights
# Units of tau_u and tau_v: passes over the client's data, or batches.
LOCAL_UNITS = ('epochs', 'steps')


def check_local_unit(local_unit: str) -> None:
  """Raises ValueError unless `local_unit` is one of `LOCAL_UNITS`."""
  if local_unit not in LOCAL_UNITS:
    raise ValueError(f'local_unit must be one of {LOCAL_UNITS}, got {local_unit!r}')


class Trainable(NamedTuple):
  """Variables that one local pass steps, with their optimizer.

  `penalty`, when given, maps the variables to the gradient of a regularizer
  added to the loss gradient: `personal_l2 * v` (weight decay of v) or
  `lambda * (v - u_t)` (Ditto's pull toward the broadcast model).
  """
  variables: tuple
  optimizer: tff.learning.optimizers.Optimizer
  penalty: Optional[Callable[[Sequence[tf.Variable]], list]] = None



def phase_dataset(dataset: tf.data.Dataset, count: int, unit: str) -> tf.data.Dataset:
  if unit == 'epochs':
    return dataset.repeat(count)
  return dataset.repeat().take(count)


def batches_after(dataset: tf.data.Dataset, after=()):
  """An iterator over `dataset`, created only once the tensors `after` exist.

  Inside a `tf.function`, local loops iterate with `iter()`: a plain `for`
  over a dataset becomes a DatasetReduce op whose body TensorFlow
  re-instantiates on every call (a fixed ~0.3 CPU-s per client and pass).
  But iterator-creating ops are not ordered among themselves, and each pass
  over a shuffled dataset draws the next seeds of its shuffle: without
  `after`, FedAlt's v and u passes could swap their samples from run to run.
  Passing the previous pass's result makes pass k always draw the k-th
  shuffle, as the eager order (and the DatasetReduce loops) did.
  """
  with tf.control_dependencies(list(after)):
    return iter(dataset)


def assign(variables, values):
  tf.nest.map_structure(lambda v, t: v.assign(t), variables, values)


def build_metrics(loss_fn, metrics_fn) -> list[tf.keras.metrics.Metric]:
  """The task's metrics plus `loss` (mean of batch losses), as TFF's FedRecon.

  `loss` is the last entry, a `Mean` fed the batch loss the step already
  computed (`record_metrics`): a wrapper of `loss_fn` would compute the loss a
  second time, which for a 10k-word softmax is a third of a training step.
  `loss_fn` is kept in the signature so callers need not know that.
  """
  del loss_fn
  return (metrics_fn() if metrics_fn else []) + [tf.keras.metrics.Mean(name='loss')]


def record_metrics(metrics, output, batch_loss) -> None:
  """Updates `build_metrics`' metrics with one batch: the task's metrics from
  (labels, predictions), `loss` with the batch loss."""
  *task_metrics, loss_metric = metrics
  for m in task_metrics:
    m.update_state(output.labels, output.predictions)
  loss_metric.update_state(batch_loss)


def model_parts(model_fn, loss_fn, metrics_fn):
  """Builds the model and metrics; returns (model, metrics, u variables, v variables)."""
  model = model_fn()
  shared = ModelWeights(list(model.global_trainable_variables),
                        list(model.global_non_trainable_variables))
  personal = ModelWeights(list(model.local_trainable_variables),
                          list(model.local_non_trainable_variables))
  return model, build_metrics(loss_fn, metrics_fn), shared, personal


def read_metrics(metrics):
  return collections.OrderedDict(
      (m.name, [v.read_value() for v in m.variables]) for m in metrics)


def local_sgd(model, loss, trainables: Sequence[Trainable], data: tf.data.Dataset, *,
              metrics=None, after=()) -> tf.Tensor:
  """The local-training loop of every algorithm that steps per batch.

  One pass over `data` (already repeated by `phase_dataset`), started after
  the tensors `after` (see `batches_after`): per batch, one forward pass, one
  gradient of the loss for all `trainables` together, plus each one's
  `penalty`, and one step of each one's optimizer (its state starts fresh
  here: client optimizer state is not persisted, as in the paper). FedAlt's
  two phases, FedSim's joint pass and both of Ditto's passes are this loop
  configured; pFedMe's inner Moreau solver and FFGG's full-batch gradients are
  other loops over the same helpers.

  Must run inside a `tf.function`. `metrics`, when given, are updated with
  each batch (`record_metrics`). Returns the examples seen, an int64 scalar.
  """
  states = tuple(t.optimizer.initialize(specs(t.variables)) for t in trainables)
  num_examples = tf.constant(0, tf.int64)
  for batch in batches_after(data, after):
    with tf.GradientTape() as tape:
      output = model.forward_pass(batch, training=True)
      batch_loss = loss(output.labels, output.predictions)
    grads = tape.gradient(batch_loss, [t.variables for t in trainables])
    new_states = []
    for t, state, g in zip(trainables, states, grads):
      if t.penalty is not None:
        g = [gi + pi for gi, pi in zip(g, t.penalty(t.variables))]
      state, new_values = t.optimizer.next(state, t.variables, tuple(g))
      assign(t.variables, new_values)
      new_states.append(state)
    states = tuple(new_states)
    if metrics:
      record_metrics(metrics, output, batch_loss)
    num_examples += tf.cast(output.num_examples, tf.int64)
  return num_examples


def specs(variables) -> tuple:
  return tuple(tf.TensorSpec(v.shape, v.dtype) for v in variables)


def read_weights(variables: ModelWeights) -> ModelWeights:
  return tf.nest.map_structure(lambda v: v.read_value(), variables)


def shared_trainable(shared_vars: ModelWeights, optimizer) -> list:
  """u's trainable variables with their optimizer; [] when u has none."""
  if not shared_vars.trainable:
    return []
  return [Trainable(tuple(shared_vars.trainable), optimizer)]


def personal_trainable(personal_vars: ModelWeights, optimizer, personal_l2: float) -> list:
  """v's trainable variables with their optimizer and weight decay
  (`personal_l2 * v`: (personal_l2 / 2) ||v||^2 added to the loss); [] when v
  has no trainable variable."""
  if not personal_vars.trainable:
    return []
  decay = (lambda vs: [personal_l2 * v for v in vs]) if personal_l2 else None
  return [Trainable(tuple(personal_vars.trainable), optimizer, decay)]


def client_output(initial_shared, shared_vars: ModelWeights, personal_vars: ModelWeights,
                  num_examples: tf.Tensor, metrics) -> client_work.ClientOutput:
  """The `ClientOutput` of an update that stepped u from `initial_shared` (its
  trainable values) over `num_examples` examples: u's update, its weight, the
  new v_i and the metrics."""
  return client_work.ClientOutput(
      shared_update=tf.nest.map_structure(tf.subtract, initial_shared, shared_vars.trainable),
      update_weight=tf.cast(num_examples, tf.float32),
      personal_weights=read_weights(personal_vars),
      metrics=read_metrics(metrics))
