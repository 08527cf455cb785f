"""The paper's experiment in its own regime, behind the main job.

Pillutla et al. (ICML 2022, Sec. 5) personalize a global model pretrained with
FedAvg, with every client taking part many times. From that model, for each
seed:

1. FedAvg trained as long (the non-personalized baseline), FedAlt and FedSim
   with the personal part `personalization` (stateful: v_i persists across a
   client's participations), all with balanced client sampling, so after R
   rounds of m of n clients every client has trained R * m / n times.
2. The evaluation protocol: each personal part finetuned on the client's train
   split before test; "FedAvg + finetune" (`finetune:<part>`) finetunes a part
   of FedAvg's model per client, for each of `finetune_parts` (the paper's
   comparison of personal parts, full finetuning included). The number of
   finetuning epochs of each method is chosen on the first seed's heldout
   split among `finetune_epochs` (never on test), then used for every seed.
3. Per-client test accuracy of every method, each client's change against
   FedAvg with a paired test over its sentences (`evaluation.paired`), and the
   findings as differences with 95% intervals over seeds and clients
   (`intervals.two_level_bootstrap`).

Per-client results are cached under `<out>/eval/seed<s>/`, keyed by what they
depend on, so a finished job re-runs in seconds and an interrupted one resumes.
"""

import dataclasses
import hashlib
import json
import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from partial_personalization import evaluation
from partial_personalization.evaluation import intervals
from partial_personalization.evaluation import paired
from partial_personalization.evaluation import protocol
from partial_personalization.programs import progress as progress_lib
from partial_personalization.programs import training_loop
from partial_personalization.state import client_state
from partial_personalization.state import integrity
from runners import builders_lib
from runners import config_lib
from runners import population_lib
from runners import weights_lib

BASELINE = 'fedavg'
PERSONALIZED = ('fedalt', 'fedsim')
_FINETUNE = 'finetune:'


@dataclasses.dataclass(frozen=True)
class Settings:
  """The personalization stage and its evaluation (main job flags)."""
  seeds: tuple[int, ...] = (0, 1, 2)
  rounds: int = 53
  clients_per_round: int = 10
  max_examples_per_client: int = 64
  personalization: str = 'last_block'
  model_size: str = 'tiny'
  client_optimizer: str = 'adam'
  client_learning_rate: float = 1e-3
  personal_learning_rate: Optional[float] = None
  clip_norm: float = 0.0
  finetune_epochs: tuple[int, ...] = (0, 1, 2, 3)
  finetune_parts: tuple[str, ...] = ('last_block', 'full')
  adapter_size: int = 16
  rounds_per_eval: int = 0
  # Clients evaluated (a seeded sample, the same for every method and seed;
  # 0: all). Evaluation otherwise grows with the population.
  test_clients: int = 0
  progress: bool = True

  def __post_init__(self):
    if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
      raise ValueError('`seeds` needs at least 2 distinct seeds (intervals over seeds)')
    if not self.finetune_epochs or min(self.finetune_epochs) < 0:
      raise ValueError('`finetune_epochs` needs one or more epoch counts >= 0')
    if not self.finetune_parts:
      raise ValueError('`finetune_parts` needs at least one part')
    if self.test_clients < 0:
      raise ValueError('`test_clients` must be >= 0 (0: every client)')

  @property
  def methods(self) -> list[str]:
    return ([BASELINE] + [f'{_FINETUNE}{p}' for p in self.finetune_parts]
            + list(PERSONALIZED))


def method_part(settings: Settings, method: str) -> str:
  """The personal part a method finetunes and evaluates with."""
  if method.startswith(_FINETUNE):
    return method[len(_FINETUNE):]
  return 'none' if method == BASELINE else settings.personalization


