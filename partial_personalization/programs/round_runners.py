"""Round runners: adapters of a TFF process to the training loop.

`FedAvgRunner` runs TFF's processes (FedAvg, FedRecon) and names their
metrics as ours; `PersonalizedRunner` runs a `PersonalizedProcess` round with
each sampled client's v_i read from and written back to the client-state
store (`state.client_state`). Subclasses: `byzantine.ByzantineRunner`,
`asynchronous.AsyncRunner`.
"""

import dataclasses
from typing import Any, Optional, Sequence

import tensorflow_federated as tff

from partial_personalization.programs import training_loop
from partial_personalization.state import client_state
from partial_personalization.state import integrity

ModelWeights = tff.learning.models.ModelWeights


class RoundRunner:
  """Adapts a TFF process to the loop: initial state and one round."""

  process: Any

  def initialize(self) -> Any:
    raise NotImplementedError

  def run_round(self, state, round_num: int, client_ids: Sequence[str],
                datasets: list) -> tuple[Any, dict]:
    raise NotImplementedError

  def global_weights(self, state) -> ModelWeights:
    raise NotImplementedError


@dataclasses.dataclass
class FedAvgRunner(RoundRunner):
  """TFF's `build_weighted_fed_avg` process; no personal state."""

  process: tff.learning.templates.LearningProcess
  initial_weights: Optional[ModelWeights] = None

  def initialize(self):
    state = self.process.initialize()
    if self.initial_weights is not None:
      state = self.process.set_model_weights(state, self.initial_weights)
    return state

  def run_round(self, state, round_num, client_ids, datasets):
    output = self.process.next(state, datasets)
    return output.state, one_naming(output.metrics)

  def global_weights(self, state):
    return self.process.get_model_weights(state)


def one_naming(metrics):
  """TFF's FedAvg and FedRecon report the client metrics one level deeper
  (`client_work/train/loss`) than our processes (`client_work/loss`): lifted,
  so curves of every algorithm share names in metrics.csv and TensorBoard."""
  client_work = metrics.get('client_work') if hasattr(metrics, 'get') else None
  if hasattr(client_work, 'keys') and set(client_work.keys()) == {'train'}:
    metrics = dict(metrics, client_work=client_work['train'])
  return metrics


@dataclasses.dataclass
class PersonalizedRunner(RoundRunner):
  """FedAlt/FedSim/Ditto/pFedMe: reads v_i from the store, writes the new v_i back.

  `stateless=True` is the Federated Reconstruction setting: every participation
  starts from v_0 (`store.initial`) and the trained v_i is dropped after the
  round, so nothing personal persists between rounds.

  `split_rounds` runs each round as `client_step` then `server_step` (the
  remote executor, so client work is not run twice: `runtime.splits_rounds()`).
  """

  process: Any  # templates.composers.PersonalizedProcess
  store: client_state.ClientStateStore
  initial_shared: Optional[ModelWeights] = None
  stateless: bool = False
  split_rounds: bool = False

  def initialize(self):
    state = self.process.initialize()
    if self.initial_shared is not None:
      state = self.process.set_model_weights(state, self.initial_shared)
    return state

  def read_personal(self, client_ids, before_round: int) -> list:
    """v_i of each client: the latest stored before `before_round`, or v_0
    when stateless."""
    if self.stateless:
      return [self.store.initial] * len(client_ids)
    return self.store.read(client_ids, before_round=before_round)

  def run_round(self, state, round_num, client_ids, datasets):
    personal = self.read_personal(client_ids, round_num)
    # Split rounds: the remote executor (no client work twice) and subclasses
    # that change client outputs before aggregation (`byzantine`).
    if self.split_rounds or self.changes_outputs(client_ids):
      outputs = self.process.client_step(state, personal, datasets)
      outputs = self.change_outputs(outputs, round_num, client_ids)
      state, metrics = self.process.server_step(state, outputs)
      new_personal = [output.personal_weights for output in outputs]
    else:
      state, new_personal, metrics = self.process.next(state, personal, datasets)
    self.write_personal(round_num, client_ids, new_personal)
    return state, metrics

  def changes_outputs(self, client_ids) -> bool:
    """Whether `change_outputs` changes this round's outputs (no: one `next`)."""
    del client_ids
    return False

  def change_outputs(self, outputs: list, round_num: int, client_ids) -> list:
    """The client outputs the server aggregates (as computed, here)."""
    del round_num, client_ids
    return outputs

  def write_personal(self, round_num, client_ids, new_personal) -> None:
    """Stores the round's new v_i (not when stateless), refusing non-finite ones."""
    bad = [cid for cid, weights in zip(client_ids, new_personal) if not integrity.all_finite(weights)]
    if bad:
      raise training_loop.NonFiniteError(
          f'round {round_num}: clients {bad} trained non-finite personal weights (NaN or '
          'inf); the round was not committed. Lower the learning rates or clip the steps '
          '(`clip_norm`), then resume.')
    if not self.stateless:
      with training_loop.writing(self.store.path, self.store):
        self.store.write(round_num, client_ids, new_personal)

  def global_weights(self, state):
    return self.process.get_model_weights(state)
