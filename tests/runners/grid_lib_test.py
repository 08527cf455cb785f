"""The grid over seeds: rows with intervals and the verdicts on the paper's findings."""

import pandas as pd

from runners import grid_lib


def _table(seed_shift, *, alt_minus_sim):
  """A grid table of one seed: FedAvg, one full cell, FedAlt/FedSim on one part."""
  def row(cell, group, method, mean, hurt=None):
    partition = 'last_block' if group == 'partial' else group
    return {'cell': cell, 'group': group, 'method': method, 'partition': partition,
            'state': 'stateful' if group == 'partial' else '',
            'personalized_mean': mean + seed_shift, 'personalized_p10': mean / 2,
            'hurt_fraction': hurt, 'gated_personalized_mean': mean,
            'gated_hurt_fraction': hurt and hurt / 4}
  return pd.DataFrame([
      row('fedavg', 'none', 'Non-personalized (FedAvg)', 0.10),
      row('finetune', 'full', 'Local finetuning', 0.12, 0.4),
      row('fedalt_last_block_stateful', 'partial', 'FedAlt', 0.115 + alt_minus_sim, 0.3),
      row('fedsim_last_block_stateful', 'partial', 'FedSim', 0.115, 0.2 + seed_shift)])


def test_findings_follow_the_intervals():
  tables = {s: _table(shift, alt_minus_sim=0.002 + shift / 10)
            for s, shift in enumerate([0.0, 0.01, -0.005])}
  runs, diffs, markdown = grid_lib.over_seeds(tables)
  assert set(runs.index) == {'fedavg', 'finetune', 'fedalt_last_block_stateful',
                             'fedsim_last_block_stateful'}
  alt = diffs.loc['fedalt_last_block_stateful - fedsim_last_block_stateful']
  assert alt.holds and 0 < alt.low < alt.difference
  lines = {line.split(' | ')[0].strip('| '): line for line in markdown.splitlines()}
  # Partial gain (+1.7 pt) is more than half of full (+2 pt), above 0 on every seed.
  assert '| holds |' in lines['partial gets most of the gain of full personalization']
  assert '| holds |' in lines['FedAlt beats FedSim']
  assert '| holds |' in lines['personalization hurts some clients']


def test_an_interval_across_zero_is_unresolved():
  tables = {s: _table(0.0, alt_minus_sim=d) for s, d in enumerate([0.004, -0.003, 0.001])}
  _, diffs, markdown = grid_lib.over_seeds(tables)
  assert not diffs.loc['fedalt_last_block_stateful - fedsim_last_block_stateful'].holds
  assert 'FedAlt beats FedSim | unresolved (intervals include 0)' in markdown


def test_cells_missing_from_a_seed_are_left_out():
  tables = {0: _table(0.0, alt_minus_sim=0.01), 1: _table(0.01, alt_minus_sim=0.01),
            2: _table(0.0, alt_minus_sim=0.01).iloc[:3]}  # seed 2 lacks fedsim
  runs, diffs, markdown = grid_lib.over_seeds(tables)
  assert 'fedsim_last_block_stateful' not in runs.index
  assert 'FedAlt beats FedSim' not in markdown


def test_ffgg_regime_cells_use_equal_gradient_evaluations():
  cells = {c.name: c for c in grid_lib.ffgg_cells(ffgg_tau_v=7)}
  ffgg, fedalt = cells['ffgg_tau7_uniform'].overrides, cells['fedalt_tau7'].overrides
  # Passes over the client's data: FFGG's K fine-tuning steps and one gradient
  # of u; FedAlt's tau_v epochs on v and tau_u on u.
  assert ffgg['tau_v'] + 1 == fedalt['tau_v'] + fedalt['tau_u'] == 8
  assert ffgg['client_weighting'] == 'uniform' and 'client_weighting' not in fedalt
  for cell in (cells['ffgg_tau7_uniform'], cells['fedalt_tau7']):  # Valid runs.
    grid_lib.cell_config(cell, dict(root_output_dir='out', cache_dir='unused'), rounds=3)
