"""tasks/registry: one spec per task, consistent with the runner settings."""

import dataclasses
import inspect
import sys

import pytest

from runners import config_lib
from runners import grid_lib
from tasks import registry


@pytest.mark.parametrize('name', sorted(registry.TASKS))
def test_each_task_spec_fits_its_module_and_the_settings(name):
  spec = registry.TASKS[name]
  keywords = inspect.signature(spec.module.create_task).parameters
  fields = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
  assert set(spec.options) <= set(keywords)
  assert set(spec.options.values()) <= fields
  # The grid and the ffgg study read their partitions and defaults from here.
  assert grid_lib.PARTITIONS[name] is spec.grid_partitions
  assert registry.default_personalization(name) in {p for p, _ in spec.grid_partitions.values()}
  client_lr, personal_lr, examples = spec.grid_defaults
  assert client_lr > 0 and personal_lr > 0 and examples >= 1


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