def run_configs(settings: Settings, seed: int, out: str, cache_dir: str,
                init_from: str) -> dict[str, config_lib.TrainConfig]:
  """FedAvg, FedAlt and FedSim of one seed, from the global model `init_from`."""
  common = dict(
      root_output_dir=out, cache_dir=cache_dir, model_size=settings.model_size,
      client_optimizer=settings.client_optimizer,
      client_learning_rate=settings.client_learning_rate,
      personal_learning_rate=settings.personal_learning_rate, clip_norm=settings.clip_norm,
      clients_per_round=settings.clients_per_round, client_sampling='balanced',
      total_rounds=settings.rounds, max_examples_per_client=settings.max_examples_per_client,
      seed=seed, rounds_per_checkpoint=10, rounds_per_eval=settings.rounds_per_eval,
      eval_clients=100_000, init_from=init_from, report=False, progress=settings.progress)
  configs = {BASELINE: config_lib.TrainConfig(
      experiment_name=f'seed{seed}/{BASELINE}', algorithm='fedavg', personalization='none',
      **common)}
  for algorithm in PERSONALIZED:
    configs[algorithm] = config_lib.TrainConfig(
        experiment_name=f'seed{seed}/{algorithm}', algorithm=algorithm,
        personalization=settings.personalization, **common)
  return configs


def _slug(method: str) -> str:
  return method.replace(':', '_')


