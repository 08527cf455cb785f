"""docs/design.md's recipes, walked through: a toy task (`toy_task`, a module
and its registry line) and a toy algorithm (below: a client update and builder,
its `AlgorithmSpec` entry) are added the way the recipes say, then trained and reported by the real runner code
(`train_lib.train`).

The toy algorithm, "FedAlt-Prox": FedAlt whose
u pass adds mu (u - u_t) to the gradient (a FedProx pull toward the broadcast
u_t), configured from `local_training.local_sgd` with a `Trainable.penalty`.
"""

import os
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import algorithms
from partial_personalization.models import partition as partition_lib
from partial_personalization.templates import client_work
from partial_personalization.templates import composers
from partial_personalization.templates import local_training
from runners import algorithm_registry
from runners import config_lib
from runners import train_lib
from runners import weights_lib
from tasks import registry
import toy_task

# --- The toy algorithm: a client update and its builder. ---------------------

def build_fedalt_prox_process(model_fn, *, loss_fn, metrics_fn=None, client_optimizer,
                              personal_optimizer=None, server_optimizer=None, mu: float = 0.1,
                              model_aggregator=None,
                              client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
                              evaluation_loss_fn=None):
  shared_type, personal_type, data_type = composers.model_types(model_fn)

  @tff.tensorflow.computation(shared_type, personal_type, data_type)
  def client_update(shared, personal, dataset):
    model, metrics, shared_vars, personal_vars = local_training.model_parts(
        model_fn, loss_fn, metrics_fn)
    loss = loss_fn()

    @tf.function
    def update(shared, personal, dataset):
      local_training.assign(shared_vars, shared)
      local_training.assign(personal_vars, personal)
      anchor = [tf.identity(t) for t in shared.trainable]
      personal_pass = local_training.local_sgd(
          model, loss,
          [local_training.Trainable(tuple(personal_vars.trainable),
                                 personal_optimizer or client_optimizer)], dataset)
      pull = lambda vs: [mu * (v - a) for v, a in zip(vs, anchor)]
      examples = local_training.local_sgd(
          model, loss, [local_training.Trainable(tuple(shared_vars.trainable), client_optimizer,
                                              pull)],
          dataset, metrics=metrics, after=[personal_pass])
      return client_work.ClientOutput(
          shared_update=[a - v for a, v in zip(anchor, shared_vars.trainable)],
          update_weight=tf.cast(examples, tf.float32),
          personal_weights=local_training.read_weights(personal_vars),
          metrics=local_training.read_metrics(metrics))

    return update(shared, personal, dataset)

  return algorithms.compose_with_defaults(
      model_fn, client_update, loss_fn=loss_fn, metrics_fn=metrics_fn,
      server_optimizer=server_optimizer, model_aggregator=model_aggregator, distributor=None,
      metrics_aggregator=None, client_weighting=client_weighting,
      evaluation_loss_fn=evaluation_loss_fn)


@pytest.fixture
def registered(monkeypatch):
  """The registry lines of the recipes (here patched in, in the code added)."""
  monkeypatch.setitem(registry.TASKS, 'toy', toy_task.spec())
  monkeypatch.setitem(algorithm_registry.ALGORITHMS, 'fedalt_prox', algorithm_registry.AlgorithmSpec(
      label='FedAlt-Prox', build=algorithm_registry.from_builder(build_fedalt_prox_process),
      settings={'mu': 'prox_strength'}, personal=algorithm_registry.PERSONAL_PART))


def _config(tmp_path, **overrides):
  settings = dict(task='toy', algorithm='fedalt_prox', personalization='head',
                  cache_dir=str(tmp_path / 'data'), root_output_dir=str(tmp_path / 'runs'),
                  experiment_name='toy', total_rounds=3, clients_per_round=2,
                  client_learning_rate=0.5, server_learning_rate=1.0, client_batch_size=4,
                  max_examples_per_client=12, eval_clients=4, rounds_per_eval=3,
                  prox_strength=0.1, progress=False)
  settings.update(overrides)
  return config_lib.TrainConfig(**settings)


def test_a_new_task_and_algorithm_train_and_report(registered, tmp_path):
  result = train_lib.train(_config(tmp_path))
  assert result['rounds_run'] == 3
  report = pd.read_csv(os.path.join(result['run_dir'], 'report', 'per_client.csv'),
                       index_col=0)
  assert sorted(report.index) == [f'client{i}' for i in range(4)]
  assert report.participations.sum() == 3 * 2  # 2 clients per round, 3 rounds.
  # The personal head is what each client's label rule needs: trained heads help
  # on average (baseline: the run's starting model).
  trained = report[report.participations > 0]
  assert (trained.personalized - trained.baseline).mean() > 0


def test_the_new_hyperparameter_reaches_the_client_update(registered, tmp_path):
  """--prox_strength is mu: a strong pull toward u_t keeps u nearer its start."""
  def distance_moved(mu, name):
    config = _config(tmp_path, prox_strength=mu, experiment_name=name, report=False)
    result = train_lib.train(config)
    final = partition_lib.load_named_weights(os.path.join(result['run_dir'], 'model.npz'))
    start = weights_lib.initial_named_weights(config_lib.create_task(config), config)
    body = [k for k in start if k.startswith('body')]
    assert body
    return np.sqrt(sum(np.sum((final[k] - start[k]) ** 2) for k in body))

  free, pinned = distance_moved(0.0, 'free'), distance_moved(1.8, 'pinned')
  # Per step the pull shrinks the drift by (1 - lr mu) = 0.1: over a pass of 3
  # steps u moves about 1.1 steps' worth instead of 3.
  assert 0 < pinned < 0.7 * free


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
