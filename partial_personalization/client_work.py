"""Local (client-side) updates of FedAlt and FedSim, as a TFF TensorFlow computation.

Pillutla et al., ICML 2022, Algorithm 1 (lines "LocalUpdate"):
* FedAlt (alternating): `tau_v` local passes on the personal part v with the
  shared part u frozen, then `tau_u` passes on u with the new v frozen.
* FedSim (simultaneous): `tau_u` passes on (u, v) jointly, one gradient per
  batch for both.

Steps use `tff.learning.optimizers` (functional optimizers); u and v each have
their own optimizer, freshly initialised every round (client optimizer state is
not persisted, as in the paper). The client returns the shared update
`u_initial - u_final` (TFF's sign convention: the server optimizer treats it as
a gradient), its weight (examples seen in the u pass), the new v, and unfinalized
Keras metrics of the u pass (the last pass over the data).
"""

import collections
from typing import Callable, NamedTuple, Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import partition

ModelWeights = tff.learning.models.ModelWeights
LOCAL_UNITS = ('epochs', 'steps')


class ClientOutput(NamedTuple):
  """What every algorithm's client update returns, each round, for one client.

  Attributes:
    shared_update: u_initial - u_final (TFF's sign convention: the server
      optimizer applies it as a gradient), a list of float32 tensors shaped as
      u's trainable variables. FFGG sends its gradient of u here.
    update_weight: float32 scalar, examples seen in the pass on u (the weight
      of the update under `ClientWeighting.NUM_EXAMPLES`).
    personal_weights: the new v_i, a `ModelWeights` of v's type (of u's type
      for Ditto and pFedMe, whose v_i is a whole model).
    metrics: unfinalized Keras metrics of the pass on u: an OrderedDict
      name -> list of the metric's variable values (`[total, count]` for means).
  """
  shared_update: list
  update_weight: tf.Tensor
  personal_weights: ModelWeights
  metrics: collections.OrderedDict


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


def build_client_update(
    *,
    model_fn: partition.ModelFn,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    metrics_fn: Optional[Callable[[], list[tf.keras.metrics.Metric]]],
    shared_type: tff.types.Type,
    personal_type: tff.types.Type,
    data_type: tff.types.Type,
    alternating: bool,
    client_optimizer: tff.learning.optimizers.Optimizer,
    personal_optimizer: tff.learning.optimizers.Optimizer,
    tau_u: int,
    tau_v: int,
    local_unit: str,
    personal_l2: float = 0.0,
) -> tff.Computation:
  """Builds `(u, v_i, dataset) -> ClientOutput` of FedAlt or FedSim for one client.

  Args:
    model_fn: No-arg function returning a `ReconstructionModel` whose global
      variables are u and local variables are v.
    loss_fn, metrics_fn: No-arg functions returning a Keras loss and metrics.
    shared_type, personal_type: `ModelWeights` types of u and v.
    data_type: `tff.SequenceType` of a client's batches.
    alternating: True for FedAlt, False for FedSim.
    client_optimizer: Optimizer of u; personal_optimizer: optimizer of v.
    tau_u, tau_v: Number of local epochs (or steps) on u and on v; FedSim uses
      `tau_u` joint passes and ignores `tau_v`.
    local_unit: 'epochs' or 'steps'.
    personal_l2: Weight decay of v: adds (personal_l2 / 2) ||v||^2 to the loss
      of the personal steps (the paper's regularization study, Sec. 5).

  With `tau_u=0` and `alternating=True` only v is trained: that is the
  finetuning of the evaluation protocol (and reconstruction, when stateless).

  Returns:
    A `tff.Computation` returning a `ClientOutput` (metrics of the u pass).

  Raises:
    ValueError: unknown `local_unit`, negative `tau_u` or `tau_v`.
  """
  if local_unit not in LOCAL_UNITS:
    raise ValueError(f'local_unit must be one of {LOCAL_UNITS}, got {local_unit!r}')
  if tau_u < 0 or tau_v < 0:
    raise ValueError(f'tau_u and tau_v must be >= 0, got {tau_u}, {tau_v}')

  @tff.tensorflow.computation(shared_type, personal_type, data_type)
  def client_update(shared, personal, dataset):
    model, metrics, shared_vars, personal_vars = model_parts(model_fn, loss_fn, metrics_fn)
    loss = loss_fn()
    decay = (lambda vs: [personal_l2 * v for v in vs]) if personal_l2 else None

    def trainables(train_shared: bool, train_personal: bool) -> list[Trainable]:
      parts = []
      if train_shared and shared_vars.trainable:
        parts.append(Trainable(tuple(shared_vars.trainable), client_optimizer))
      if train_personal and personal_vars.trainable:
        parts.append(Trainable(tuple(personal_vars.trainable), personal_optimizer, decay))
      return parts

    @tf.function
    def local_update(shared, personal, dataset):
      assign(shared_vars, shared)
      assign(personal_vars, personal)
      initial_shared = tf.nest.map_structure(tf.identity, shared.trainable)
      if alternating:
        personal_pass = ()
        if personal_vars.trainable and tau_v > 0:
          personal_pass = [local_sgd(model, loss, trainables(False, True),
                                     phase_dataset(dataset, tau_v, local_unit))]
        num_examples = local_sgd(model, loss, trainables(True, False),
                                 phase_dataset(dataset, tau_u, local_unit),
                                 metrics=metrics, after=personal_pass)
      else:
        num_examples = local_sgd(model, loss, trainables(True, True),
                                 phase_dataset(dataset, tau_u, local_unit), metrics=metrics)
      return ClientOutput(
          shared_update=tf.nest.map_structure(tf.subtract, initial_shared,
                                              shared_vars.trainable),
          update_weight=tf.cast(num_examples, tf.float32),
          personal_weights=read_weights(personal_vars),
          metrics=read_metrics(metrics),
      )

    return local_update(shared, personal, dataset)

  return client_update


def build_client_evaluation(
    *,
    model_fn: partition.ModelFn,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    metrics_fn: Optional[Callable[[], list[tf.keras.metrics.Metric]]],
    shared_type: tff.types.Type,
    personal_type: tff.types.Type,
    data_type: tff.types.Type,
    personal_replaces_shared: bool = False,
) -> tff.Computation:
  """Builds `(u, v_i, dataset) -> unfinalized metrics` (no training).

  The result maps each metric name (the task's metrics and `loss`) to the list
  of its Keras variable values; for mean metrics that is `[total, count]`.
  With `personal_replaces_shared` (Ditto, pFedMe: v_i is a whole model of u's
  type), the model evaluated is v_i alone.
  """

  @tff.tensorflow.computation(shared_type, personal_type, data_type)
  def evaluate(shared, personal, dataset):
    model, metrics, shared_vars, personal_vars = model_parts(model_fn, loss_fn, metrics_fn)
    loss = loss_fn()

    @tf.function
    def run(shared, personal, dataset):
      if personal_replaces_shared:
        assign(shared_vars, personal)
      else:
        assign(shared_vars, shared)
        assign(personal_vars, personal)
      for batch in batches_after(dataset):
        output = model.forward_pass(batch, training=False)
        record_metrics(metrics, output, loss(output.labels, output.predictions))
      return read_metrics(metrics)

    return run(shared, personal, dataset)

  return evaluate
