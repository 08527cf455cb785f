"""Per-client random splits of a `ClientData`, seeded by client id.

The paper's GLDv2 protocol (Pillutla et al., ICML 2022, App. C) splits each
client's data 50/50 into train and test; both vision tasks also carve a heldout
part out of train for periodic evaluation and heldout gating. Each example
draws u ~ U[0, 1) from a stateless RNG keyed by (fingerprint of the client id,
seed, position in the client's dataset) and falls in the part whose interval
holds u. So the split is the same in every process and every round, needs no
pass over the data to count it (images are decoded lazily), and the parts of a
client are disjoint and cover its data; sizes are binomial around the
fractions, not exact.
"""

from typing import Sequence

import tensorflow as tf
import tensorflow_federated as tff

ClientData = tff.simulation.datasets.ClientData


def _drop_index(index, element):
  del index
  return element


def split_client_data(
    data: ClientData, fractions: Sequence[float], *, seed: int = 0
) -> list[ClientData]:
  """Splits every client's examples into parts with the given expected fractions.

  Args:
    data: Any `ClientData` with a `serializable_dataset_fn` (TFF's SQL,
      file-per-user and in-memory client data all have one).
    fractions: Nonnegative, summing to 1 (within 1e-6); e.g. (0.5, 0.5).
    seed: Changes the split for all clients.

  Returns:
    One `ClientData` per fraction, with the same client ids as `data`.

  Raises:
    ValueError: fractions negative or not summing to 1.
  """
  if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
    raise ValueError(f'split fractions must be >= 0 and sum to 1, got {list(fractions)}')
  bounds, total = [], 0.0
  for f in fractions:
    bounds.append((total, total + f))
    total += f
  bounds[-1] = (bounds[-1][0], 2.0)  # u < 1 always lands somewhere.
  dataset_fn = data.serializable_dataset_fn

  def part(low, high):
    def part_dataset_fn(client_id):
      client_id = tf.convert_to_tensor(client_id, tf.string)  # Some sources need a tensor.
      key = tf.strings.to_hash_bucket_fast(client_id, 2**31 - 1)

      def keep(index, element):
        del element
        u = tf.random.stateless_uniform([], seed=tf.stack([key + seed, index]))
        return tf.logical_and(u >= low, u < high)

      return dataset_fn(client_id).enumerate().filter(keep).map(_drop_index)

    return ClientData.from_clients_and_tf_fn(data.client_ids, part_dataset_fn)

  return [part(low, high) for low, high in bounds]
