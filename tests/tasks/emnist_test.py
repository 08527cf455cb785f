"""EMNIST on real FEMNIST writers: converter round trip through TFF's loader, models, training."""

import dataclasses
import glob
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.models import partition as partition_lib
from runners import config_lib
from runners import paths
from runners import train_lib
from runners import weights_lib
from tasks.emnist import convert_lib
from tasks.emnist import model as model_lib
from tasks.emnist import task as emnist_task
from tasks.gldv2 import task as gldv2_task
from tasks.vision import resnet
from tasks.vision import splits
import conftest

# One real LEAF shard: its train file and the test file of the same writers.
SHARD = 'all_data_0_niid_05_keep_0'


def _real_leaf_shard(out_dir):
  """Copies one real train/test JSON pair into a LEAF folder of its own."""
  root = os.path.join(conftest.shared_data_dir(), 'femnist')
  if not os.path.isdir(root):
    pytest.fail(f'real FEMNIST not found at {root}; set SHARED_DATA_DIR')
  for split in ('train', 'test'):
    (src,) = glob.glob(os.path.join(root, split, f'{SHARD}_{split}_*.json'))
    os.makedirs(os.path.join(out_dir, split))
    with open(src) as f, open(os.path.join(out_dir, split, os.path.basename(src)), 'w') as g:
      g.write(f.read())
  return out_dir


@pytest.fixture(scope='module')
def leaf_dir(tmp_path_factory):
  return _real_leaf_shard(str(tmp_path_factory.mktemp('leaf')))


@pytest.fixture(scope='module')
def cache_dir(leaf_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('emnist'))
  stats = convert_lib.convert(leaf_dir, out)
  assert stats.writers > 0
  return out


def _leaf(leaf_dir, split):
  (path,) = glob.glob(os.path.join(leaf_dir, split, '*.json'))
  with open(path) as f:
    return json.load(f)


def test_round_trip_through_tff_loader(leaf_dir, cache_dir):
  train, test = tff.simulation.datasets.emnist.load_data(only_digits=False, cache_dir=cache_dir)
  leaf = {split: _leaf(leaf_dir, split) for split in ('train', 'test')}
  both = set(leaf['train']['users']) & set(leaf['test']['users'])
  assert set(train.client_ids) == both and set(test.client_ids) == both
  for client_data, split in ((train, 'train'), (test, 'test')):
    for writer in sorted(both)[:4]:
      elements = list(client_data.create_tf_dataset_for_client(writer).as_numpy_iterator())
      expected = leaf[split]['user_data'][writer]
      # Same images (float32 bit for bit), labels and order, for this writer only.
      pixels = np.stack([e['pixels'].reshape(-1) for e in elements])
      np.testing.assert_array_equal(pixels, np.asarray(expected['x'], np.float32))
      assert [int(e['label']) for e in elements] == expected['y']


def test_digits_only_split(leaf_dir, cache_dir):
  train, _ = tff.simulation.datasets.emnist.load_data(only_digits=True, cache_dir=cache_dir)
  leaf = _leaf(leaf_dir, 'train')
  writer = train.client_ids[0]
  labels = [int(e['label']) for e in train.create_tf_dataset_for_client(writer)]
  assert labels == [y for y in leaf['user_data'][writer]['y'] if y < 10]


def test_malformed_and_missing_inputs(tmp_path, cache_dir):
  bad = tmp_path / 'bad'
  (bad / 'train').mkdir(parents=True)
  (bad / 'test').mkdir()
  (bad / 'train' / 'a.json').write_text(json.dumps(
      {'users': ['w1'], 'num_samples': [1], 'user_data': {'w1': {'x': [[0.5] * 10], 'y': [3]}}}))
  with pytest.raises(convert_lib.MalformedFemnistError, match=r'a\.json.*w1.*784'):
    convert_lib.convert(str(bad), str(tmp_path / 'out'))
  (bad / 'train' / 'a.json').write_text('{"users": ')
  with pytest.raises(convert_lib.MalformedFemnistError, match=r'a\.json: not a LEAF'):
    convert_lib.convert(str(bad), str(tmp_path / 'out'))
  with pytest.raises(FileNotFoundError, match='train/\\*.json'):
    convert_lib.convert(str(tmp_path / 'nowhere'), str(tmp_path / 'out'))
  with pytest.raises(FileExistsError):
    convert_lib.convert(str(bad), cache_dir)
  with pytest.raises(FileNotFoundError, match='convert_femnist'):
    emnist_task.create_task(str(tmp_path / 'empty'))


