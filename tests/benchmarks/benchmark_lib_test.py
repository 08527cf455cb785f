"""The benchmark's bookkeeping: which floor a ratio uses and which rows resume."""

import pandas as pd

from benchmarks import benchmark_lib


def _row(executor, seconds, grappler=True, algorithm='fedavg', clients=12):
  return dict(executor=executor, grappler=grappler, algorithm=algorithm, model_size='tiny',
              clients_per_round=clients, seconds_per_round=seconds)


def test_ratio_is_against_the_fastest_floor_of_either_grappler_setting():
  table = benchmark_lib.add_ratios(pd.DataFrame([
      _row('local', 6.0), _row('plain_tf', 5.0), _row('plain_tf_parallel', 4.0),
      _row('plain_tf_parallel', 3.0, grappler=False), _row('local', 5.0, grappler=False),
      _row('local', 9.0, clients=50), _row('plain_tf_parallel', 4.5, clients=50)]))
  ratio = {(r.executor, r.grappler, r.clients_per_round): r.x_floor for r in table.itertuples()}
  assert ratio[('local', True, 12)] == 2.0
  assert ratio[('local', False, 12)] == 5.0 / 3.0
  assert ratio[('plain_tf_parallel', True, 12)] == 4.0 / 3.0
  assert ratio[('local', True, 50)] == 2.0  # its own configuration's floor
  # x local is against local with Grappler on.
  assert table[(table.executor == 'local') & ~table.grappler].x_local.item() == 5.0 / 6.0


def test_rows_of_the_other_grappler_setting_are_not_taken_as_done(tmp_path):
  settings = benchmark_lib.Settings(data_dir=str(tmp_path), grappler=False)
  case = benchmark_lib.Case('local', 'fedavg', 'tiny', 12)
  old_row = _row('local', 6.0)
  del old_row['grappler']  # CSVs written before the column: Grappler was on.
  assert not benchmark_lib._done([old_row], case, settings)
  assert benchmark_lib._done([old_row], case, benchmark_lib.Settings(data_dir=str(tmp_path)))
  # Read back from a CSV, the column is a string or NaN.
  assert benchmark_lib._done([dict(old_row, grappler='False')], case, settings)
  assert benchmark_lib._done([dict(old_row, grappler=float('nan'))], case,
                             benchmark_lib.Settings(data_dir=str(tmp_path)))
