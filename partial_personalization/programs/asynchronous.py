"""Asynchronous training, simulated: the server applies each client's update as
it arrives, computed from the (stale) u the client started from.

Mishchenko et al., TMLR 2025, Algorithm 3 (asynchronous FFGG); it runs any
algorithm of `algorithms` the same way. The simulation keeps
`concurrency` clients in flight. A client starting at server version t trains
on u_t right away (its output is fixed then) and arrives `delay` simulated time
units later; arrivals are applied one by one in time order (ties: start order)
with `server_step`, each counting as one server version. Its staleness is the
number of versions applied meanwhile. With `delay_adaptive`, the update is
scaled by min(1, concurrency / staleness), the delay-adaptive step size of
asynchronous SGD (Koloskova et al., NeurIPS 2022; Mishchenko et al., NeurIPS
2022), so stale updates move u less.

A round of the training loop is `clients_per_round` arrivals, each followed by
one start (the round's sampled clients, in order), so checkpoints, metrics and
personal-state commits keep their meaning. Interrupting a run loses the clients
in flight: a resumed run refills the pool from the resumed u (logged), so its
numbers differ from an uninterrupted run.
"""

import dataclasses
import heapq
import zlib
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np

from partial_personalization.programs import round_runners
from partial_personalization.programs import training_loop
from partial_personalization.templates import client_work

DISTRIBUTIONS = ('exponential', 'uniform', 'constant')


@dataclasses.dataclass(frozen=True)
class DelayModel:
  """Simulated time from a client's start to its arrival.

  Attributes:
    distribution: exponential (mean `mean`), uniform on [0, 2 * mean], or
      constant `mean`.
    mean: Mean delay (simulated time units), > 0.
    slow_fraction: Fraction of the population that is slow (seeded, fixed).
    slow_factor: Delays of slow clients are multiplied by this.
    seed: Seeds the slow set and every delay.
  """

  distribution: str = 'exponential'
  mean: float = 1.0
  slow_fraction: float = 0.0
  slow_factor: float = 10.0
  seed: int = 0

  def __post_init__(self):
    if self.distribution not in DISTRIBUTIONS:
      raise ValueError(f'`async_delay` must be one of {DISTRIBUTIONS}, got {self.distribution!r}')
    if self.mean <= 0 or not 0 <= self.slow_fraction <= 1 or self.slow_factor <= 0:
      raise ValueError('need `async_delay_mean` > 0, `async_slow_fraction` in [0, 1] and '
                       '`async_slow_factor` > 0')

  def slow_clients(self, client_ids: Sequence[str]) -> set[str]:
    ids = sorted(client_ids)
    count = int(round(self.slow_fraction * len(ids)))
    return {ids[i] for i in np.random.default_rng([self.seed, 11]).choice(len(ids), count,
                                                                          replace=False)}

  def sample(self, client_id: str, start_index: int, slow: bool) -> float:
    """The delay of the `start_index`-th start overall, for this client."""
    rng = np.random.default_rng([self.seed, start_index, zlib.crc32(client_id.encode())])
    if self.distribution == 'exponential':
      delay = rng.exponential(self.mean)
    elif self.distribution == 'uniform':
      delay = rng.uniform(0, 2 * self.mean)
    else:
      delay = self.mean
    return delay * (self.slow_factor if slow else 1.0)


@dataclasses.dataclass(order=True)
class InFlight:
  finish_time: float
  start_index: int
  client_id: str = dataclasses.field(compare=False)
  start_version: int = dataclasses.field(compare=False)
  output: Any = dataclasses.field(compare=False, default=None)


class AsyncSimulator:
  """Clients in flight, popped in arrival order (finish time, then start order)."""

  def __init__(self):
    self.now = 0.0
    self.starts = 0
    self._heap: list[InFlight] = []

  def __len__(self):
    return len(self._heap)

  def in_flight(self) -> set[str]:
    return {c.client_id for c in self._heap}

  def start(self, client_id: str, version: int, delay: float, output=None) -> InFlight:
    item = InFlight(self.now + delay, self.starts, client_id, version, output)
    self.starts += 1
    heapq.heappush(self._heap, item)
    return item

  def pop(self) -> InFlight:
    """The next arrival; advances simulated time to it."""
    item = heapq.heappop(self._heap)
    self.now = item.finish_time
    return item


