"""The token-id path gives the same batches as TFF's reader + preprocessing path,
and its cache follows the data and the vocabulary."""

import os
import shutil

import numpy as np
import pytest

from tasks.stackoverflow import convert_lib
from tasks.stackoverflow import task as so_task
from tasks.stackoverflow import token_cache


def _batches(dataset):
  return [tuple(np.asarray(t) for t in batch) for batch in dataset.as_numpy_iterator()]


def _assert_same(fast, slow, what):
  assert len(fast) == len(slow), what
  for (fx, fy), (sx, sy) in zip(fast, slow):
    assert fx.dtype == sx.dtype and fy.dtype == sy.dtype, what
    np.testing.assert_array_equal(fx, sx, err_msg=what)
    np.testing.assert_array_equal(fy, sy, err_msg=what)


@pytest.fixture(scope='module')
def task(two_sites_cache_dir):
  # Fewer examples than a client has, so `take` and the shuffle both matter.
  return so_task.create_task(two_sites_cache_dir, max_elements_per_client=24, batch_size=5,
                             shuffle_buffer_size=16, vocab_size=300)


def test_training_batches_are_those_of_the_reader_path(task):
  ids = sorted(task.train_data.client_ids)
  for client_id in ids[:3] + ids[-2:]:
    raw = task.train_data.create_tf_dataset_for_client(client_id)
    for seed in (0, 1, 123456789):
      fast = _batches(task.train_dataset(client_id, seed))
      slow = _batches(task.train_preprocess_fn(raw, seed))
      _assert_same(fast, slow, f'{client_id}, seed {seed}')
    # The seed matters, so the comparison above is not trivially true.
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(
        _batches(task.train_dataset(client_id, 0)), _batches(task.train_dataset(client_id, 1))))


def test_passes_over_one_dataset_match_the_reader_path(task):
  """FedAlt iterates a client's dataset once per pass; each pass reshuffles."""
  client_id = sorted(task.train_data.client_ids)[0]
  fast = task.train_dataset(client_id, 7)
  slow = task.train_preprocess_fn(task.train_data.create_tf_dataset_for_client(client_id), 7)
  _assert_same(_batches(fast.repeat(2)), _batches(slow.repeat(2)), 'repeat(2)')
  _assert_same(_batches(fast) + _batches(fast), _batches(slow) + _batches(slow), 'iter twice')


def test_every_pass_of_a_round_sees_the_same_examples_reshuffled(task):
  """Pillutla et al.'s protocol: FedAlt's v pass and u pass (and each epoch)
  train on one sample of the client's data, in a new order."""
  client_id = max(task.train_data.client_ids,
                  key=lambda c: len(list(task.train_data.create_tf_dataset_for_client(c))))
  dataset = task.train_dataset(client_id, 3)
  passes = [np.concatenate([x for x, _ in _batches(dataset)]) for _ in range(3)]
  assert len(passes[0]) == 24  # The client has more: the sample is a strict subset.
  rows = [sorted(map(tuple, p)) for p in passes]
  assert rows[0] == rows[1] == rows[2]
  assert not np.array_equal(passes[0], passes[1])  # ... reshuffled in each pass.
  other = np.concatenate([x for x, _ in _batches(task.train_dataset(client_id, 4))])
  assert sorted(map(tuple, other)) != rows[0]  # Another round samples other examples.


def test_evaluation_batches_are_those_of_the_reader_path(task):
  for split in ('train', 'heldout', 'test'):
    data = task.client_data(split)
    for client_id in sorted(data.client_ids)[:4]:
      fast = _batches(task.eval_dataset(split, client_id))
      slow = _batches(task.eval_preprocess_fn(data.create_tf_dataset_for_client(client_id)))
      _assert_same(fast, slow, f'{split} {client_id}')


def test_unknown_client_names_the_client(task):
  with pytest.raises(KeyError, match='no-such-client'):
    task.train_dataset('no-such-client', 0)


def _copy_data(source, target):
  os.makedirs(target)
  for name in (convert_lib.DATABASE_FILENAME, convert_lib.WORD_COUNT_FILENAME):
    shutil.copy(os.path.join(source, name), target)
  return target


def test_cache_is_rebuilt_when_the_vocabulary_or_data_change(two_sites_cache_dir, tmp_path):
  data_dir = _copy_data(two_sites_cache_dir, str(tmp_path / 'data'))
  path = os.path.join(data_dir, token_cache.CACHE_FILENAME)

  def build(vocab_size):
    task = so_task.create_task(data_dir, vocab_size=vocab_size)
    client_id = sorted(task.test_data.client_ids)[0]
    return task, _batches(task.eval_dataset('test', client_id))

  task, small = build(50)
  stamp = os.stat(path).st_mtime_ns
  build(50)
  assert os.stat(path).st_mtime_ns == stamp  # Reused, not rebuilt.
  task, large = build(300)
  assert os.stat(path).st_mtime_ns != stamp
  # Rarer words leave the OOV bucket with a larger vocabulary.
  assert not all(np.array_equal(a[0], b[0]) for a, b in zip(small, large))
  # Any change of the database bytes changes the key.
  vocab = convert_lib.load_vocab(data_dir, 300)
  key = token_cache.cache_key(data_dir, vocab, 20)
  with open(os.path.join(data_dir, convert_lib.DATABASE_FILENAME), 'ab') as f:
    f.write(b'\0')
  assert token_cache.cache_key(data_dir, vocab, 20) != key


def test_a_corrupt_cache_file_is_rebuilt(two_sites_cache_dir, tmp_path):
  data_dir = _copy_data(two_sites_cache_dir, str(tmp_path / 'data'))
  task = so_task.create_task(data_dir, vocab_size=100)
  client_id = sorted(task.test_data.client_ids)[0]
  expected = _batches(task.eval_dataset('test', client_id))
  path = os.path.join(data_dir, token_cache.CACHE_FILENAME)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  task = so_task.create_task(data_dir, vocab_size=100)
  _assert_same(_batches(task.eval_dataset('test', client_id)), expected, 'rebuilt')
  assert np.load(path)['key']  # A whole file again.