class SeedEvaluation:
  """Per-client test (and heldout) results of every method of one seed.

  Args:
    settings: the job's settings. seed: the seed.
    configs: `run_configs` of the seed, trained.
    eval_dir: where results are cached (`<out>/eval/seed<s>`).
  """

  def __init__(self, settings: Settings, seed: int, configs: dict, eval_dir: str):
    self.settings, self.seed, self.configs, self.eval_dir = settings, seed, configs, eval_dir
    self._tasks = {}

  def _task(self, part: str):
    if part not in self._tasks:
      config = self._config(part)
      task = config_lib.create_task(config, personalization=part)
      evaluate = builders_lib.memoized('evaluation', config,
                                       lambda: builders_lib.build_evaluation(task),
                                       personalization=part)
      self._tasks[part] = (config, task, evaluate)
    return self._tasks[part]

  def _config(self, part: str) -> config_lib.TrainConfig:
    base = self.configs[BASELINE]
    return dataclasses.replace(base, adapter_size=self.settings.adapter_size) \
        if part == 'adapter' else base

  def _key(self, method: str, epochs: Sequence[int]) -> str:
    source = self.configs[BASELINE if method.startswith(_FINETUNE) else method].run_dir
    # What the results depend on besides the models: the finetuning's data and
    # optimizer, and the adapter's size (other settings are in the models).
    finetuning = {k: getattr(self.settings, k) for k in (
        'max_examples_per_client', 'client_optimizer', 'client_learning_rate',
        'personal_learning_rate', 'clip_norm', 'adapter_size', 'personalization')}
    if self.settings.test_clients:  # Keys of all-client results stay as they were.
      finetuning['test_clients'] = self.settings.test_clients
    parts = [method, json.dumps(list(epochs)), str(self.seed),
             integrity.file_sha256(weights_lib.model_file(source)),
             integrity.file_sha256(weights_lib.model_file(self.configs[BASELINE].run_dir)),
             json.dumps(finetuning, sort_keys=True)]
    return hashlib.sha256('\n'.join(parts).encode()).hexdigest()

  def start_weights(self, method: str, ids: Sequence[str]):
    """(u, [v_i]) of a method before finetuning, in its part's partition."""
    part = method_part(self.settings, method)
    config, task, _ = self._task(part)
    if method in PERSONALIZED:
      run = self.configs[method]
      named = weights_lib.load_init_weights(run.run_dir)
      u = task.partition.split(named)[0]
      store_path = os.path.join(run.run_dir, 'client_state.sqlite')
      store = client_state.ClientStateStore(store_path, task.partition.split(named)[1])
      try:
        personal = store.read(ids, before_round=store.committed_round + 1)
        self.participations = dict(zip(ids, store.participations(
            ids, before_round=store.committed_round + 1)))
      finally:
        store.close()
      return u, personal
    # FedAvg's model in the part's partition; variables FedAvg lacks (adapters,
    # identity at their start) come from the part's initial weights.
    fedavg = weights_lib.load_init_weights(self.configs[BASELINE].run_dir)
    named = {**task.initial_weights(self.seed),
             **task.complete_weights_fn(fedavg, task.partition.shapes)}
    u, v = task.partition.split(named)
    return u, [v] * len(ids)

  def evaluate(self, method: str, epochs: Sequence[int], bar) -> tuple[pd.DataFrame, dict]:
    """Finetunes the method's personal parts for each of `epochs` (one pass of
    one epoch after another, the local optimizer restarted per pass, as a
    client reached again), evaluates each on heldout, and the last of
    `epochs` (the chosen one, or the first seed's best: see `choose`) on test.

    Returns:
      (per client: `accuracy`, `tokens`, `loss` on test, `heldout_accuracy`,
       `epochs`; {epochs: token-weighted heldout accuracy}), cached.
    """
    key = self._key(method, epochs)
    path = os.path.join(self.eval_dir, f'{_slug(method)}.csv')
    meta_path = path.replace('.csv', '.json')
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        meta = json.load(f)
      if meta.get('key') == key and os.path.exists(path):
        bar.update(meta['work'])
        return pd.read_csv(path, index_col=0), {int(k): v for k, v in meta['heldout'].items()}
    part = method_part(self.settings, method)
    config, task, evaluate = self._task(part)
    metric = task.report_metric
    ids = self.client_ids(task)
    h_ids = [c for c in ids if c in set(task.heldout_data.client_ids)]
    h_sets = population_lib.eval_datasets(task, 'heldout', h_ids)
    u, personal = self.start_weights(method, ids)
    by_epochs, heldout, done = {}, {}, 0
    bar.set_description(f'seed {self.seed}: {method}')
    for e in sorted(epochs):
      while done < e:
        personal = self._finetune_pass(config, task, part, u, personal, ids, done, bar)
        done += 1
      by_id = dict(zip(ids, personal))
      h = evaluation.evaluate_clients(evaluate, u, [by_id[c] for c in h_ids], h_sets, h_ids,
                                      metric, progress=bar.update)
      heldout[e] = float(np.average(h[metric], weights=h.tokens)) if h.tokens.sum() else np.nan
      by_epochs[e] = (personal, h)
    chosen = epochs[-1] if len(epochs) == 1 else max(sorted(epochs), key=lambda e: heldout[e])
    personal, h = by_epochs[chosen]
    test = evaluation.evaluate_clients(evaluate, u, personal,
                                       population_lib.eval_datasets(task, 'test', ids), ids,
                                       metric, progress=bar.update)
    test['heldout_accuracy'] = h[metric].reindex(test.index)
    test['epochs'] = chosen
    if method != BASELINE:
      self._paired(method, task, part, u, personal, ids, bar)
    if method in PERSONALIZED:
      test['participations'] = pd.Series(self.participations).reindex(test.index)
    os.makedirs(self.eval_dir, exist_ok=True)
    test.to_csv(path)
    with open(meta_path, 'w') as f:
      json.dump({'key': key, 'heldout': heldout, 'chosen': chosen,
                 'work': self.work(method, epochs)}, f, indent=2)
    return test, heldout

  def _finetune_pass(self, config, task, part, u, personal, ids, done, bar) -> list:
    finetune = builders_lib.memoized(
        'finetuning', config, lambda: builders_lib.build_finetuning(config, task, 1),
        personalization=part, epochs=1)
    # Shuffles of "round" 2**31 - 1 - pass: never a training round's.
    sets = [task.train_dataset(c, training_loop.dataset_seed(self.seed, 2**31 - 1 - done, i))
            for i, c in enumerate(ids)]
    return protocol.finetune_clients(finetune, u, personal, sets,
                                                progress=bar.update)

  def _paired(self, method, task, part, u, personal, ids, bar) -> None:
    """Sentence-level test scores of FedAvg (a) and the method (b)."""
    u_a, v_a = self.start_weights(BASELINE if part == 'none' else f'{_FINETUNE}{part}', ids)
    config = self._task(part)[0]
    computation = builders_lib.memoized(
        'paired_evaluation', config, lambda: paired.build_paired_evaluation(
            task.reconstruction_model_fn, metrics_fn=task.metrics_fn,
            metric=task.report_metric), personalization=part)
    rows = paired.evaluate_pairs(
        computation, u_a, v_a, u, personal, population_lib.eval_datasets(task, 'test', ids), ids,
        progress=bar.update)
    rows.to_csv(os.path.join(self.eval_dir, f'{_slug(method)}_sentences.csv.gz'), index=False)

  def sentences(self, method: str) -> pd.DataFrame:
    return pd.read_csv(os.path.join(self.eval_dir, f'{_slug(method)}_sentences.csv.gz'))

  def work(self, method: str, epochs: Sequence[int]) -> int:
    """Client evaluations and finetunings of `evaluate` (for the progress bar)."""
    n = self.clients
    return n * (max(epochs) + len(epochs) + 1 + (method != BASELINE))

  def client_ids(self, task) -> list[str]:
    """The evaluated clients: all with train and test data, or a sample of
    `test_clients` of them drawn with seed 0 (the same for every seed, so
    differences stay paired)."""
    ids = population_lib.evaluation_clients(task)
    n = self.settings.test_clients
    if n and n < len(ids):
      ids = sorted(np.random.default_rng(0).permutation(ids)[:n].tolist())
    return ids

  @property
  def clients(self) -> int:
    return len(self.client_ids(self._task('none')[1]))


