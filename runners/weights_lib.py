"""Where a run's first weights come from: fresh, `--init_checkpoint`, `--init_from`.

Weights are named (`partition.save_named_weights`): a dict from variable name
to array, split into (u, v) by the task's partition.
"""

import os

from absl import logging

from partial_personalization.models import partition as partition_lib


def model_file(path: str) -> str:
  """A run directory's final model (`<path>/model.npz`), or `path` itself."""
  return os.path.join(path, 'model.npz') if os.path.isdir(path) else path


def load_init_weights(init_from: str) -> dict:
  """`--init_from`: a run directory (its model.npz) or an .npz file."""
  path = model_file(init_from)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'--init_from={init_from}: {path} not found. Point it at a finished '
        'run directory (e.g. a FedAvg pretraining run) or its model.npz.')
  return partition_lib.load_named_weights(path)


def load_checkpoint_weights(path: str) -> dict:
  """`--init_checkpoint`: named weights of a pretrained model of the task's family.

  Accepts our `.npz` exports and Keras `save_weights` files (`.h5`, read by
  variable name without building a model), e.g. ImageNet weights converted
  for the ResNet-18-GN.

  Raises:
    FileNotFoundError: no such file. ValueError: an unknown format.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--init_checkpoint={path}: no such file')
  if path.endswith('.npz'):
    return partition_lib.load_named_weights(path)
  if path.endswith(('.h5', '.hdf5')):
    return partition_lib.load_keras_h5_weights(path)
  raise ValueError(f'--init_checkpoint={path}: expected a .npz of named weights or a Keras .h5')


def initial_named_weights(task, config) -> dict:
  """Seeded fresh weights, overridden where names match by `--init_checkpoint`
  (a pretrained backbone: weights of another shape, e.g. a head for other
  classes, are skipped) and then by `--init_from` (a run: shapes must match).
  """
  named = task.initial_weights(config.seed)
  if config.init_checkpoint:
    loaded = load_checkpoint_weights(config.init_checkpoint)
    used = {k: v for k, v in loaded.items() if k in named and named[k].shape == v.shape}
    if not used:
      raise ValueError(f'--init_checkpoint={config.init_checkpoint} shares no variable (name '
                       'and shape) with the model; is it for this --task and --model?')
    logging.info('--init_checkpoint: %d of %d variables loaded; fresh: %s', len(used),
                 len(named), sorted(set(named) - set(used)))
    named.update(used)
  if config.init_from:
    loaded = task.complete_weights_fn(load_init_weights(config.init_from), task.partition.shapes)
    for name, value in loaded.items():
      if name in named and named[name].shape != value.shape:
        raise ValueError(
            f'--init_from: {name} has shape {value.shape}, the model needs '
            f'{named[name].shape}; use the same model settings as that run.')
    fresh = sorted(set(named) - set(loaded))
    shared = [k for k in loaded if k in named]
    if not shared:
      raise ValueError(
          f'--init_from={config.init_from} shares no variable with this model (its names: '
          f'{sorted(loaded)[:3]}...); it is a run of another --task or model. Point it at '
          'a run of the same task and model settings.')
    if fresh:
      logging.warning('--init_from: %d of %d variables not in %s, freshly initialized: %s',
                      len(fresh), len(named), config.init_from, fresh)
    named.update({k: loaded[k] for k in shared})
  return named
