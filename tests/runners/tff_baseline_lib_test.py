"""FedAlt plugged into a task of TFF's research baselines, on real FEMNIST writers."""

import os
import shutil
import sys

import pandas as pd
import pytest
import tensorflow as tf

from runners import tff_baseline_lib
from tasks.emnist import convert_lib
import conftest

pytestmark = pytest.mark.slow  # Trains TFF's 1.2M-parameter CNN for a few rounds.


@pytest.fixture(scope='module')
def emnist_cache(tmp_path_factory):
  """Four real LEAF shards (24 writers) converted to TFF's EMNIST cache file."""
  leaf = tmp_path_factory.mktemp('leaf')
  for split in ('train', 'test'):
    os.makedirs(leaf / split)
    for shard in range(4):
      name = f'all_data_{shard}_niid_05_keep_0_{split}_9.json'
      shutil.copy(os.path.join(conftest.shared_data_dir(), 'femnist', split, name), leaf / split)
  out = str(tmp_path_factory.mktemp('emnist'))
  convert_lib.convert(str(leaf), out)
  return out


def test_fedalt_on_the_emnist_baseline_task(emnist_cache, tmp_path):
  task = tff_baseline_lib.emnist_character_task(emnist_cache)
  assert len(task.datasets.train_data.client_ids) == 24  # TFF's loader read our cache.
  run = dict(loss_fn=tf.keras.losses.SparseCategoricalCrossentropy,
             run_dir=str(tmp_path / 'run'), total_rounds=5, clients_per_round=8,
             learning_rate=0.1)
  result = tff_baseline_lib.train_fedalt(
      task, tff_baseline_lib.emnist_cnn_dropout, tff_baseline_lib.last_layer, **run)
  assert result['rounds_run'] == 5
  assert result['personal_parameters'] == 128 * 62 + 62  # The output layer.
  summary = result['summary']
  assert summary['clients'] == 24
  # Clients that trained their output layer predict otherwise than with v_0.
  assert summary['unchanged_fraction'] < 1
  # The training loss of the sampled clients falls (metrics of the tff.program loop).
  loss = pd.read_csv(tmp_path / 'run' / 'metrics.csv')['train/client_work/loss']
  assert len(loss) == 5 and loss.iloc[-1] < loss.iloc[0]
  # The run resumes: nothing left to train, the same evaluation.
  again = tff_baseline_lib.train_fedalt(
      task, tff_baseline_lib.emnist_cnn_dropout, tff_baseline_lib.last_layer, **run)
  assert again['rounds_run'] == 0
  assert again['summary']['personalized_mean'] == pytest.approx(summary['personalized_mean'])


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
