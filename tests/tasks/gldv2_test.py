"""GLDv2 through TFF's code path on a small fixture in TFF's gld23k cache layout."""

import os
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
# TFF's writer and reader of its GLDv2 TFRecords (not exported under tff.simulation).
from partial_personalization.execution.tff_compat import vision_datasets_utils

from runners import config_lib
from runners import train_lib
from tasks.gldv2 import data as data_lib
from tasks.gldv2 import task as gldv2_task

USERS = {'photographer_a': 14, 'photographer_b': 10, 'photographer_c': 12}
NUM_CLASSES = 3


def _image(label, index, rng):
  """A JPEG whose dominant colour is its class (learnable), with noise; sizes vary."""
  height, width = 40 + 4 * (index % 3), 48 - 2 * (index % 4)
  colour = np.zeros(3)
  colour[label] = 200
  pixels = np.clip(colour + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
  if index % 5 == 0:  # Some greyscale JPEGs, as in the real data.
    pixels = pixels.mean(axis=-1, keepdims=True).astype(np.uint8)
  return tf.io.encode_jpeg(pixels, quality=95).numpy()


def write_gld23k_fixture(cache_dir):
  """Writes `<cache_dir>/gld23k/train/<user>` and `test.tfRecord` as TFF does.

  Returns {user: [(jpeg bytes, label)]}.
  """
  rng = np.random.default_rng(0)
  root = os.path.join(cache_dir, 'gld23k')
  os.makedirs(os.path.join(root, 'train'))
  written = {}
  for user, count in USERS.items():
    examples = [(_image(i % NUM_CLASSES, i, rng), i % NUM_CLASSES) for i in range(count)]
    with tf.io.TFRecordWriter(os.path.join(root, 'train', user)) as writer:
      for jpeg, label in examples:
        writer.write(vision_datasets_utils.create_example(jpeg, label).SerializeToString())
    written[user] = examples
  with tf.io.TFRecordWriter(os.path.join(root, 'test.tfRecord')) as writer:
    writer.write(vision_datasets_utils.create_example(_image(0, 0, rng), 0).SerializeToString())
  return written


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
  cache_dir = str(tmp_path_factory.mktemp('gldv2'))
  return cache_dir, write_gld23k_fixture(cache_dir)


def test_tff_cache_bug_still_present(fixture):
  """TFF 0.87 cannot read its own GLDv2 cache (the reason for `data_lib`).

  When this fails, TFF reads the cache again: drop the workaround and call
  `tff.simulation.datasets.gldv2.load_data` directly.
  """
  cache_dir, _ = fixture
  with pytest.raises(TypeError, match='logger_tag'):
    vision_datasets_utils.load_data_from_cache(
        os.path.join(cache_dir, 'gld23k'), 'train', 'test.tfRecord', 'gldv2')


def test_workaround_reads_tff_cache(fixture):
  cache_dir, written = fixture
  train = data_lib.load_train_data(cache_dir, 'gld23k')
  assert sorted(train.client_ids) == sorted(USERS)
  for user, examples in written.items():
    elements = list(train.create_tf_dataset_for_client(user).as_numpy_iterator())
    assert [int(e['class'][0]) for e in elements] == [label for _, label in examples]
    for element, (jpeg, _) in zip(elements, examples):
      np.testing.assert_array_equal(element['image/decoded'], tf.io.decode_jpeg(jpeg).numpy())
  # The serializable path (used inside TFF computations) reads the same data.
  ds = train.serializable_dataset_fn(tf.constant('photographer_b'))
  assert len(list(ds)) == USERS['photographer_b']


def test_bad_options_are_named(fixture):
  cache_dir, _ = fixture
  with pytest.raises(ValueError, match='needs `model=resnet18`'):
    gldv2_task.create_task(cache_dir, model='mobilenet_v2', personalization='adapter')
  with pytest.raises(ValueError, match='crop_size'):
    gldv2_task.create_task(cache_dir, image_size=32, crop_size=40)


def test_missing_cache_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match='gld160k/train.*load_data'):
    data_lib.load_train_data(str(tmp_path), 'gld160k')
  with pytest.raises(ValueError, match='unknown GLDv2 variant'):
    data_lib.load_train_data(str(tmp_path), 'gld1m')


def test_task_split_and_preprocessing(fixture):
  cache_dir, _ = fixture
  task = gldv2_task.create_task(cache_dir, image_size=40, crop_size=32, width_multiplier=0.125,
                                heldout_fraction=0.2)
  user = 'photographer_a'
  sizes = [len(list(d.create_tf_dataset_for_client(user)))
           for d in (task.train_data, task.heldout_data, task.test_data)]
  assert sum(sizes) == USERS[user] and sizes[2] > 0 and sizes[0] > 0
  raw = task.train_data.create_tf_dataset_for_client(user)
  batches = [list(task.train_preprocess_fn(raw, seed).as_numpy_iterator()) for seed in (1, 1, 2)]
  images, labels = batches[0][0]
  assert images.shape[1:] == (32, 32, 3) and images.dtype == np.float32
  assert -1.0 <= images.min() and images.max() <= 1.0 and labels.dtype == np.int32
  np.testing.assert_array_equal(batches[0][0][0], batches[1][0][0])  # Seeded augmentation.
  assert not np.array_equal(batches[0][0][0], batches[2][0][0])
  # Evaluation is a deterministic centre crop.
  test = task.test_data.create_tf_dataset_for_client(user)
  first, second = (next(task.eval_preprocess_fn(test).as_numpy_iterator()) for _ in range(2))
  np.testing.assert_array_equal(first[0], second[0])
  assert first[0].shape[1:] == (32, 32, 3)


@pytest.mark.slow
def test_training_rounds_on_fixture(fixture, tmp_path):
  cache_dir, _ = fixture
  common = dict(root_output_dir=str(tmp_path), task='gldv2', cache_dir=cache_dir,
                image_size=40, crop_size=32, width_multiplier=0.125, heldout_fraction=0.2,
                clients_per_round=3, client_batch_size=4, client_learning_rate=0.05,
                progress=False)
  fedavg = train_lib.train(config_lib.TrainConfig(
      experiment_name='fedavg', algorithm='fedavg', total_rounds=2, **common))
  metrics = pd.read_csv(os.path.join(fedavg['run_dir'], 'metrics.csv'))
  assert len(metrics) == 2 and np.isfinite(metrics['train/client_work/loss']).all()
  result = train_lib.train(config_lib.TrainConfig(
      experiment_name='fedsim_head', algorithm='fedsim', personalization='head', total_rounds=2,
      init_from=fedavg['run_dir'], **common))
  # The head of gld23k: 512/8 features x 203 classes, plus biases.
  assert result['personal_parameters'] == 64 * 203 + 203
  assert result['summary']['clients'] == len(USERS)
  per_client = pd.read_csv(os.path.join(result['run_dir'], 'report', 'per_client.csv'))
  assert per_client.participations.eq(2).all()  # All 3 clients trained in both rounds.


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