def _counts(model, registry, name):
  return partition_lib.VariablePartition.from_model(model, registry.get(name)).num_parameters()


@pytest.mark.parametrize('width', [1.0, 0.25])
def test_cnn_partition_counts(width):
  for adapters in (False, True):
    config = model_lib.CnnConfig(adapters=adapters, width_multiplier=width)
    model, expected = model_lib.create_cnn(config), model_lib.count_cnn_parameters(config)
    names = ['adapter'] if adapters else ['none', 'stem', 'head', 'representation', 'full']
    for name in names:
      shared, personal = _counts(model, model_lib.CNN_PARTITIONS, name)
      assert personal == expected[name], name
      assert shared + personal == expected['full'], name
  assert model_lib.count_cnn_parameters(model_lib.CnnConfig())['full'] == 1_206_686


@pytest.mark.parametrize('stem,shape', [('small', (28, 28, 1)), ('imagenet', (64, 64, 3))])
def test_resnet18_partition_counts(stem, shape):
  for adapters in (False, True):
    config = resnet.ResNetConfig(input_shape=shape, num_classes=62, stem=stem, adapters=adapters)
    model, expected = resnet.create_resnet18(config), resnet.count_parameters(config)
    names = ['adapter'] if adapters else ['none', 'stem', 'head', 'representation', 'full']
    for name in names:
      assert _counts(model, resnet.PARTITIONS, name)[1] == expected[name], (stem, name)
  # ResNet-18: 11.2M parameters with a 62-class head, 1.41M in adapters.
  assert resnet.count_parameters(config)['full'] - expected['adapter'] > 11_000_000
  assert expected['adapter'] == 1_409_920


def test_mobilenet_partitions():
  model = gldv2_task.create_model('mobilenet_v2', num_classes=203, crop_size=64, adapters=False,
                                  width_multiplier=1.0, dropout=0.0)
  registry = gldv2_task.MOBILENET_PARTITIONS
  total = model.count_params()
  assert _counts(model, registry, 'full') == (0, total)
  assert _counts(model, registry, 'head')[1] == 1280 * 203 + 203
  assert _counts(model, registry, 'stem')[1] == 3 * 3 * 3 * 32 + 2 * 32
  with pytest.raises(ValueError, match='no adapters'):
    gldv2_task.create_model('mobilenet_v2', num_classes=203, crop_size=64, adapters=True,
                            width_multiplier=1.0, dropout=0.0)


@pytest.mark.parametrize('build', [
    lambda adapters: model_lib.create_cnn(model_lib.CnnConfig(adapters=adapters,
                                                              width_multiplier=0.25)),
    lambda adapters: resnet.create_resnet18(resnet.ResNetConfig(
        (28, 28, 1), 62, stem='small', adapters=adapters, width_multiplier=0.125)),
])
def test_adapters_start_as_identity(build):
  """A model with fresh adapters computes what the same weights without them do."""
  tf.keras.utils.set_random_seed(0)
  plain, with_adapters = build(False), build(True)
  for v in with_adapters.variables:
    match = [p for p in plain.variables if p.name == v.name]
    if match:
      v.assign(match[0])
  images = tf.random.uniform([4, 28, 28, 1], seed=1)
  np.testing.assert_allclose(with_adapters(images), plain(images), atol=1e-5)


def test_split_client_data_is_disjoint_covering_and_seeded(cache_dir):
  train, _ = tff.simulation.datasets.emnist.load_data(only_digits=False, cache_dir=cache_dir)
  parts = splits.split_client_data(train, (0.5, 0.2, 0.3), seed=3)
  fractions = []
  for writer in train.client_ids[:3]:
    def labels_and_pixels(data):
      return [(int(e['label']), float(e['pixels'].numpy().sum()))
              for e in data.create_tf_dataset_for_client(writer)]
    whole = labels_and_pixels(train)
    pieces = [labels_and_pixels(p) for p in parts]
    assert sorted(sum(pieces, [])) == sorted(whole)  # Disjoint and covering.
    assert labels_and_pixels(parts[0]) == pieces[0]  # Same split every time.
    fractions.append([len(p) / len(whole) for p in pieces])
  np.testing.assert_allclose(np.mean(fractions, axis=0), (0.5, 0.2, 0.3), atol=0.1)
  other = splits.split_client_data(train, (0.5, 0.2, 0.3), seed=4)[0]
  writer = train.client_ids[0]
  assert (len(list(other.create_tf_dataset_for_client(writer)))
          != len(list(parts[0].create_tf_dataset_for_client(writer)))
          or [int(e['label']) for e in other.create_tf_dataset_for_client(writer)]
          != [int(e['label']) for e in parts[0].create_tf_dataset_for_client(writer)])
  with pytest.raises(ValueError, match='sum to 1'):
    splits.split_client_data(train, (0.5, 0.6))


