"""The main job's experiment on two real sites: a sample of evaluated clients
is the same for every method and seed, the first seed's heldout choice of
finetuning epochs is reused, and every finding has its interval."""

import os
import sys

import numpy as np
import pytest

import conftest
from runners import paper_lib
from runners import train_lib

pytestmark = pytest.mark.slow  # trains 2 seeds x 3 runs and evaluates them


def test_a_sample_of_clients_evaluates_every_method_and_seed_on_the_same_clients(
    two_sites_cache_dir, tmp_path):
  settings = paper_lib.Settings(
      seeds=(0, 1), rounds=2, clients_per_round=4, max_examples_per_client=8,
      finetune_epochs=(0, 1), finetune_parts=('last_block',), test_clients=5, progress=False)
  out = str(tmp_path)
  configs = {}
  for seed in settings.seeds:
    configs[seed] = paper_lib.run_configs(settings, seed, out, two_sites_cache_dir, None)
    for config in configs[seed].values():
      train_lib.train(config)
  evaluated = paper_lib.evaluate_all(settings, configs, out)
  frames = evaluated['results']
  clients = sorted(frames[(0, 'fedavg')].index)
  assert len(clients) == 5 < conftest.TWO_SITES_CLIENTS
  for (seed, method), frame in frames.items():
    assert sorted(frame.index) == clients, (seed, method)
    # Seed 1 uses the epochs seed 0 chose on heldout.
    assert (frame.epochs == evaluated['chosen'][method]).all()
  # Balanced sampling: 2 rounds x 4 of 8 clients, each trained once.
  assert set(frames[(1, 'fedalt')].participations) <= {0, 1}
  found = paper_lib.findings(settings, evaluated)
  assert set(found['rows'].index) == set(settings.methods)
  d = found['differences']
  assert {'fedalt - fedavg', 'fedalt - fedsim'} <= set(d.index)
  assert np.all(d.low <= d.difference + 1e-12) and np.all(d.difference <= d.high + 1e-12)
  # A rerun reads the cached evaluations (their files are not rewritten).
  cached = os.path.join(out, 'eval', 'seed0', 'fedalt.csv')
  before = os.path.getmtime(cached)
  paper_lib.evaluate_all(settings, configs, out)
  assert os.path.getmtime(cached) == before


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
