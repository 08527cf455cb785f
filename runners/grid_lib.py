"""The paper's experimental grid as runs of `train_lib`, and its table.

Pillutla et al. (ICML 2022), Table 2: rows are the non-personalized model,
full personalization (local finetuning, Ditto, pFedMe) and partial
personalization (each partition, trained with FedAlt and FedSim); here also
stateful vs stateless clients. Every cell is one `train_lib.train` run under
`<out>/<cell name>`, started from one FedAvg pretraining and compared with one
FedAvg model trained as many rounds more (the non-personalized row), so all
cells share the baseline and its cached per-client results.

A cell whose `report/summary.json` exists is done and skipped, so a grid
resumes cell by cell (and each unfinished cell resumes round by round).
"""

import dataclasses
import fcntl
import fnmatch
import json
import multiprocessing
import os
from typing import Optional, Sequence

import pandas as pd

from partial_personalization import evaluation
from partial_personalization.evaluation import plots
from partial_personalization.execution import runtime
from runners import algorithm_registry
from runners import builders_lib
from runners import config_lib
from runners import train_lib
from tasks import registry

PRETRAIN, BASELINE = 'fedavg_pretrain', 'fedavg'
# Task -> grid partition name -> (personalization, adapter size) (tasks/registry.py).
PARTITIONS = {name: spec.grid_partitions for name, spec in registry.TASKS.items()}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One configuration of the grid.

  Attributes:
    name: Run directory name, e.g. 'fedalt_last_block_stateless'.
    group: 'full' or 'partial' (table section).
    method: Table label of the algorithm, e.g. 'FedAlt', 'Ditto'.
    partition: Grid partition name ('full' for full personalization).
    stateful: Whether personal state persists (None where not applicable).
    overrides: `TrainConfig` fields of this cell.
  """

  name: str
  group: str
  method: str
  partition: str
  stateful: Optional[bool]
  overrides: dict


def paper_cells(*, task: str = 'stackoverflow', partitions: Optional[Sequence[str]] = None,
                finetune_epochs: int = 1, ditto_lambda: float = 0.1,
                pfedme_lambda: float = 1.0) -> list[Cell]:
  """The grid: full-personalization baselines, then partition x algorithm x state.

  Args:
    task: A key of `PARTITIONS`. partitions: Grid partitions of that task
      (default: all).

  Raises:
    ValueError: unknown task or partition.
  """
  if task not in PARTITIONS:
    raise ValueError(f'unknown task {task!r}; choose from {sorted(PARTITIONS)}')
  task_partitions = PARTITIONS[task]
  partitions = list(task_partitions) if partitions is None else partitions
  unknown = sorted(set(partitions) - set(task_partitions))
  if unknown:
    raise ValueError(f'unknown grid partitions {unknown} of task {task}; choose from '
                     f'{list(task_partitions)}')
  cells = [
      Cell('finetune', 'full', 'Local finetuning', 'full', None,
           dict(algorithm='fedavg', personalization='none', total_rounds=0,
                finetune_epochs=finetune_epochs, finetune_personalization='full')),
      Cell('ditto', 'full', 'Ditto', 'full', True,
           dict(algorithm='ditto', personalization='none', prox_strength=ditto_lambda)),
      Cell('pfedme', 'full', 'pFedMe', 'full', True,
           dict(algorithm='pfedme', personalization='none', prox_strength=pfedme_lambda)),
  ]
  for part in partitions:
    personalization, adapter_size = task_partitions[part]
    for algorithm in ('fedalt', 'fedsim'):
      for stateful in (True, False):
        cells.append(Cell(
            f"{algorithm}_{part}_{'stateful' if stateful else 'stateless'}", 'partial',
            algorithm_registry.ALGORITHMS[algorithm].label, part, stateful,
            dict(algorithm=algorithm, personalization=personalization,
                 stateless=not stateful, **({'adapter_size': adapter_size} if adapter_size else {}))))
  return cells


def ffgg_cells(*, task: str = 'stackoverflow', ffgg_server_learning_rate: float = 0.3,
               byzantine_fraction: float = 0.2, attack_scales: Sequence[float] = (1.0, 5.0),
               bucket_size: int = 2, ffgg_tau_v: int = 20, **unused) -> list[Cell]:
  """The FFGG study (Mishchenko et al., TMLR 2025) on the task's default partition.

  FedAlt (1 epoch on v, 1 on u) against FFGG (1 full-batch step on v, then
  one gradient of u) use the same client compute: two passes over the client's
  data. Then, with `byzantine_fraction` of the clients sending their update
  flipped and multiplied by each of `attack_scales`, mean aggregation against
  coordinate-wise median with bucketing, for FFGG and FedAlt. Cell names carry
  the scale when it is not 1 (`ffgg_flip5_median`).

  FFGG in its own regime (Mishchenko et al.'s experiments): `ffgg_tau_v`
  = K full-batch steps on v and the clients' gradients averaged uniformly
  (`ffgg_tau<K>_uniform`), against FedAlt at the same gradient evaluations:
  K epochs on v and 1 on u, K + 1 passes over the client's data each
  (`fedalt_tau<K>`).
  """
  del unused
  if task not in PARTITIONS:
    raise ValueError(f'unknown task {task!r}; choose from {sorted(PARTITIONS)}')
  part = registry.default_personalization(task)
  ffgg = dict(algorithm='ffgg', tau_v=1, server_learning_rate=ffgg_server_learning_rate)
  fedalt = dict(algorithm='fedalt', tau_v=1, tau_u=1)
  robust = dict(aggregator='median', bucket_size=bucket_size)
  k = ffgg_tau_v
  cells = [Cell('fedalt', 'no attack', 'FedAlt', part, True, fedalt),
           Cell('ffgg', 'no attack', 'FFGG', part, True, ffgg),
           Cell(f'fedalt_tau{k}', f'{k + 1} passes', f'FedAlt, tau_v = {k} epochs', part, True,
                dict(fedalt, tau_v=k)),
           Cell(f'ffgg_tau{k}_uniform', f'{k + 1} passes',
                f'FFGG, {k} fine-tuning steps, uniform weights', part, True,
                dict(ffgg, tau_v=k, client_weighting='uniform'))]
  for scale in attack_scales:
    attack = dict(byzantine_fraction=byzantine_fraction, attack='flip', attack_scale=scale)
    tag = 'flip' if scale == 1 else f'flip{scale:g}'
    label = f'{byzantine_fraction:.0%} send -{scale:g} x update'
    for name, method, settings in (('ffgg', 'FFGG', ffgg), ('fedalt', 'FedAlt', fedalt)):
      cells += [
          Cell(f'{name}_{tag}_mean', label, f'{method}, mean', part, True,
               {**settings, **attack}),
          Cell(f'{name}_{tag}_median', label, f'{method}, median, buckets of {bucket_size}',
               part, True, {**settings, **attack, **robust}),
      ]
  return cells


# `--study` of the experiment grid -> its cells.
STUDIES = {'paper': paper_cells, 'ffgg': ffgg_cells}


def select(cells: Sequence[Cell], patterns: Sequence[str]) -> list[Cell]:
  """Cells whose name matches any glob pattern (all if none given)."""
  if not patterns:
    return list(cells)
  chosen = [c for c in cells if any(fnmatch.fnmatch(c.name, p) for p in patterns)]
  if not chosen:
    raise ValueError(f'--cells={",".join(patterns)} matches no cell; cells are '
                     f'{[c.name for c in cells]}')
  return chosen


def _summary_path(config: config_lib.TrainConfig) -> str:
  return os.path.join(config.run_dir, 'report', 'summary.json')


def train_baseline(common: dict, *, pretrain_rounds: int, rounds: int, log=print) -> None:
  """FedAvg pretraining, then the non-personalized FedAvg model (`rounds` more).

  Holds a file lock so that several grid shards started together train them
  once; the others wait, then find them complete.
  """
  out = common['root_output_dir']
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, '.baseline.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    for name, kwargs in (
        (PRETRAIN, dict(total_rounds=pretrain_rounds)),
        (BASELINE, dict(total_rounds=rounds, init_from=os.path.join(out, PRETRAIN)))):
      config = config_lib.TrainConfig(experiment_name=name, **{
          **common, 'algorithm': 'fedavg', 'personalization': 'none', **kwargs})
      log(f'== {name}: FedAvg, {config.total_rounds} rounds x {config.clients_per_round} '
          'clients (resumes; nothing to do if complete)')
      train_lib.train(config)


def cell_config(cell: Cell, common: dict, rounds: int) -> config_lib.TrainConfig:
  out = common['root_output_dir']
  return config_lib.TrainConfig(experiment_name=cell.name, **{
      **common, 'total_rounds': rounds, 'init_from': os.path.join(out, PRETRAIN),
      'baseline_model': os.path.join(out, BASELINE), **cell.overrides})


def run_cell(cell: Cell, config: config_lib.TrainConfig, log=print) -> dict:
  """Runs one cell unless its report exists; returns its summary."""
  path = _summary_path(config)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  log(f'== {cell.name}: {config.algorithm}, personalization={config.personalization}'
      f"{f' (adapter {config.adapter_size})' if config.adapter_size else ''}, "
      f"{'stateless' if config.stateless else 'stateful'}, {config.total_rounds} rounds")
  result = train_lib.train(config)
  log(f"   {result['personal_parameters']:,} personal parameters; "
      f"{result['rounds_run']} rounds in {result['seconds']:.0f} s; personalized mean "
      f"{result['summary']['personalized_mean']:.2%} vs {result['summary']['baseline_mean']:.2%}")
  return result['summary']


def _run_cell_child(cell: Cell, config: config_lib.TrainConfig,
                    executor: runtime.ExecutorConfig) -> None:
  try:
    runtime.set_executor(executor)
    run_cell(cell, config)
  finally:
    runtime.shutdown_tff_runtime()


def run_cell_in_subprocess(cell: Cell, config: config_lib.TrainConfig,
                           executor: Optional[runtime.ExecutorConfig] = None) -> dict:
  """`run_cell` in a fresh interpreter, so memory does not grow cell by cell.

  TFF's local worker keeps every computation it has seen (and replacing the
  execution context does not free it), about 1 GB per cell here; a process
  per cell bounds the grid's memory at one cell's.

  Raises:
    RuntimeError: the cell's process failed (its error is in the log above);
      running the grid again resumes the cell.
  """
  if os.path.exists(_summary_path(config)):
    return run_cell(cell, config)  # done: no process needed
  process = multiprocessing.get_context('spawn').Process(
      target=_run_cell_child, args=(cell, config, executor or runtime.ExecutorConfig()))
  process.start()
  process.join()
  if process.exitcode != 0:
    raise RuntimeError(f'cell {cell.name} failed (exit code {process.exitcode}); see its '
                       'error above. Run the grid again to resume it.')
  with open(_summary_path(config)) as f:
    return json.load(f)


_COLUMNS = ['personalized_mean', 'personalized_std', 'personalized_p10', 'personalized_p25',
            'personalized_p50', 'personalized_p75', 'personalized_p90', 'helped_fraction',
            'hurt_fraction', 'gated_personalized_mean', 'gated_personalized_p10',
            'gated_hurt_fraction', 'gated_personalized_fraction']


def results_table(cells: Sequence[Cell], summaries: dict[str, dict]) -> pd.DataFrame:
  """One row per finished cell plus the non-personalized row (from any cell's baseline)."""
  rows = []
  if summaries:
    s = next(iter(summaries.values()))
    base = {'cell': BASELINE, 'group': 'none', 'method': 'Non-personalized (FedAvg)', 'partition': 'none',
            'state': '', 'personal_parameters': 0, 'clients': s['clients']}
    for key in ('mean', 'std', 'p10', 'p25', 'p50', 'p75', 'p90'):
      base[f'personalized_{key}'] = s[f'baseline_{key}']
    rows.append(base)
  for cell in cells:
    s = summaries.get(cell.name)
    if s is None:
      continue
    row = {'cell': cell.name, 'group': cell.group, 'method': cell.method, 'partition': cell.partition,
           'state': '' if cell.stateful is None else ('stateful' if cell.stateful else 'stateless'),
           'personal_parameters': s.get('personal_parameters'), 'clients': s['clients']}
    row.update({c: s.get(c) for c in _COLUMNS})
    if 'honest' in s:  # Runs with Byzantine clients: their honest clients alone.
      row.update({f'honest_{k}': s['honest'][f'personalized_{k}'] for k in ('mean', 'p10')})
      row['honest_clients'] = s['honest']['clients']
    rows.append(row)
  return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
  """The paper-style table: mean and 10th percentile, plus hurt and gating."""
  def pct(x, digits=2):
    return '' if pd.isna(x) else f'{x:.{digits}%}'

  honest = 'honest_mean' in table and table.honest_mean.notna().any()
  extra = ' honest mean | honest p10 |' if honest else ''
  lines = ['| group | method | personal part | state | personal params | mean | p10 | '
           'helped | hurt | gated mean | gated p10 | gated hurt |' + extra,
           '|' + '---|' * (14 if honest else 12)]
  for _, r in table.iterrows():
    line = (
        f"| {r.group} | {r.method} | {r.partition} | {r.state} | "
        f"{int(r.personal_parameters):,} | {pct(r.personalized_mean)} | "
        f"{pct(r.personalized_p10)} | {pct(r.get('helped_fraction'), 1)} | "
        f"{pct(r.get('hurt_fraction'), 1)} | "
        f"{pct(r.get('gated_personalized_mean'))} | {pct(r.get('gated_personalized_p10'))} | "
        f"{pct(r.get('gated_hurt_fraction'), 1)} |")
    if honest:
      line += f" {pct(r.get('honest_mean'))} | {pct(r.get('honest_p10'))} |"
    lines.append(line)
  return '\n'.join(lines)


def write_outputs(cells: Sequence[Cell], common: dict, rounds: int) -> tuple[pd.DataFrame, str]:
  """Table (CSV, Markdown) and figures (PNG) of every finished cell.

  Reads what is on disk under `common['root_output_dir']`, so cells finished
  by other shards or earlier runs are included. Returns (table, markdown).
  """
  out = common['root_output_dir']
  summaries, frames = {}, {}
  for cell in cells:
    report = os.path.join(out, cell.name, 'report')
    if os.path.exists(os.path.join(report, 'summary.json')):
      with open(os.path.join(report, 'summary.json')) as f:
        summaries[cell.name] = json.load(f)
      if summaries[cell.name].get('personal_parameters') is None:  # reports before it was stored
        summaries[cell.name]['personal_parameters'] = builders_lib.parameter_counts(
            cell_config(cell, common, rounds))[1]
      frames[cell.name] = pd.read_csv(os.path.join(report, 'per_client.csv'), index_col=0)
      # The gate is recomputed from the stored heldout results, so every cell
      # uses the current rule (`evaluation.gate_by_heldout`); reports written
      # before heldout results were stored keep their own (margin-free) gate.
      if 'heldout_personalized' in frames[cell.name]:
        _, gated = evaluation.gate_by_heldout(frames[cell.name])
        summaries[cell.name].update(gated)
  table = results_table(cells, summaries)
  table.to_csv(os.path.join(out, 'table.csv'), index=False)
  markdown = markdown_table(table)
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(markdown + '\n')
  if frames:
    plots.plot_delta_vs_train_size(frames, os.path.join(out, 'delta_vs_train_size.png'))
    plots.plot_delta_histograms(frames, os.path.join(out, 'delta_histograms.png'))
    plots.plot_accuracy_vs_parameters(table, os.path.join(out, 'accuracy_vs_parameters.png'))
    curves = {name: pd.read_csv(os.path.join(out, name, 'metrics.csv')) for name in frames
              if os.path.exists(os.path.join(out, name, 'metrics.csv'))}
    plots.plot_training_curves(curves, os.path.join(out, 'training_loss.png'))
  return table, markdown



# Columns of a grid row summarized over seeds (mean and 95% interval).
SEED_COLUMNS = ['personalized_mean', 'personalized_p10', 'hurt_fraction',
                'gated_personalized_mean', 'gated_hurt_fraction']


def seed_dir(out: str, seed: int) -> str:
  """Where the grid of one seed lives when the grid runs several (`--seeds`)."""
  return os.path.join(out, f'seed{seed}')


def over_seeds(tables: dict[int, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
  """The grid's rows over seeds and the verdict on each of the paper's findings.

  Args:
    tables: seed -> `results_table` of that seed's grid.

  Returns:
    (runs: mean and 95% interval of `SEED_COLUMNS` per cell; differences: each
     cell against the non-personalized row and FedAlt - FedSim per partition and
     state, paired by seed; Markdown of both tables and the verdicts).
  """
  rows = [{'run': r.cell, 'seed': seed, **{c: r.get(c) for c in SEED_COLUMNS}}
          for seed, table in tables.items() for _, r in table.iterrows()]
  per_seed = pd.DataFrame(rows)
  done = {run for run, g in per_seed.groupby('run') if len(g) == len(tables)}
  per_seed = per_seed[per_seed.run.isin(done)]
  cells = pd.concat(tables.values()).drop_duplicates('cell').set_index('cell')
  cells = cells[cells.index.isin(done)]
  # FedAlt - FedSim for each partition and state that has both.
  alt, sim = (algorithm_registry.ALGORITHMS[name].label for name in ('fedalt', 'fedsim'))
  pairs = [(a, b) for a, ca in cells[cells.method == alt].iterrows()
           for b, cb in cells[cells.method == sim].iterrows()
           if (ca.partition, ca.state) == (cb.partition, cb.state)]
  runs, differences = evaluation.over_seeds(per_seed, columns=SEED_COLUMNS, baseline=BASELINE,
                                            pairs=pairs)
  markdown = evaluation.format_over_seeds(runs, differences)
  return runs, differences, markdown + '\n\n' + findings(runs, differences, pairs,
                                                          groups=cells.group.to_dict())


def findings(runs: pd.DataFrame, differences: pd.DataFrame,
             pairs: Sequence[tuple[str, str]], *, groups: dict[str, str]) -> str:
  """The paper's three findings, each decided by the 95% intervals over seeds.

  1. Partial personalization gets most of the gain of full personalization:
     the best partial cell's gain over FedAvg has an interval above 0 and a
     mean at least half of the best full-personalization cell's gain.
  2. FedAlt beats FedSim: every paired FedAlt - FedSim interval lies above 0
     (does not hold if one lies below 0; unresolved otherwise).
  3. Personalization hurts some clients: the hurt fraction's interval lies
     above 0 for every partial cell.

  `groups`: run -> its cell's group ('partial' or 'full'); `pairs`: the
  (FedAlt, FedSim) runs of one partition and state.
  """
  gains = {name.split(' - ')[0]: d for name, d in differences.iterrows()
           if name.endswith(f' - {BASELINE}')}
  partial = {k: d for k, d in gains.items() if groups.get(k) == 'partial'}
  full = {k: d for k, d in gains.items() if groups.get(k) == 'full'}
  lines = ['| finding | verdict | evidence |', '|---|---|---|']
  if partial and full:
    best_p = max(partial, key=lambda k: partial[k].difference)
    best_f = max(full, key=lambda k: full[k].difference)
    p, f = partial[best_p], full[best_f]
    holds = p.low > 0 and p.difference >= 0.5 * f.difference
    lines.append(f'| partial gets most of the gain of full personalization | '
                 f"{'holds' if holds else 'does not hold'} | best partial {best_p} "
                 f'{p.difference:+.2%} [{p.low:+.2%}, {p.high:+.2%}]; best full {best_f} '
                 f'{f.difference:+.2%} [{f.low:+.2%}, {f.high:+.2%}] |')
  if pairs:
    alt = [differences.loc[f'{a} - {b}'] for a, b in pairs]
    verdict = ('holds' if all(d.low > 0 for d in alt) else
               'does not hold' if any(d.high < 0 for d in alt) else
               'unresolved (intervals include 0)')
    lines.append(f'| FedAlt beats FedSim | {verdict} | '
                 + '; '.join(f'{a} - {b} {d.difference:+.2%} '
                             f'[{d.low:+.2%}, {d.high:+.2%}]' for (a, b), d in zip(pairs, alt))
                 + ' |')
  hurt = runs[[groups.get(run) == 'partial' for run in runs.index]]
  if len(hurt):
    holds = bool((hurt.hurt_fraction_low > 0).all())
    lines.append(f"| personalization hurts some clients | {'holds' if holds else 'not in every cell'}"
                 f' | hurt fraction {hurt.hurt_fraction.min():.0%} to '
                 f'{hurt.hurt_fraction.max():.0%} of clients across partial cells |')
  return '\n'.join(lines)