def scale_update(output: client_work.ClientOutput, factor: float) -> client_work.ClientOutput:
  if factor == 1.0:
    return output
  return output._replace(shared_update=[factor * np.asarray(u) for u in output.shared_update])


@dataclasses.dataclass(kw_only=True)
class AsyncRunner(round_runners.PersonalizedRunner):
  """Asynchronous rounds of a `PersonalizedProcess` (see the module docstring).

  Starts, personal state and the global model work as in `PersonalizedRunner`
  (attacks are not simulated here: there is no asynchronous `ByzantineRunner`). `run_round` gets the round's sampled
  clients as the clients to start after each arrival; one already in flight is
  replaced by a seeded draw of an idle client.
  """

  population: Sequence[str]
  make_dataset: Callable[[str, int], Any]
  delays: DelayModel
  concurrency: int
  seed: int = 0
  delay_adaptive: bool = False

  def __post_init__(self):
    if not 1 <= self.concurrency <= len(self.population):
      raise ValueError(f'`async_concurrency` must be in [1, {len(self.population)}] '
                       f'(training clients), got {self.concurrency}')
    self._sim = AsyncSimulator()
    self._slow = self.delays.slow_clients(self.population)
    self.applied = []  # (client, start version, staleness, arrival time) of every arrival.

  def _start(self, state, client_id, version, round_num):
    # Its latest v_i, also one written earlier in this round.
    personal = self.read_personal([client_id], round_num + 1)
    dataset = self.make_dataset(client_id, training_loop.dataset_seed(
        self.seed, round_num, self._sim.starts))
    output = self.process.client_step(state, personal, [dataset])[0]
    delay = self.delays.sample(client_id, self._sim.starts, client_id in self._slow)
    self._sim.start(client_id, version, delay, output)

  def _idle_client(self, round_num, index, warm_up=False) -> str:
    busy = self._sim.in_flight()
    idle = [c for c in self.population if c not in busy]
    rng = np.random.default_rng([self.seed, round_num, index, int(warm_up), 3])
    return idle[rng.integers(len(idle))]

  def run_round(self, state, round_num, client_ids, datasets):
    del datasets  # Started one by one, each from the u of its start.
    m = len(client_ids)
    version = (round_num - 1) * m  # Updates applied before this round.
    if not self._sim:
      if round_num > 1:
        logging.warning('asynchronous run resumed at round %d: the clients that were in '
                        'flight are lost; %d new ones start from the resumed model.',
                        round_num, self.concurrency)
      for i in range(self.concurrency):
        self._start(state, self._idle_client(round_num, i, warm_up=True), version, round_num)
    metrics, staleness = [], []
    for j, next_client in enumerate(client_ids):
      arrival = self._sim.pop()
      stale = version - arrival.start_version
      factor = min(1.0, self.concurrency / stale) if self.delay_adaptive and stale else 1.0
      state, step_metrics = self.process.server_step(
          state, [scale_update(arrival.output, factor)])
      version += 1
      self.write_personal(round_num, [arrival.client_id], [arrival.output.personal_weights])
      self.applied.append((arrival.client_id, arrival.start_version, stale, arrival.finish_time))
      metrics.append(training_loop.flatten_metrics(step_metrics))
      staleness.append(stale)
      if next_client in self._sim.in_flight():
        next_client = self._idle_client(round_num, j)
      self._start(state, next_client, version, round_num)
    mean = {k: float(np.mean([x[k] for x in metrics])) for k in metrics[0]}
    mean.update({'async/staleness_mean': float(np.mean(staleness)),
                 'async/staleness_max': float(np.max(staleness)),
                 'async/simulated_time': self._sim.now})
    return state, mean
