"""Simulated Byzantine clients: what they send instead of their shared update.

A seeded fraction of the training population is Byzantine for the whole run
(so the report can score honest clients apart); each round, the sampled
Byzantine clients replace their `shared_update` before aggregation:
  flip   -scale * update (gradient flipping; Karimireddy et al., ICLR 2022)
  noise  scale * N(0, 1) per coordinate, seeded by (seed, round, client)
Their weights and personal state are left as computed. The rounds run as
`client_step`, this substitution, then `server_step` (`ByzantineRunner`).
"""

import dataclasses
import zlib
from typing import Optional, Sequence

import numpy as np

from partial_personalization.programs import round_runners

ATTACKS = ('flip', 'noise')


@dataclasses.dataclass(frozen=True)
class ByzantineAttack:
  """Attributes:
    fraction: Fraction of the training clients that are Byzantine, in [0, 1).
    attack: One of `ATTACKS`.
    scale: flip: factor of the negated update; noise: standard deviation.
    seed: Seeds the Byzantine set and the noise.
  """

  fraction: float
  attack: str = 'flip'
  scale: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if not 0 <= self.fraction < 1:
      raise ValueError(f'`byzantine_fraction` must be in [0, 1), got {self.fraction}')
    if self.attack not in ATTACKS:
      raise ValueError(f'`attack` must be one of {ATTACKS}, got {self.attack!r}')

  def byzantine_clients(self, client_ids: Sequence[str]) -> set[str]:
    """round(fraction * n) clients of the population, a function of the seed."""
    ids = sorted(client_ids)
    count = int(round(self.fraction * len(ids)))
    chosen = np.random.default_rng([self.seed, 7]).choice(len(ids), count, replace=False)
    return {ids[i] for i in chosen}

  def corrupt(self, update: list, round_num: int, client_id: str) -> list:
    """The update a Byzantine client sends instead of `update` (list of arrays)."""
    if self.attack == 'flip':
      return [-self.scale * np.asarray(u) for u in update]
    rng = np.random.default_rng([self.seed, round_num, zlib.crc32(client_id.encode())])
    return [(self.scale * rng.standard_normal(np.shape(u))).astype(np.asarray(u).dtype)
            for u in update]


@dataclasses.dataclass
class ByzantineRunner(round_runners.PersonalizedRunner):
  """A `PersonalizedRunner` whose sampled clients of `byzantine_ids` send the
  attack's update instead of theirs (`ByzantineAttack.corrupt`)."""

  attack: Optional[ByzantineAttack] = None
  byzantine_ids: frozenset = frozenset()

  def changes_outputs(self, client_ids) -> bool:
    return any(c in self.byzantine_ids for c in client_ids)

  def change_outputs(self, outputs, round_num, client_ids):
    outputs = list(outputs)
    for i, client_id in enumerate(client_ids):
      if client_id in self.byzantine_ids:
        outputs[i] = outputs[i]._replace(shared_update=self.attack.corrupt(
            outputs[i].shared_update, round_num, client_id))
    return outputs
