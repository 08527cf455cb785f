"""The client-work contract: what every algorithm's client update returns.

A client update is a TFF TensorFlow computation `(u, v_i, dataset) ->
ClientOutput` for one client (u: `ModelWeights` of the shared variables, v_i:
of the personal ones, or of a whole model for the whole-model algorithms);
`composers.compose_personalized_process` maps it over the sampled clients and
aggregates the `shared_update`s. Pillutla et al., ICML 2022, Algorithm 1
("LocalUpdate"); the algorithms' updates live in `algorithms/`, the loops they
are made of in `local_training`.
"""

import collections
from typing import NamedTuple

import tensorflow as tf
import tensorflow_federated as tff

ModelWeights = tff.learning.models.ModelWeights


class ClientOutput(NamedTuple):
  """What every algorithm's client update returns, each round, for one client.

  Attributes:
    shared_update: u_initial - u_final (TFF's sign convention: the server
      optimizer applies it as a gradient), a list of float32 tensors shaped as
      u's trainable variables. FFGG sends its gradient of u here.
    update_weight: float32 scalar, examples seen in the pass on u (the weight
      of the update under `ClientWeighting.NUM_EXAMPLES`).
    personal_weights: the new v_i, a `ModelWeights` of v's type (of u's type
      for Ditto and pFedMe, whose v_i is a whole model).
    metrics: unfinalized Keras metrics of the pass on u: an OrderedDict
      name -> list of the metric's variable values (`[total, count]` for means).
  """
  shared_update: list
  update_weight: tf.Tensor
  personal_weights: ModelWeights
  metrics: collections.OrderedDict