def choose_epochs(settings: Settings, method: str) -> list[int]:
  """Candidates of a method: FedAvg is evaluated as trained (0 epochs)."""
  return [0] if method == BASELINE else sorted(settings.finetune_epochs)


def evaluate_all(settings: Settings, configs_by_seed: dict, out: str) -> dict:
  """Every method of every seed; the first seed chooses each method's epochs.

  Returns:
    {'results': {(seed, method): per-client frame}, 'heldout': {method:
     {epochs: heldout accuracy (first seed)}}, 'chosen': {method: epochs},
     'evaluations': {seed: SeedEvaluation}}.
  """
  results, heldout, chosen, evaluations = {}, {}, {}, {}
  first = settings.seeds[0]
  for seed in settings.seeds:
    ev = SeedEvaluation(settings, seed, configs_by_seed[seed], os.path.join(out, 'eval',
                                                                            f'seed{seed}'))
    evaluations[seed] = ev
    plan = {m: (choose_epochs(settings, m) if seed == first else [chosen[m]])
            for m in settings.methods}
    total = sum(ev.work(m, e) for m, e in plan.items())
    with progress_lib.bar(total=total, desc=f'evaluating seed {seed}', unit='client',
                          disable=not settings.progress) as bar:
      for method, epochs in plan.items():
        frame, h = ev.evaluate(method, epochs, bar)
        results[(seed, method)] = frame
        if seed == first:
          heldout[method] = h
          chosen[method] = int(frame.epochs.iloc[0])
  return {'results': results, 'heldout': heldout, 'chosen': chosen, 'evaluations': evaluations}


def _matrix(results, seeds, method, clients) -> np.ndarray:
  return np.stack([results[(s, method)].accuracy.reindex(clients).to_numpy() for s in seeds])


