"""train_lib: which runs share a traced computation (memoized); settings checks."""

import dataclasses
import json
import os
import uuid

import numpy as np
import pandas as pd
import pytest

from partial_personalization.models import partition as partition_lib
from partial_personalization.state import client_state
from partial_personalization.state import integrity
from runners import builders_lib
from runners import config_lib
from runners import report_lib
from runners import train_lib
from runners import weights_lib
import testing_models as tm
import toy_task


def _config(**kwargs):
  return config_lib.TrainConfig(experiment_name='a', cache_dir='unused', **kwargs)


def _count_builds(configs, what):
  builds, test = [], uuid.uuid4().hex  # A fresh key space for each count.
  for config in configs:
    builders_lib.memoized(what, config, lambda: builds.append(1) or len(builds), test=test)
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


@pytest.mark.parametrize('flag,value,message', [
    ('seed', -1, '--seed must be in'),
    ('dropout', 1.5, '--dropout must be in'),
    ('max_examples_per_client', 0, '--max_examples_per_client must be >= 1'),
    ('client_learning_rate', float('nan'), '--client_learning_rate must be a finite number'),
    ('personal_learning_rate', -0.1, '--personal_learning_rate must be a finite number'),
    ('tau_v', -1, '--tau_v must be >= 0'),
])
def test_bad_flags_are_named(flag, value, message):
  with pytest.raises(ValueError, match=message):
    _config(**{flag: value})


def _real(cache_dir, tmp_path, **kwargs):
  return config_lib.TrainConfig(experiment_name='run', root_output_dir=str(tmp_path),
                               cache_dir=cache_dir, vocab_size=1000, progress=False,
                               **{'clients_per_round': 4, **kwargs})


def test_too_many_clients_per_round_fails_before_anything_is_written(two_sites_cache_dir,
                                                                     tmp_path):
  with pytest.raises(ValueError, match='--clients_per_round=500 exceeds the 8 training'):
    train_lib.train(_real(two_sites_cache_dir, tmp_path, clients_per_round=500))
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize('damage,message', [
    ('delete', 'no flags.json'), ('truncate', 'flags.json is unreadable')])
def test_damaged_flags_json_is_an_error_that_changes_nothing(two_sites_cache_dir, tmp_path,
                                                             damage, message):
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'client_state.sqlite').write_bytes(b'state')
  if damage == 'truncate':
    (run / 'flags.json').write_text('{"algorithm": "fed')
  with pytest.raises(ValueError, match=message):
    train_lib.train(_real(two_sites_cache_dir, tmp_path))
  assert (run / 'client_state.sqlite').read_bytes() == b'state'
  assert sorted(p.name for p in run.iterdir()) == sorted(
      ['.lock', 'client_state.sqlite'] + (['flags.json'] if damage == 'truncate' else []))


@pytest.mark.slow  # trains two rounds
def test_a_run_with_an_old_flat_flags_json_resumes(two_sites_cache_dir, tmp_path):
  """Run directories from before the sectioned flags.json resume, and their
  flags.json is rewritten by section (without other algorithms' settings)."""
  config = _real(two_sites_cache_dir, tmp_path, algorithm='fedsim', total_rounds=1,
                 max_examples_per_client=16, report=False)
  train_lib.train(config)
  path = os.path.join(config.run_dir, 'flags.json')
  with open(path, 'w') as f:  # Every field flat, as runs started before wrote it.
    json.dump(dict(dataclasses.asdict(config), tau_v=3, inner_steps=7), f)
  result = train_lib.train(dataclasses.replace(config, total_rounds=2))
  assert result['rounds_run'] == 1
  with open(path) as f:
    saved = json.load(f)
  assert saved['algorithm'] == {'tau_u': 1, 'local_unit': 'epochs', 'personal_l2': 0.0,
                                'stateless': False}
  assert 'tau_v' not in config_lib.read_flags(path)


def test_init_from_a_run_of_another_model_is_an_error(two_sites_cache_dir, tmp_path):
  other = str(tmp_path / 'other.npz')
  partition_lib.save_named_weights(other, {'conv2d/kernel': np.zeros([3, 3, 1, 32], np.float32)})
  config = _real(two_sites_cache_dir, tmp_path, init_from=other)
  with pytest.raises(ValueError, match='shares no variable with this model'):
    weights_lib.initial_named_weights(config_lib.create_task(config), config)


