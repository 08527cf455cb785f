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
from typing import Callable, Optional

import tensorflow as tf
import tensorflow_federated as tff

ModelWeights = tff.learning.models.ModelWeights
LOCAL_UNITS = ('epochs', 'steps')


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


def build_client_update(
    *,
    model_fn: Callable[[], tff.learning.models.ReconstructionModel],
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
  """Builds `(u, v_i, dataset) -> ClientOutput` for one client.

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
    A `tff.Computation` returning an OrderedDict with `shared_update` (list of
    float32 arrays shaped as u.trainable), `update_weight` (float32 scalar),
    `personal_weights` (same type as v) and `metrics` (unfinalized Keras
    metrics: name -> list of variable values).
  """
  if local_unit not in LOCAL_UNITS:
    raise ValueError(f'local_unit must be one of {LOCAL_UNITS}, got {local_unit!r}')
  if tau_u < 0 or tau_v < 0:
    raise ValueError(f'tau_u and tau_v must be >= 0, got {tau_u}, {tau_v}')

  @tff.tensorflow.computation(shared_type, personal_type, data_type)
  def client_update(shared, personal, dataset):
    model, metrics, shared_vars, personal_vars = model_parts(model_fn, loss_fn, metrics_fn)
    loss = loss_fn()

    def specs(variables):
      return tuple(tf.TensorSpec(v.shape, v.dtype) for v in variables)

    def run_pass(data, train_shared: bool, train_personal: bool, record: bool, after=()):
      """One phase of local SGD on the selected parts, after the tensors
      `after` (the previous pass); returns examples seen."""
      groups = []  # (variables, optimizer, l2)
      if train_shared and shared_vars.trainable:
        groups.append((tuple(shared_vars.trainable), client_optimizer, 0.0))
      if train_personal and personal_vars.trainable:
        groups.append((tuple(personal_vars.trainable), personal_optimizer, personal_l2))
      states = tuple(opt.initialize(specs(vs)) for vs, opt, _ in groups)
      num_examples = tf.constant(0, tf.int64)
      for batch in batches_after(data, after):
        with tf.GradientTape() as tape:
          output = model.forward_pass(batch, training=True)
          batch_loss = loss(output.labels, output.predictions)
        grads = tape.gradient(batch_loss, [vs for vs, _, _ in groups])
        new_states = []
        for (vs, opt, l2), state, g in zip(groups, states, grads):
          if l2:
            g = [gi + l2 * v for gi, v in zip(g, vs)]
          state, new_values = opt.next(state, vs, tuple(g))
          assign(vs, new_values)
          new_states.append(state)
        states = tuple(new_states)
        if record:
          record_metrics(metrics, output, batch_loss)
        num_examples += tf.cast(output.num_examples, tf.int64)
      return num_examples

    @tf.function
    def local_update(shared, personal, dataset):
      assign(shared_vars, shared)
      assign(personal_vars, personal)
      initial_shared = tf.nest.map_structure(tf.identity, shared.trainable)
      if alternating:
        personal_pass = ()
        if personal_vars.trainable and tau_v > 0:
          personal_pass = [run_pass(phase_dataset(dataset, tau_v, local_unit), False, True, False)]
        num_examples = run_pass(
            phase_dataset(dataset, tau_u, local_unit), True, False, True, after=personal_pass)
      else:
        num_examples = run_pass(
            phase_dataset(dataset, tau_u, local_unit), True, True, True)
      shared_update = tf.nest.map_structure(
          tf.subtract, initial_shared, shared_vars.trainable)
      unfinalized = read_metrics(metrics)
      new_personal = tf.nest.map_structure(lambda v: v.read_value(), personal_vars)
      return collections.OrderedDict(
          shared_update=shared_update,
          update_weight=tf.cast(num_examples, tf.float32),
          personal_weights=new_personal,
          metrics=unfinalized,
      )

    return local_update(shared, personal, dataset)

  return client_update


def build_client_evaluation(
    *,
    model_fn: Callable[[], tff.learning.models.ReconstructionModel],
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