def findings(settings: Settings, evaluated: dict) -> dict:
  """Rows, differences and hurt fractions (see the module docstring).

  Returns:
    {'rows': DataFrame (method: mean accuracy, interval, per-seed means, epochs),
     'differences': DataFrame (name: mean, low, high, decided, per-seed),
     'hurt': DataFrame (method, seed: clients, hurt_raw, hurt_significant, ...),
     'participations': Series (per personalized run: min/median/max),
     'per_client': long DataFrame}.
  """
  results, seeds = evaluated['results'], list(settings.seeds)
  base = results[(seeds[0], BASELINE)]
  clients = sorted(base.index[base.tokens > 0])
  tokens = base.tokens.reindex(clients).to_numpy()
  acc = {m: _matrix(results, seeds, m, clients) for m in settings.methods}
  rows = {}
  for m in settings.methods:
    mean, low, high = intervals.two_level_bootstrap(acc[m], tokens)
    per_seed = np.sum(acc[m] * tokens, 1) / tokens.sum()
    rows[m] = {'accuracy': mean, 'low': low, 'high': high,
               'per_seed': ' '.join(f'{x:.2%}' for x in per_seed),
               'finetune_epochs': evaluated['chosen'][m],
               'heldout_by_epochs': json.dumps({str(k): round(v, 5) for k, v in
                                                evaluated['heldout'][m].items()})}
  pairs = [(m, BASELINE) for m in settings.methods if m != BASELINE]
  ft = f'{_FINETUNE}{settings.personalization}'
  if ft in acc:
    pairs += [(m, ft) for m in PERSONALIZED]
  pairs.append(('fedalt', 'fedsim'))
  diffs = {}
  for a, b in pairs:
    d = acc[a] - acc[b]
    mean, low, high = intervals.two_level_bootstrap(d, tokens)
    per_seed = np.sum(d * tokens, 1) / tokens.sum()
    diffs[f'{a} - {b}'] = {'difference': mean, 'low': low, 'high': high,
                           'decided': intervals.decided(low, high) or 'undecided',
                           'per_seed': ' '.join(f'{x * 100:+.2f}' for x in per_seed)}
  full = f'{_FINETUNE}full'
  if full in acc:  # Finding (a): each part against full finetuning.
    for part in settings.finetune_parts:
      m = f'{_FINETUNE}{part}'
      if m != full:
        pairs_a = acc[m] - acc[full]
        mean, low, high = intervals.two_level_bootstrap(pairs_a, tokens)
        diffs[f'{m} - {full}'] = {
            'difference': mean, 'low': low, 'high': high,
            'decided': intervals.decided(low, high) or 'undecided',
            'per_seed': ' '.join(f'{x * 100:+.2f}' for x in pairs_a @ tokens / tokens.sum())}
    # The share of full finetuning's gain a part gets is only defined where
    # that gain is itself above 0.
    draws_full = intervals.bootstrap_means((acc[full] - acc[BASELINE])[None], tokens)
    full_low = np.quantile(draws_full[:, 0], 0.025)
    for part in settings.finetune_parts:
      m = f'{_FINETUNE}{part}'
      if m == full or full_low <= 0:
        continue
      draws = intervals.bootstrap_means((acc[m] - acc[BASELINE])[None], tokens)
      ratio = draws[:, 0] / draws_full[:, 0]
      gain = np.sum((acc[m] - acc[BASELINE]) * tokens, 1).mean() / tokens.sum()
      gain_full = np.sum((acc[full] - acc[BASELINE]) * tokens, 1).mean() / tokens.sum()
      low, high = np.quantile(ratio, [0.025, 0.975])
      diffs[f'share of full finetuning gain: {m}'] = {
          'difference': gain / gain_full, 'low': low, 'high': high,
          'decided': 'share', 'per_seed': ''}
  hurt, per_client = [], []
  for seed in seeds:
    ev = evaluated['evaluations'][seed]
    for m in settings.methods:
      frame = results[(seed, m)].reindex(clients)
      row = {'seed': seed, 'method': m, 'client_id': clients, 'accuracy': frame.accuracy,
             'tokens': tokens, 'heldout_accuracy': frame.heldout_accuracy,
             'epochs': frame.epochs, 'baseline': results[(seed, BASELINE)].accuracy.reindex(
                 clients)}
      if 'participations' in frame:
        row['participations'] = frame.participations
      if m != BASELINE:
        changes = intervals.client_change_intervals(ev.sentences(m), seed=seed).reindex(clients)
        row.update(change=changes.change, change_low=changes.low, change_high=changes.high,
                   hurt=changes.hurt, helped=changes.helped)
        hurt.append({'seed': seed, 'method': m, **intervals.hurt_fractions(changes)})
      per_client.append(pd.DataFrame(row))
  per_client = pd.concat(per_client, ignore_index=True)
  parts = per_client.dropna(subset=['participations']) if 'participations' in per_client \
      else per_client.iloc[:0]
  participations = parts.groupby('method').participations.describe()
  return {'rows': pd.DataFrame(rows).T, 'differences': pd.DataFrame(diffs).T,
          'hurt': pd.DataFrame(hurt), 'participations': participations,
          'per_client': per_client}
