"""train_lib: which runs share a traced computation (memoized); settings checks."""

import dataclasses
import uuid

import pytest

from runners import train_lib


def _config(**kwargs):
  return train_lib.TrainConfig(experiment_name='a', cache_dir='unused', **kwargs)


def _count_builds(configs, what):
  builds, test = [], uuid.uuid4().hex  # A fresh key space for each count.
  for config in configs:
    train_lib.memoized(what, config, lambda: builds.append(1) or len(builds), test=test)
  return len(builds)


def test_seeds_and_run_names_share_a_process():
  base = _config(seed=0)
  same = [base, dataclasses.replace(base, seed=1, experiment_name='b', init_from='x',
                                    baseline_model='y', clients_per_round=3)]
  assert _count_builds(same, 'process') == 1


def test_traced_settings_get_their_own_process():
  base = _config()
  assert _count_builds([base, dataclasses.replace(base, client_learning_rate=0.5)],
                       'process') == 2
  assert _count_builds([base, dataclasses.replace(base, client_weighting='uniform')],
                       'process') == 2
  # Bucketing draws from the seed; a server schedule from the total rounds.
  robust = _config(aggregator='median', bucket_size=2)
  assert _count_builds([robust, dataclasses.replace(robust, seed=1)], 'process') == 2
  scheduled = _config(server_lr_schedule='warmup_decay')
  assert _count_builds([scheduled, dataclasses.replace(scheduled, total_rounds=11)],
                       'process') == 2
  assert _count_builds([base, dataclasses.replace(base, total_rounds=11)], 'process') == 1


def test_evaluation_and_finetuning_do_not_depend_on_the_algorithm():
  fedalt, fedsim = _config(algorithm='fedalt'), _config(algorithm='fedsim', tau_u=3)
  assert _count_builds([fedalt, fedsim], 'evaluation') == 1
  assert _count_builds([fedalt, fedsim], 'finetuning') == 1
  assert _count_builds([fedalt, dataclasses.replace(fedalt, personal_learning_rate=0.3)],
                       'finetuning') == 2
  assert _count_builds([fedalt, _config(algorithm='fedalt', model_size='mini')],
                       'evaluation') == 2


def test_client_weighting_is_checked():
  with pytest.raises(ValueError, match='--client_weighting must be one of'):
    _config(client_weighting='tokens')
