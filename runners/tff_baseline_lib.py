"""FedAlt on a task of TFF's research baselines (`tff.simulation.baselines`).

What a user of TFF research code does to personalize a task they already
have: keep its datasets and preprocessing (`task.datasets`), rebuild its Keras
model, name the personal layers, and hand the model to `build_fedalt_process`.
Rounds then run through the library's resumable loop (`tff.program`
checkpoints and metrics, one store of personal weights), and every client is
evaluated with its own v_i against the shared model with v_0.
See docs/tff_research_code.md.
"""

import os
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import algorithms
from partial_personalization import evaluation
from partial_personalization.models import partition
from partial_personalization.programs import round_runners
from partial_personalization.programs import training_loop
from partial_personalization.state import client_state


def emnist_character_task(cache_dir: str, *, batch_size: int = 20, max_elements: int = 100
                          ) -> tff.simulation.baselines.BaselineTask:
  """TFF's EMNIST character-recognition baseline ('cnn_dropout', 62 classes),
  reading the EMNIST cache in `cache_dir` (e.g. `//runners:convert_femnist`'s)."""
  spec = tff.simulation.baselines.ClientSpec(num_epochs=1, batch_size=batch_size,
                                             max_elements=max_elements)
  return tff.simulation.baselines.emnist.create_character_recognition_task(
      spec, model_id='cnn_dropout', only_digits=False, cache_dir=cache_dir)


def emnist_cnn_dropout() -> tf.keras.Model:
  """The Keras model of that task (TFF builds it inside `task.model_fn`)."""
  return tff.simulation.baselines.emnist.emnist_models.create_conv_dropout_model(
      only_digits=False)


def last_layer(model: tf.keras.Model) -> list:
  """The personal part: the output layer."""
  return model.layers[-1].variables


def train_fedalt(task: tff.simulation.baselines.BaselineTask,
                 keras_model_fn: Callable[[], tf.keras.Model],
                 personal_variables_fn: Callable[[tf.keras.Model], list], *,
                 loss_fn: Callable[[], tf.keras.losses.Loss], run_dir: str, total_rounds: int,
                 clients_per_round: int, learning_rate: float = 0.05, seed: int = 0) -> dict:
  """Trains FedAlt on `task` (resumable in `run_dir`) and evaluates every test client.

  Args:
    task: A `tff.simulation.baselines.BaselineTask`; its train and test data
      and preprocessing are used as they are.
    keras_model_fn: Builds the task's Keras model (uncompiled).
    personal_variables_fn: keras model -> its personal variables v.
    loss_fn: The task's loss, e.g. `SparseCategoricalCrossentropy()`.
    run_dir: Run directory (checkpoints, metrics.csv, personal weights).
    total_rounds, clients_per_round, learning_rate, seed: The training.

  Returns:
    dict: `rounds_run`, `summary` (`evaluation.personalization_report`:
    accuracy with each client's v_i vs with v_0, helped/hurt/unchanged),
    `shared_parameters`, `personal_parameters`.
  """
  datasets = task.datasets
  input_spec = datasets.element_type_structure

  def model_fn():
    return partition.build_reconstruction_model(
        keras_model_fn(), personal_variables_fn, input_spec)

  process = algorithms.build_fedalt_process(
      model_fn, loss_fn=loss_fn,
      metrics_fn=lambda: [tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')],
      client_optimizer=tff.learning.optimizers.build_sgdm(learning_rate),
      server_optimizer=tff.learning.optimizers.build_sgdm(1.0), tau_u=1, tau_v=1)
  tf.keras.utils.set_random_seed(seed)
  start = keras_model_fn()  # u_0 and v_0, seeded.
  shared_init, v0 = partition.VariablePartition.from_model(start, personal_variables_fn).split(
      partition.named_weights(start))
  os.makedirs(run_dir, exist_ok=True)
  store = client_state.ClientStateStore(os.path.join(run_dir, 'client_state.sqlite'), v0)
  try:
    def make_dataset(client_id, dataset_seed):
      del dataset_seed  # The task's own preprocessing shuffles.
      return datasets.train_preprocess_fn(datasets.train_data.create_tf_dataset_for_client(
          client_id))

    runner = round_runners.PersonalizedRunner(process, store, initial_shared=shared_init)
    result = training_loop.run_training(
        runner, run_dir=run_dir, store=store, client_ids=sorted(datasets.train_data.client_ids),
        make_dataset=make_dataset, total_rounds=total_rounds,
        clients_per_round=clients_per_round, seed=seed, progress=False)
    ids = sorted(set(datasets.train_data.client_ids) & set(datasets.test_data.client_ids))
    tests = [datasets.eval_preprocess_fn(datasets.test_data.create_tf_dataset_for_client(c))
             for c in ids]
    u = runner.global_weights(result.state)
    own = evaluation.evaluate_clients(process.evaluate, u, store.read(
        ids, before_round=store.committed_round + 1), tests, ids, 'accuracy')
    shared_only = evaluation.evaluate_clients(process.evaluate, u, [v0] * len(ids), tests, ids,
                                              'accuracy')
    _, summary = evaluation.personalization_report(own, shared_only, 'accuracy')
  finally:
    store.close()
  return {'rounds_run': result.rounds_run, 'summary': summary,
          'shared_parameters': int(sum(np.size(w) for w in shared_init.trainable)),
          'personal_parameters': int(sum(np.size(w) for w in v0.trainable))}
