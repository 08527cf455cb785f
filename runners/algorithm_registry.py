"""The algorithms of `--algorithm`, one `AlgorithmSpec` each: adding one is its
builder plus one entry here.

Everything the runners know of an algorithm comes from its spec: the process
it builds, the flags it reads (a flag of another algorithm is refused, as
another task's options are), its personal state and how the training loop,
the report and the grids treat it. No code outside this module tests an
algorithm's name.
"""

import dataclasses
from typing import Callable

import tensorflow_federated as tff

from partial_personalization import algorithms

# What an algorithm's clients keep between rounds.
NOT_PERSONALIZED = 'none'    # Nothing: one global model (FedAvg).
PERSONAL_PART = 'part'       # v_i, the partition's personal variables.
WHOLE_MODEL = 'whole_model'  # v_i, a whole model beside u (Ditto, pFedMe).
PERSONAL = (NOT_PERSONALIZED, PERSONAL_PART, WHOLE_MODEL)
STATELESS = ('never', 'optional', 'always')


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
  """Attributes:
    label: The algorithm's name in tables and plots ('FedAlt').
    build: `(task, parts, **settings) -> process`: `parts` is a dict of
      `client_optimizer`, `personal_optimizer`, `server_optimizer`,
      `model_aggregator` and `client_weighting`; `settings` are the
      algorithm's own hyperparameters.
    settings: `build` keyword -> `TrainConfig` field (flag) that sets it: the
      flags this algorithm reads. Another algorithm's flag is refused.
    personal: What clients keep between rounds, one of `PERSONAL`.
      `NOT_PERSONALIZED` and `WHOLE_MODEL` algorithms train whole models
      (`--personalization=none`).
    stateless: Whether v_i is reset to v_0 at every participation: 'never',
      'optional' (`--stateless`) or 'always' (Federated Reconstruction).
    tff_process: The process is TFF's `LearningProcess` (its own state, no
      v_i in the store, no simulated Byzantine clients or asynchrony).
    robust_aggregation: `--aggregator` is wired into the process.
  """

  label: str
  build: Callable
  settings: dict
  personal: str
  stateless: str = 'never'
  tff_process: bool = False
  robust_aggregation: bool = True

  def __post_init__(self):
    if self.personal not in PERSONAL or self.stateless not in STATELESS:
      raise ValueError(f'{self.label}: personal must be one of {PERSONAL} and stateless '
                       f'one of {STATELESS}')

  @property
  def whole_model(self) -> bool:
    """v_i is a whole model beside u (u is the whole model too)."""
    return self.personal == WHOLE_MODEL

  @property
  def trains_whole_models(self) -> bool:
    """Built on the `none` partition (`--personalization=none`)."""
    return self.personal != PERSONAL_PART


def from_builder(builder) -> Callable:
  """`build` of a library builder (`partial_personalization.algorithms`)."""

  def build(task, parts, **settings):
    return builder(task.reconstruction_model_fn, loss_fn=task.loss_fn,
                   metrics_fn=task.metrics_fn, evaluation_loss_fn=task.evaluation_loss_fn,
                   **parts, **settings)

  return build


def _build_fedavg(task, parts):
  return tff.learning.algorithms.build_weighted_fed_avg(
      task.variable_model_fn, client_optimizer_fn=parts['client_optimizer'],
      server_optimizer_fn=parts['server_optimizer'],
      model_aggregator=parts['model_aggregator'], client_weighting=parts['client_weighting'],
      loop_implementation=tff.learning.LoopImplementation.DATASET_ITERATOR)


def _build_fedrecon(task, parts, *, tau_u, tau_v):
  # Stateless FedAlt: reconstruction on the whole client dataset for tau_v
  # epochs, then tau_u epochs on u (docs/design.md).
  return tff.learning.algorithms.build_fed_recon(
      task.reconstruction_model_fn, loss_fn=task.loss_fn, metrics_fn=task.metrics_fn,
      client_optimizer_fn=parts['client_optimizer'],
      server_optimizer_fn=parts['server_optimizer'],
      client_weighting=parts['client_weighting'],
      reconstruction_optimizer_fn=parts['personal_optimizer'],
      dataset_split_fn=tff.learning.models.ReconstructionModel.build_dataset_split_fn(
          recon_epochs=tau_v, post_recon_epochs=tau_u, split_dataset=False))


_PASSES = dict(tau_u='tau_u', local_unit='local_unit')

ALGORITHMS = {
    'fedavg': AlgorithmSpec(
        label='FedAvg', build=_build_fedavg, settings={}, personal=NOT_PERSONALIZED,
        tff_process=True),
    'fedrecon': AlgorithmSpec(
        label='FedRecon', build=_build_fedrecon, settings=dict(tau_u='tau_u', tau_v='tau_v'),
        personal=PERSONAL_PART, stateless='always', tff_process=True,
        robust_aggregation=False),
    'fedalt': AlgorithmSpec(
        label='FedAlt', build=from_builder(algorithms.build_fedalt_process),
        settings=dict(_PASSES, tau_v='tau_v', personal_l2='personal_l2'),
        personal=PERSONAL_PART, stateless='optional'),
    'fedsim': AlgorithmSpec(
        label='FedSim', build=from_builder(algorithms.build_fedsim_process),
        settings=dict(_PASSES, personal_l2='personal_l2'), personal=PERSONAL_PART,
        stateless='optional'),
    'ffgg': AlgorithmSpec(
        label='FFGG', build=from_builder(algorithms.build_ffgg_process),
        settings=dict(tau_v='tau_v', local_steps='local_steps'), personal=PERSONAL_PART,
        stateless='optional'),
    'ditto': AlgorithmSpec(
        label='Ditto', build=from_builder(algorithms.build_ditto_process),
        settings=dict(_PASSES, tau_v='tau_v', prox_strength='prox_strength'),
        personal=WHOLE_MODEL),
    'pfedme': AlgorithmSpec(
        label='pFedMe', build=from_builder(algorithms.build_pfedme_process),
        settings=dict(_PASSES, prox_strength='prox_strength', inner_steps='inner_steps'),
        personal=WHOLE_MODEL),
}


def spec(name: str) -> AlgorithmSpec:
  """The spec of `--algorithm=name`; ValueError naming the choices otherwise."""
  if name not in ALGORITHMS:
    raise ValueError(f'--algorithm must be one of {tuple(ALGORITHMS)}, got {name!r}')
  return ALGORITHMS[name]


def partial_algorithms() -> tuple[str, ...]:
  """Our algorithms of a personal part (FedAlt, FedSim, FFGG): stateful or
  stateless (`--stateless`)."""
  return tuple(name for name, s in ALGORITHMS.items()
               if s.personal == PERSONAL_PART and not s.tff_process)


def personalized_processes() -> tuple[str, ...]:
  """The algorithms of a `PersonalizedProcess` (not TFF's own processes)."""
  return tuple(name for name, s in ALGORITHMS.items() if not s.tff_process)
