"""config_lib: a run's settings resolve the same whether given or defaulted."""

import os
import sys

import pytest

from runners import config_lib


def test_default_and_given_paths_resolve_alike(monkeypatch, tmp_path):
  """Under `bazel run` relative paths are the user's workspace's, defaults included
  (a default filled in after resolution was looked up in the runfiles tree)."""
  monkeypatch.setenv('BUILD_WORKSPACE_DIRECTORY', str(tmp_path))
  monkeypatch.chdir('/')
  defaulted = config_lib.TrainConfig(experiment_name='x')
  given = config_lib.TrainConfig(experiment_name='x', cache_dir='data_cache/stackoverflow',
                                 root_output_dir='output')
  assert defaulted.cache_dir == given.cache_dir == str(tmp_path / 'data_cache' / 'stackoverflow')
  assert defaulted.root_output_dir == given.root_output_dir == str(tmp_path / 'output')
  assert defaulted.run_dir == str(tmp_path / 'output' / 'x')
  relative = config_lib.TrainConfig(experiment_name='x', **{
      name: os.path.join('some', name) for name in config_lib.PATH_FIELDS})
  for name in config_lib.PATH_FIELDS:
    assert getattr(relative, name) == str(tmp_path / 'some' / name)


def test_absolute_and_unset_paths_are_kept(tmp_path):
  config = config_lib.TrainConfig(experiment_name='x', cache_dir=str(tmp_path))
  assert config.cache_dir == str(tmp_path) and config.init_from is None


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
