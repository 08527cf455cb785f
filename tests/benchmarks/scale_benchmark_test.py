"""The scale benchmarks (`benchmark --store`, `--converter`) on tiny inputs:
their measurements hold what they claim (a resumed store lost exactly the
killed round; a synthetic dump is new clients, not the same ones again)."""

import os
import sys

import numpy as np
import pytest

import conftest
from benchmarks import converter_benchmark_lib
from benchmarks import store_benchmark_lib
from tasks.stackoverflow import convert_lib


@pytest.mark.slow
def test_store_benchmark_measures_a_filled_store_and_a_resume_after_kill(tmp_path):
  settings = store_benchmark_lib.StoreSettings(
      out_dir=str(tmp_path), populations=(120,), clients_per_round=10, rounds=2, fill_chunk=50)
  table = store_benchmark_lib.run(settings)
  row = table.iloc[0]
  # One row per client after the fill's and the rounds' commits (pruned).
  assert row.rows == 120 and row.verified_rows == 120
  assert row.resume_dropped == 10   # The killed round's writes, and only those.
  assert row.open_s > 0 and row.round_s > 0 and row.size_gb > 0
  text = store_benchmark_lib.to_markdown(table, settings)
  assert '| 120 |' in text
  # A rerun reuses the filled store (the fill resumes with nothing to do).
  assert store_benchmark_lib.fill(settings, 120, store_benchmark_lib.personal_shapes(
      'tiny', 'last_block', 10_004)) < 1


def test_populations_accept_thousands_and_name_a_bad_value():
  assert store_benchmark_lib.populations(['10k', '2500', '1.5k']) == (10_000, 2500, 1500)
  with pytest.raises(ValueError, match="'ten'"):
    store_benchmark_lib.populations(['ten'])


def test_personal_shapes_are_the_models_last_block():
  trainable, non_trainable = store_benchmark_lib.personal_shapes('tiny', 'last_block', 10_004)
  assert sum(int(np.prod(s)) for s, _ in trainable + non_trainable) == 33_472


def test_a_synthetic_dump_of_two_copies_holds_twice_the_clients(tmp_path):
  root = os.path.join(conftest.shared_data_dir(), 'stackexchange')
  sites = [os.path.join(root, s) for s in conftest.TWO_SITES]
  one_copy = sum(os.path.getsize(os.path.join(s, 'Posts.xml')) for s in sites)
  dump = converter_benchmark_lib.build_dump(sites, str(tmp_path / 'dump'), one_copy * 3 // 2)
  assert dump['copies'] == 2
  stats = convert_lib.convert([str(tmp_path / 'dump')], str(tmp_path / 'data'), min_examples=80)
  # Each copy's posts and users have new ids: its clients are new clients.
  assert stats.clients_kept == 2 * conftest.TWO_SITES_CLIENTS
  assert stats.orphan_answers % 2 == 0   # Answers still find their questions.


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
