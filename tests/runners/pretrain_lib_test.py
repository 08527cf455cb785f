"""The stored global model: its manifest holds, and the main job refuses a
model pretrained on other data."""

import os
import shutil
import sys

import pytest

import conftest
from partial_personalization.state import integrity
from runners import pretrain_lib
from tasks.stackoverflow import convert_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
STORED = os.path.join(REPO, pretrain_lib.STORED_MODEL_DIR)


@pytest.fixture(scope='module')
def manifest():
  return pretrain_lib.read_manifest(STORED)


@pytest.mark.slow
def test_the_stored_model_was_made_from_the_shipped_dumps(manifest, tmp_path):
  """Converting the shared dumps as the manifest says gives byte for byte the
  data the model was pretrained on, so the main job can use it on a fresh clone."""
  record = manifest['data']['conversion']
  root = os.path.join(conftest.shared_data_dir(), 'stackexchange')
  assert record['sites'] == {
      site: integrity.file_sha256(os.path.join(root, site, 'Posts.xml'))
      for site in record['sites']}
  out = str(tmp_path / 'data')
  convert_lib.ensure_converted([root], out, min_examples=record['min_examples'],
                               log=lambda *_: None)
  assert integrity.files_sha256(pretrain_lib.data_files(out)) == manifest['data']['sha256']
  assert pretrain_lib.stored_model(STORED, out) == os.path.join(STORED, 'model.npz')


def test_the_manifest_describes_the_model_and_its_curve(manifest):
  assert integrity.file_sha256(os.path.join(STORED, 'model.npz')) == manifest['model_sha256']
  curve = manifest['heldout']
  assert [p['round'] for p in curve] == sorted(p['round'] for p in curve)
  assert curve[-1]['round'] == manifest['rounds'] == manifest['recipe']['rounds']
  assert curve[-1]['accuracy'] > curve[0]['accuracy']
  assert manifest['command'].startswith('bazel run //runners:pretrain')


def test_a_model_of_other_data_is_refused_naming_the_rebuild(two_sites_cache_dir):
  with pytest.raises(pretrain_lib.StoredModelError,
                     match='pretrained on other data.*bazel run //runners:pretrain'):
    pretrain_lib.stored_model(STORED, two_sites_cache_dir)


def test_a_damaged_stored_model_is_refused(tmp_path, manifest):
  stored = tmp_path / 'stored'
  shutil.copytree(STORED, stored)
  with open(stored / 'model.npz', 'r+b') as f:
    f.seek(100)
    f.write(b'\0\0\0\0')
  with pytest.raises(pretrain_lib.StoredModelError, match='sha256 differs'):
    pretrain_lib.stored_model(str(stored), '/nonexistent')
  os.remove(stored / 'manifest.json')
  with pytest.raises(pretrain_lib.StoredModelError, match='needs its manifest'):
    pretrain_lib.stored_model(str(stored), '/nonexistent')


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
