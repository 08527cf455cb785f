"""Client groups and group personalization (global, then group, then local) on real data."""

import os

import numpy as np
import pandas as pd
import pytest

from partial_personalization.algorithms import groups as groups_lib
from partial_personalization.models import partition as partition_lib
from partial_personalization.programs import training_loop
from runners import config_lib
from runners import group_lib
from runners import train_lib
from tasks.stackoverflow import convert_lib
import conftest

SITES = conftest.TWO_SITES


@pytest.fixture
def cache_dir(two_sites_cache_dir):
  return two_sites_cache_dir


def _common(cache_dir, out):
  return dict(root_output_dir=out, cache_dir=cache_dir, vocab_size=1000,
              client_learning_rate=0.5, max_examples_per_client=32, clients_per_round=4,
              progress=False, seed=1)


def test_metadata_groups_are_the_sites(cache_dir):
  groups = convert_lib.load_client_groups(cache_dir)
  assert set(groups.values()) == set(SITES) and len(groups) == 8
  ids = sorted(groups)
  assert groups_lib.load_groups('metadata', ids, metadata_fn=lambda: groups) == groups
  with pytest.raises(ValueError, match='no metadata groups'):
    groups_lib.load_groups('metadata', ids)


def test_csv_groups_and_their_errors(tmp_path):
  path = tmp_path / 'g.csv'
  path.write_text('client_id,group\na,x\nb,y\n')
  assert groups_lib.load_groups(f'csv:{path}', ['a', 'b']) == {'a': 'x', 'b': 'y'}
  with pytest.raises(ValueError, match="1 clients have no group, e.g. 'c'"):
    groups_lib.load_groups(f'csv:{path}', ['a', 'c'])
  path.write_text('client,group\na,x\n')
  with pytest.raises(ValueError, match='needs columns client_id,group'):
    groups_lib.read_groups_csv(str(path))
  path.write_text('client_id,group\na,x\na,y\n')
  with pytest.raises(ValueError, match='listed twice'):
    groups_lib.read_groups_csv(str(path))
  with pytest.raises(FileNotFoundError, match='no such file'):
    groups_lib.read_groups_csv(str(tmp_path / 'missing.csv'))
  for bad in ('site', 'kmeans:0', 'csv:'):
    with pytest.raises(ValueError, match='`groups'):
      groups_lib.parse_source(bad)


def test_kmeans_separates_clients_by_label_histogram():
  rng = np.random.default_rng(0)
  hist = {f'a{i}': np.array([50, 1, 0, 0]) + rng.integers(0, 3, 4) for i in range(5)}
  hist.update({f'b{i}': np.array([0, 0, 40, 60]) + rng.integers(0, 3, 4) for i in range(5)})
  groups = groups_lib.kmeans_groups(hist, 2, seed=0)
  assert len({groups[f'a{i}'] for i in range(5)}) == 1
  assert len({groups[f'b{i}'] for i in range(5)}) == 1
  assert groups['a0'] != groups['b0']


@pytest.mark.slow
def test_group_fine_tuning_touches_only_that_groups_clients(cache_dir, tmp_path, monkeypatch):
  groups = convert_lib.load_client_groups(cache_dir)
  site = SITES[1]
  members = {c for c, g in groups.items() if g == site}
  seen = []
  original = training_loop.sample_clients

  def spy(client_ids, num_clients, seed, round_num, *rest):
    sampled = original(client_ids, num_clients, seed, round_num, *rest)
    seen.append((set(client_ids), set(sampled)))
    return sampled

  monkeypatch.setattr(training_loop, 'sample_clients', spy)
  config = config_lib.TrainConfig(
      experiment_name='group', algorithm='fedalt', groups='metadata', client_group=site,
      total_rounds=2, report_clients=0, **_common(cache_dir, str(tmp_path)))
  result = train_lib.train(config)
  assert len(seen) == 2
  for population, sampled in seen:
    assert population == members and sampled <= members
  per_client = pd.read_csv(os.path.join(result['run_dir'], 'report', 'per_client.csv'))
  assert set(per_client.client_id) <= members  # The report covers the group too.
  with pytest.raises(ValueError, match='has no client; groups:'):
    train_lib.train(config_lib.TrainConfig(
        experiment_name='nogroup', algorithm='fedalt', groups='metadata', client_group='x',
        total_rounds=1, **_common(cache_dir, str(tmp_path))))


@pytest.mark.slow
def test_three_stages_report_every_variant(cache_dir, tmp_path):
  settings = group_lib.GroupSettings(global_rounds=2, group_rounds=2, finetune_epochs=1)
  common = _common(cache_dir, str(tmp_path))
  summary, text = group_lib.run_group_personalization(common, settings, log=lambda *_: None)
  per_client = pd.read_csv(os.path.join(str(tmp_path), 'report', 'per_client.csv'),
                           index_col=0)
  variants = list(group_lib.VARIANTS + group_lib.CONTROL_VARIANTS)
  assert list(summary.variant) == variants
  assert set(per_client.group) == set(SITES) and len(per_client) >= 6
  assert per_client[variants].notna().all().all()
  # The control made at least the group stage's client updates, on every client.
  sizes = pd.Series(convert_lib.load_client_groups(cache_dir)).value_counts()
  updates = group_lib.group_stage_updates(common, settings, sizes)
  extra = config_lib.read_flags(os.path.join(str(tmp_path), 'extra', 'flags.json'))
  assert extra['init_from'] == os.path.join(str(tmp_path), 'global')
  assert updates == sum(2 * min(4, n) for n in sizes) > 0
  assert 0 <= extra['total_rounds'] * 4 - updates < 4
  # The control trained (its accuracies can tie the global model's at 0% on a
  # 1,000-word vocabulary after a few rounds, so compare weights).
  trained, start = (partition_lib.load_named_weights(os.path.join(str(tmp_path), d, 'model.npz'))
                    for d in ('extra', 'global'))
  assert any(not np.array_equal(trained[k], start[k]) for k in start)
  # Every stage changed the model: the group model is not the global one,
  # and local finetuning moved both.
  for a, b in (('global', 'global_group'), ('global', 'global_local'),
               ('global_group', 'global_group_local')):
    assert (per_client[a] != per_client[b]).any(), (a, b)
  for group, run in zip(SITES, sorted(os.listdir(os.path.join(str(tmp_path), 'groups')))):
    assert run == group_lib.group_dir_name(group)
    assert os.path.exists(os.path.join(str(tmp_path), 'groups', run, 'model.npz'))
  assert 'global + group + local' in text
  assert os.path.exists(os.path.join(str(tmp_path), 'report', 'report.png'))



def test_a_given_global_model_replaces_stage_one(tmp_path):
  model = tmp_path / 'pretrain'
  model.mkdir()
  settings = group_lib.GroupSettings(global_model=str(model))
  assert group_lib.train_global({}, settings) == str(model)
  with pytest.raises(FileNotFoundError, match='--global_model .* does not exist'):
    group_lib.train_global({}, group_lib.GroupSettings(global_model=str(tmp_path / 'no')))