def test_a_run_refuses_to_resume_on_other_data(two_sites_cache_dir, tmp_path):
  """The run's store records the data's hash; a cache converted again differs."""
  config = _real(two_sites_cache_dir, tmp_path)
  task = config_lib.create_task(config)
  store = client_state.ClientStateStore(str(tmp_path / 's.sqlite'), tm.weights(0.0))
  digest = integrity.files_sha256(task.data_files)
  store.bind('data_sha256', digest, 'data')
  store.bind('data_sha256', digest, 'data')  # The same data resumes.
  with pytest.raises(client_state.ClientStateError, match='trained on another data'):
    store.bind('data_sha256', integrity.files_sha256(task.data_files[:1]), 'data')
  store.close()
  assert [os.path.basename(f) for f in task.data_files] == [
      'stackoverflow.sqlite', 'stackoverflow.word_count']


def test_baseline_evaluation_cache_follows_the_baseline_model(two_sites_cache_dir, tmp_path,
                                                              monkeypatch):
  """Issue 15, case 7: a baseline trained further is evaluated anew, not read
  from the cache of its earlier weights."""
  baseline = tmp_path / 'baseline'
  baseline.mkdir()
  config = _real(two_sites_cache_dir, tmp_path, baseline_model=str(baseline))
  task = config_lib.create_task(config)
  named = task.initial_weights(0)
  ids = sorted(task.test_data.client_ids)[:2]

  calls = []

  def fake_evaluate(evaluate, u, v, sets, client_ids, metric, progress=None):
    calls.append(client_ids)
    score = float(sum(np.sum(w) for w in u.trainable))  # A function of the model.
    return pd.DataFrame({metric: score, 'loss': score, 'tokens': 1.0},
                        index=pd.Index(client_ids, name='client_id'))

  monkeypatch.setattr(report_lib.evaluation, 'evaluate_clients', fake_evaluate)
  bar = type('Bar', (), {'update': lambda self, n: None,
                         'set_description': lambda self, d: None})()

  def baseline_score(weights):
    partition_lib.save_named_weights(str(baseline / 'model.npz'), weights)
    results = report_lib.baseline_results(
        config, task, weights, named, {'test': (ids, [None] * len(ids))}, bar,
        evaluate=object())
    return results['test'][task.report_metric].iloc[0]

  first = baseline_score(named)
  assert baseline_score(named) == pytest.approx(first, rel=1e-12)
  assert len(calls) == 1  # The same model: read from the cache.
  further = {k: v + 1.0 for k, v in named.items()}
  assert baseline_score(further) != pytest.approx(first, rel=1e-3)
  assert len(calls) == 2  # Trained further: evaluated anew.
  assert len(list(baseline.glob('baseline_eval_test_*.csv'))) == 2


def test_a_finished_run_reads_its_report_and_a_changed_one_recomputes_it(
    monkeypatch, tmp_path):
  monkeypatch.setitem(toy_task.registry.TASKS, 'toy', toy_task.spec())
  config = config_lib.TrainConfig(
      task='toy', algorithm='fedalt', personalization='head', cache_dir=str(tmp_path),
      root_output_dir=str(tmp_path), experiment_name='run', total_rounds=2,
      clients_per_round=2, client_learning_rate=0.5, client_batch_size=4,
      max_examples_per_client=12, rounds_per_eval=0, progress=False)
  first = train_lib.train(config)
  calls = []
  real_write_report = report_lib.write_report
  monkeypatch.setattr(report_lib, 'write_report',
                      lambda *a, **k: calls.append(1) or real_write_report(*a, **k))
  again = train_lib.train(config)  # Nothing new: the report is read back.
  assert again['rounds_run'] == 0 and calls == []
  assert again['summary'] == first['summary']
  longer = train_lib.train(dataclasses.replace(config, total_rounds=3))  # One more round.
  assert longer['rounds_run'] == 1 and calls == [1]
