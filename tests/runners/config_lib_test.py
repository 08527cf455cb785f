"""config_lib: a run's settings resolve the same whether given or defaulted."""

import dataclasses
import json
import os
import sys

import pytest

from runners import algorithm_registry
from runners import config_lib
from tasks import registry


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


@pytest.mark.parametrize('settings,flag', [
    (dict(algorithm='fedsim', tau_v=5), 'tau_v'),
    (dict(algorithm='fedavg', personalization='none', tau_u=2), 'tau_u'),
    (dict(algorithm='fedalt', prox_strength=0.5), 'prox_strength'),
    (dict(algorithm='fedalt', local_steps=3), 'local_steps'),
    (dict(algorithm='ditto', personalization='none', stateless=True), 'stateless'),
    (dict(algorithm='fedalt', finetune_personalization='full'), 'finetune_personalization'),
])
def test_a_flag_the_algorithm_does_not_read_is_refused_in_one_line(settings, flag):
  with pytest.raises(ValueError) as error:
    config_lib.TrainConfig(experiment_name='x', **settings)
  message = str(error.value)
  assert message.startswith(f'--{flag} does not apply to --algorithm={settings["algorithm"]}')
  assert '\n' not in message


def test_what_the_algorithm_reads_is_accepted():
  # FedSim reconstructs stateless clients for --tau_v epochs; FFGG reads --tau_v.
  config_lib.TrainConfig(experiment_name='x', algorithm='fedsim', stateless=True, tau_v=5)
  config_lib.TrainConfig(experiment_name='x', algorithm='ffgg', tau_v=5, local_steps=2)
  config_lib.TrainConfig(experiment_name='x', algorithm='fedavg', personalization='none',
                         finetune_epochs=1, local_unit='steps')


@pytest.mark.parametrize('flag,value,switch', [
    ('attack', 'noise', 'byzantine_fraction'), ('async_delay_mean', 2.0, 'asynchronous')])
def test_a_feature_setting_without_its_switch_is_refused(flag, value, switch):
  with pytest.raises(ValueError, match=f'--{flag} applies only with --{switch}'):
    config_lib.TrainConfig(experiment_name='x', **{flag: value})


def test_flags_json_holds_only_what_the_run_reads(tmp_path):
  config = config_lib.TrainConfig(experiment_name='x', root_output_dir=str(tmp_path),
                                  algorithm='fedalt', tau_v=2)
  sections = config.sections()
  assert set(sections) == {'common', 'task', 'algorithm', 'evaluation', 'execution'}
  assert set(sections['task']) == {'model_size', 'adapter_size', 'vocab_size'}
  assert set(sections['algorithm']) == {'tau_u', 'tau_v', 'local_unit', 'personal_l2',
                                        'stateless'}
  flat = {k: v for section in sections.values() for k, v in section.items()}
  for absent in ('crop_size', 'gldv2_variant', 'image_size', 'async_delay', 'attack',
                 'byzantine_fraction', 'asynchronous', 'inner_steps', 'prox_strength'):
    assert absent not in flat
  byzantine = config_lib.TrainConfig(experiment_name='x', byzantine_fraction=0.2, attack='noise')
  assert byzantine.sections()['simulation'] == {
      'byzantine_fraction': 0.2, 'attack': 'noise', 'attack_scale': 1.0}
  os.makedirs(config.run_dir)
  config_lib.write_flags(config)
  assert config_lib.read_flags(os.path.join(config.run_dir, 'flags.json')) == flat
  config_lib.check_flags(config)
  with pytest.raises(ValueError, match='other settings'):
    config_lib.check_flags(config_lib.TrainConfig(
        experiment_name='x', root_output_dir=str(tmp_path), algorithm='fedalt', tau_v=3))


def test_an_old_flat_flags_json_is_read_and_matches(tmp_path):
  """Runs started before the sections wrote every field flat, other algorithms'
  settings included (e.g. FedSim with --tau_v, then ignored)."""
  config = config_lib.TrainConfig(experiment_name='x', root_output_dir=str(tmp_path),
                                  algorithm='fedsim')
  old = dict(dataclasses.asdict(config), tau_v=5, prox_strength=0.3)
  os.makedirs(config.run_dir)
  with open(os.path.join(config.run_dir, 'flags.json'), 'w') as f:
    json.dump(old, f)
  assert config_lib.read_flags(os.path.join(config.run_dir, 'flags.json')) == old
  config_lib.check_flags(config)  # Resumes.
  with pytest.raises(ValueError, match='other settings'):
    config_lib.check_flags(dataclasses.replace(config, tau_u=2))


def test_each_field_is_declared_once_with_its_properties():
  for field in dataclasses.fields(config_lib.TrainConfig):
    meta = field.metadata
    assert meta['help'] and meta['section'] in config_lib.SECTIONS, field.name
    assert meta['traced'] in config_lib.TRACED, field.name
  assert set(config_lib.PATH_FIELDS) == {'root_output_dir', 'cache_dir', 'init_from',
                                         'init_checkpoint', 'baseline_model'}
  # Every algorithm setting is read by some algorithm, every task option by some task.
  read = {field for spec in algorithm_registry.ALGORITHMS.values()
          for field in spec.settings.values()}
  assert set(config_lib.fields_where(section='algorithm')) - read <= {
      'stateless', 'finetune_personalization', 'local_unit', 'personal_l2'}
  options = {f for spec in registry.TASKS.values() for f in spec.options.values()}
  assert set(config_lib.fields_where(section='task')) == options


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
