"""The tasks, one spec each: adding a task is its module plus one line here.

A task module provides `create_task(cache_dir, *, personalization, dropout,
batch_size, max_elements_per_client, **options) -> PersonalizationTask`.
"""

import dataclasses
import inspect
from types import ModuleType

from tasks.emnist import task as emnist_task
from tasks.gldv2 import task as gldv2_task
from tasks.stackoverflow import task as stackoverflow_task


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Attributes:
    module: The task module (its `create_task`).
    options: `create_task` keyword -> `TrainConfig` field, beyond the common ones.
    grid_partitions: Grid partition name -> (personalization, adapter size).
    grid_defaults: (client learning rate of u, of v, examples per client per
      round) that trained well on the real data (docs/results.md).
  """

  module: ModuleType
  options: dict
  grid_partitions: dict
  grid_defaults: tuple


_VISION_OPTIONS = dict(model='model', width_multiplier='width_multiplier',
                       heldout_fraction='heldout_fraction')
_VISION_PARTITIONS = {name: (name, 0) for name in ('stem', 'head', 'adapter', 'representation')}

TASKS = {
    'stackoverflow': TaskSpec(
        module=stackoverflow_task,
        options=dict(model_size='model_size', adapter_size='adapter_size',
                     vocab_size='vocab_size'),
        grid_partitions={
            'embeddings': ('embeddings', 0),
            'first_block': ('first_block', 0),
            'last_block': ('last_block', 0),
            'decoder': ('decoder', 0),
            'adapter16': ('adapter', 16),
            'adapter64': ('adapter', 64),
        },
        grid_defaults=(0.5, 0.1, 128)),
    'emnist': TaskSpec(
        module=emnist_task, options=_VISION_OPTIONS, grid_partitions=_VISION_PARTITIONS,
        grid_defaults=(0.03, 0.03, 512)),
    'gldv2': TaskSpec(
        module=gldv2_task,
        options=dict(_VISION_OPTIONS, variant='gldv2_variant', image_size='image_size',
                     crop_size='crop_size'),
        grid_partitions=_VISION_PARTITIONS, grid_defaults=(0.1, 0.1, 512)),
}


def default_personalization(task: str) -> str:
  """The task's default personal part (its `create_task` default)."""
  return inspect.signature(TASKS[task].module.create_task).parameters['personalization'].default