@pytest.mark.slow
def test_train_fedavg_then_fedalt_adapter_on_real_writers(cache_dir, tmp_path):
  common = dict(root_output_dir=str(tmp_path), task='emnist', cache_dir=cache_dir,
                width_multiplier=0.25, client_learning_rate=0.1, clients_per_round=4,
                progress=False, seed=0)
  fedavg = train_lib.train(config_lib.TrainConfig(
      experiment_name='fedavg', algorithm='fedavg', total_rounds=3, **common))
  metrics = pd.read_csv(os.path.join(fedavg['run_dir'], 'metrics.csv'))
  assert len(metrics) == 3
  result = train_lib.train(config_lib.TrainConfig(
      experiment_name='fedalt', algorithm='fedalt', personalization='adapter', total_rounds=2,
      init_from=fedavg['run_dir'], baseline_model=fedavg['run_dir'], report_clients=6, **common))
  config = model_lib.CnnConfig(adapters=True, width_multiplier=0.25)
  assert result['personal_parameters'] == model_lib.count_cnn_parameters(config)['adapter']
  per_client = pd.read_csv(os.path.join(result['run_dir'], 'report', 'per_client.csv'),
                           index_col=0)
  assert len(per_client) == 6 and per_client.tokens.gt(0).all()
  # u moved and trained adapters moved: personalized models are new models.
  assert per_client.participations.gt(0).any()
  assert (per_client.personalized != per_client.baseline).any()
  summary = result['summary']
  assert 0 <= summary['personalized_mean'] <= 1 and summary['clients'] == 6


@pytest.mark.parametrize('suffix', ['.npz', '.h5'])
def test_init_checkpoint_loads_matching_backbone(cache_dir, tmp_path, suffix):
  """A 10-class checkpoint initializes a 62-class model: all but the head."""
  tf.keras.utils.set_random_seed(5)
  pretrained = model_lib.create_cnn(model_lib.CnnConfig(num_classes=10, width_multiplier=0.25))
  path = str(tmp_path / f'backbone{suffix}')
  if suffix == '.npz':
    partition_lib.save_named_weights(path, partition_lib.named_weights(pretrained))
  else:
    pretrained.save_weights(path)
  config = config_lib.TrainConfig(experiment_name='x', task='emnist', cache_dir=cache_dir,
                                 width_multiplier=0.25, init_checkpoint=path)
  task = config_lib.create_task(config)
  fresh = task.initial_weights(config.seed)
  named = weights_lib.initial_named_weights(task, config)
  for v in pretrained.variables:
    if v.name.startswith('head/'):
      assert named[v.name].shape != v.shape
      np.testing.assert_array_equal(named[v.name], fresh[v.name])
    else:
      np.testing.assert_array_equal(named[v.name], v.numpy())
  unrelated = str(tmp_path / 'other.npz')
  partition_lib.save_named_weights(unrelated, {'x:0': np.zeros(3)})
  with pytest.raises(ValueError, match='shares no variable'):
    weights_lib.initial_named_weights(task, dataclasses.replace(config, init_checkpoint=unrelated))


def test_task_flags_are_checked():
  with pytest.raises(ValueError, match='--model_size does not apply to --task=emnist'):
    config_lib.TrainConfig(experiment_name='x', task='emnist', model_size='mini')
  with pytest.raises(ValueError, match="unknown personalization 'last_block'"):
    emnist_task.create_task('/nonexistent', personalization='last_block')
  config = config_lib.TrainConfig(experiment_name='x', task='emnist')
  assert (config.personalization, config.model, config.cache_dir) == (
      'head', 'cnn', paths.resolve_path(os.path.join('data_cache', 'emnist')))


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
