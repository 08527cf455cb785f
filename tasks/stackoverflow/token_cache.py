"""StackOverflow client data as token ids: tokenized once, cached, batched from memory.

Why: a client's dataset built the usual way (TFF's `SqlClientData` reader, then
TFF's word-prediction preprocessing) carries the SQLite read, the text split and
a 10k-entry vocabulary table into every dataset graph. Building, serializing
and running that pipeline cost 0.3-0.4 CPU-s per client per round, more than
the local steps of a small model (see docs/benchmarks.md).

What: every sentence of every split is mapped once with TFF's own `to_ids`
(`word_prediction_preprocessing.build_to_ids_fn`: same vocabulary, one OOV
bucket, BOS/EOS, truncation), read through TFF's real loader, and padded with
0 to `sequence_length + 1` ids exactly as TFF's `padded_batch` pads. The arrays
live in `stackoverflow.tokens.npz` beside the database (~8 MB for the main
job's 96k sentences). A client's dataset is then `from_tensor_slices` of its
rows followed by the same seeded `shuffle`, `take` and `batch` as TFF's
preprocessing, so its batches are identical to the reader path's
(`tests/token_cache_test.py` checks this on real clients and seeds).

Invalidation: the file stores a key over the database's bytes, the vocabulary,
the sequence length, the OOV buckets and TFF's version; a mismatch rebuilds it
(atomically, so concurrent builders cannot leave a torn file).
"""

import dataclasses
import hashlib
import logging
import os
import tempfile
from typing import Callable, Mapping, Optional
import zipfile

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.state import integrity
from tasks.stackoverflow import convert_lib

CACHE_FILENAME = 'stackoverflow.tokens.npz'
_FORMAT = 1  # Bump when the cached content changes meaning.
_preprocessing = tff.simulation.baselines.stackoverflow.word_prediction_preprocessing


@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
  """Token ids of one split, clients in sorted order.

  Attributes:
    client_ids: Sorted client ids.
    offsets: int64 [num_clients + 1]; client k's rows are
      `tokens[offsets[k]:offsets[k + 1]]`, in the loader's example order.
    tokens: int32 [num_sentences, sequence_length + 1]: BOS, word ids, EOS
      (when the sentence is shorter than `sequence_length` words), then 0.
  """

  client_ids: tuple[str, ...]
  offsets: np.ndarray
  tokens: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, '_index', {c: i for i, c in enumerate(self.client_ids)})

  def client_tokens(self, client_id: str) -> np.ndarray:
    """The rows of `client_id`.

    Raises:
      KeyError: the client has no data in this split (names the client).
    """
    try:
      k = self._index[client_id]  # pytype: disable=attribute-error
    except KeyError:
      raise KeyError(f'client {client_id!r} has no data in this split') from None
    return self.tokens[self.offsets[k]:self.offsets[k + 1]]

  def num_examples(self, client_id: str) -> int:
    return len(self.client_tokens(client_id))


def cache_key(cache_dir: str, vocab: list[str], sequence_length: int) -> str:
  """What the cached ids depend on: the data, the vocabulary, the preprocessing."""
  parts = [
      f'format={_FORMAT}', f'tff={tff.__version__}', f'sequence_length={sequence_length}',
      'oov_buckets=1',
      'database=' + integrity.file_sha256(os.path.join(cache_dir, convert_lib.DATABASE_FILENAME)),
      'vocab=' + hashlib.sha256('\n'.join(vocab).encode()).hexdigest(),
  ]
  return ';'.join(parts)


def tokenize_split(client_data, vocab: list[str], sequence_length: int) -> TokenizedSplit:
  """Maps every sentence of a TFF `ClientData` to ids with TFF's `to_ids`.

  One tf.data pipeline over all clients (a per-client pipeline costs ~0.4 s
  each); examples keep the loader's order within each client.
  """
  ids = sorted(client_data.client_ids)
  to_ids = _preprocessing.build_to_ids_fn(vocab, sequence_length, num_out_of_vocab_buckets=1)
  dataset_fn = client_data.serializable_dataset_fn
  width = sequence_length + 1
  indexed = tf.data.Dataset.from_tensor_slices((tf.range(len(ids), dtype=tf.int64), ids))
  examples = indexed.flat_map(
      lambda k, cid: dataset_fn(cid).map(lambda example: (k, to_ids(example))))
  batches = examples.padded_batch(8192, padded_shapes=([], [width]))
  owners, rows = [], []
  for owner, row in batches.as_numpy_iterator():
    owners.append(owner)
    rows.append(row.astype(np.int32))
  owners = np.concatenate(owners) if owners else np.zeros([0], np.int64)
  tokens = np.concatenate(rows) if rows else np.zeros([0, width], np.int32)
  counts = np.bincount(owners, minlength=len(ids))
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  return TokenizedSplit(tuple(ids), offsets, tokens)


def _save(path: str, key: str, splits: Mapping[str, TokenizedSplit]) -> None:
  arrays = {'key': np.array(key)}
  for name, split in splits.items():
    arrays[f'{name}/client_ids'] = np.array(split.client_ids, dtype=object).astype(str)
    arrays[f'{name}/offsets'] = split.offsets
    arrays[f'{name}/tokens'] = split.tokens
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix='.tokens-', suffix='.npz', dir=folder)
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the data folder is not.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _load(path: str, key: str, names) -> dict[str, TokenizedSplit] | None:
  """The cached splits, or None if the file is missing, stale or unreadable."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as data:
      if str(data['key']) != key:
        logging.info('%s is stale (data or vocabulary changed); rebuilding it', path)
        return None
      return {n: TokenizedSplit(tuple(data[f'{n}/client_ids'].tolist()),
                                data[f'{n}/offsets'], data[f'{n}/tokens']) for n in names}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # Truncated, foreign.
    logging.warning('%s is unreadable (%s); rebuilding it', path, e)
    return None


def load_or_build(cache_dir: str, client_data: Mapping[str, object], vocab: list[str],
                  sequence_length: int) -> dict[str, TokenizedSplit]:
  """Token ids of every split in `client_data` ({split name: TFF ClientData}).

  Reads `<cache_dir>/stackoverflow.tokens.npz` when its key matches, else
  tokenizes through the loader and writes it (about 10 s for 100k sentences).
  """
  path = os.path.join(cache_dir, CACHE_FILENAME)
  key = cache_key(cache_dir, vocab, sequence_length)
  splits = _load(path, key, client_data)
  if splits is None:
    splits = {name: tokenize_split(data, vocab, sequence_length)
              for name, data in client_data.items()}
    try:
      _save(path, key, splits)
    except OSError as e:  # A read-only data folder: keep the ids in memory only.
      logging.warning('cannot write %s (%s); token ids are kept in memory only', path, e)
  return splits


def batched_dataset(tokens: np.ndarray, *, batch_size: int,
                    sample: Optional[Callable[[tf.data.Dataset], tf.data.Dataset]] = None
                    ) -> tf.data.Dataset:
  """(inputs, labels) int64 [batch, sequence_length] batches of a client's rows.

  The same operations, in the same order, as TFF's word-prediction
  preprocessing after its `to_ids`: the optional `sample` of the examples
  (training: `task.round_sample`, which the reader path applies before TFF's
  preprocessing), batch, then inputs = ids[:-1], labels = ids[1:]. Shuffles
  permute by position only, so they order these rows as the raw sentences.
  """
  rows = tokens.astype(np.int64)
  dataset = tf.data.Dataset.from_tensor_slices((rows[:, :-1], rows[:, 1:]))
  if sample is not None:
    dataset = sample(dataset)
  return dataset.batch(batch_size)
