"""Splitting a Keras model into shared parameters u and personal parameters v.

A *partition* is a function `keras_model -> personal variables`; everything
else is shared. Tasks declare their partitions by name in one registry
(`PartitionRegistry`), e.g. `last_block`, `adapter`, `full` for the
StackOverflow transformer (Pillutla et al., ICML 2022, Sec. 4 and Table 1).

Weights are exchanged in three forms:
* named: `{variable name: np.ndarray}`, as saved in `model.npz` exports;
* shared / personal `tff.learning.models.ModelWeights` (lists of arrays, in
  Keras variable order restricted to each side), as in TFF computations.
"""

import collections
import dataclasses
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

PartitionFn = Callable[[tf.keras.Model], Sequence[tf.Variable]]
ModelWeights = tff.learning.models.ModelWeights


class PartitionRegistry:
  """Named partitions of one model family; tasks register theirs here.

  A partition may need a variant of the model (e.g. an output layer untied
  from the input embedding before either can be personal); it declares that as
  `model_overrides`, keyword arguments the task applies to its model config.
  """

  def __init__(self):
    self._fns: dict[str, PartitionFn] = collections.OrderedDict()
    self._overrides: dict[str, dict] = {}

  def register(
      self, name: str, *, model_overrides: Optional[Mapping] = None
  ) -> Callable[[PartitionFn], PartitionFn]:
    """Decorator: `@registry.register('decoder', model_overrides={...})`."""

    def wrap(fn):
      if name in self._fns:
        raise ValueError(f'partition {name!r} is already registered')
      self._fns[name] = fn
      self._overrides[name] = dict(model_overrides or {})
      return fn

    return wrap

  def model_overrides(self, name: str) -> dict:
    """Model-config settings partition `name` needs ({} for most)."""
    self.get(name)
    return dict(self._overrides[name])

  def names(self) -> list[str]:
    return list(self._fns)

  def get(self, name: str) -> PartitionFn:
    """Raises ValueError naming the known partitions for an unknown name."""
    if name not in self._fns:
      raise ValueError(
          f'unknown personalization {name!r}; choose one of {self.names()}'
      )
    return self._fns[name]


@dataclasses.dataclass(frozen=True)
class VariablePartition:
  """Which of a model's variables are personal, by position.

  Attributes:
    trainable_names: Names of `keras_model.trainable_variables`, in order.
    non_trainable_names: Names of `keras_model.non_trainable_variables`.
    personal_trainable: One bool per trainable variable (True: personal).
    personal_non_trainable: One bool per non-trainable variable.
    shapes: Variable name -> shape.
  """

  trainable_names: tuple[str, ...]
  non_trainable_names: tuple[str, ...]
  personal_trainable: tuple[bool, ...]
  personal_non_trainable: tuple[bool, ...]
  shapes: Mapping[str, tuple[int, ...]]

  @classmethod
  def from_model(
      cls, keras_model: tf.keras.Model, partition_fn: PartitionFn
  ) -> 'VariablePartition':
    personal = {v.ref() for v in partition_fn(keras_model)}
    all_vars = {v.ref() for v in keras_model.variables}
    if not personal <= all_vars:
      raise ValueError('partition_fn returned variables not in the model')
    tr, ntr = keras_model.trainable_variables, keras_model.non_trainable_variables
    return cls(
        trainable_names=tuple(v.name for v in tr),
        non_trainable_names=tuple(v.name for v in ntr),
        personal_trainable=tuple(v.ref() in personal for v in tr),
        personal_non_trainable=tuple(v.ref() in personal for v in ntr),
        shapes={v.name: tuple(v.shape) for v in keras_model.variables},
    )

  def _names(self, personal: bool) -> ModelWeights:
    return ModelWeights(
        trainable=[n for n, p in zip(self.trainable_names, self.personal_trainable) if p == personal],
        non_trainable=[n for n, p in zip(self.non_trainable_names, self.personal_non_trainable) if p == personal],
    )

  @property
  def shared_names(self) -> ModelWeights:
    return self._names(False)

  @property
  def personal_names(self) -> ModelWeights:
    return self._names(True)

  def num_parameters(self) -> tuple[int, int]:
    """Returns (shared, personal) parameter counts (trainable and not)."""

    def count(names):
      return sum(
          int(np.prod(self.shapes[n]))
          for n in names.trainable + names.non_trainable
      )

    return count(self.shared_names), count(self.personal_names)

  def split(
      self, named: Mapping[str, np.ndarray]
  ) -> tuple[ModelWeights, ModelWeights]:
    """Named weights -> (shared u, personal v).

    Raises:
      KeyError: a variable of the model is missing from `named`, naming it.
    """

    def take(names):
      missing = [n for n in names.trainable + names.non_trainable if n not in named]
      if missing:
        raise KeyError(f'weights lack the model variables {missing[:5]}')
      return ModelWeights(
          trainable=[np.asarray(named[n]) for n in names.trainable],
          non_trainable=[np.asarray(named[n]) for n in names.non_trainable],
      )

    return take(self.shared_names), take(self.personal_names)

  def merge(
      self, shared: ModelWeights, personal: Optional[ModelWeights]
  ) -> dict[str, np.ndarray]:
    """(shared u, personal v) -> named weights."""
    named = {}
    for names, weights in ((self.shared_names, shared), (self.personal_names, personal)):
      if weights is None:
        continue
      named.update(zip(names.trainable, (np.asarray(w) for w in weights.trainable)))
      named.update(zip(names.non_trainable, (np.asarray(w) for w in weights.non_trainable)))
    return named


def named_weights(keras_model: tf.keras.Model) -> dict[str, np.ndarray]:
  return {v.name: v.numpy() for v in keras_model.variables}


# The model interface the library is written against, named here only: TFF's
# `ReconstructionModel`, whose global variables are u and local variables v.
PersonalModel = tff.learning.models.ReconstructionModel
# What every builder takes: a no-argument function building a `PersonalModel`.
ModelFn = Callable[[], PersonalModel]


def build_reconstruction_model(
    keras_model: tf.keras.Model,
    partition_fn: PartitionFn,
    input_spec,
) -> PersonalModel:
  """Wraps a Keras model as TFF's `ReconstructionModel` with u global, v local.

  TFF's `ReconstructionModel` is the model interface of Federated
  Reconstruction; its global/local split is exactly the shared/personal split,
  so the same `model_fn` serves our processes and `build_fed_recon`.
  """
  personal = {v.ref() for v in partition_fn(keras_model)}
  return PersonalModel.from_keras_model_and_variables(
      keras_model,
      global_trainable_variables=[v for v in keras_model.trainable_variables if v.ref() not in personal],
      global_non_trainable_variables=[v for v in keras_model.non_trainable_variables if v.ref() not in personal],
      local_trainable_variables=[v for v in keras_model.trainable_variables if v.ref() in personal],
      local_non_trainable_variables=[v for v in keras_model.non_trainable_variables if v.ref() in personal],
      input_spec=input_spec,
  )


def save_named_weights(path: str, named: Mapping[str, np.ndarray]) -> None:
  """Writes named weights to `path` (.npz), atomically."""
  tmp = path + '.partial.npz'
  np.savez(tmp, **{n.replace('/', '|'): w for n, w in named.items()})
  tf.io.gfile.rename(tmp, path, overwrite=True)


def load_keras_h5_weights(path: str) -> dict[str, np.ndarray]:
  """Named weights from a Keras `save_weights` HDF5 file (layer groups with
  `weight_names` attributes), without building a model.

  Raises:
    ValueError: the file is not in that format.
  """
  import h5py  # Installed with TensorFlow; only needed here.

  named = {}
  with h5py.File(path, 'r') as f:
    group = f['model_weights'] if 'model_weights' in f else f  # Whole-model .h5 files.
    if 'layer_names' not in group.attrs:
      raise ValueError(f'{path} is not a Keras weights file (no layer_names attribute)')
    for layer in group.attrs['layer_names']:
      layer_group = group[layer]
      for weight in layer_group.attrs.get('weight_names', []):
        name = weight.decode() if isinstance(weight, bytes) else weight
        named[name] = np.asarray(layer_group[name])
  return named


def load_named_weights(path: str) -> dict[str, np.ndarray]:
  """Reads weights written by `save_named_weights`.

  Raises:
    FileNotFoundError, ValueError: with the path, if missing or unreadable.
  """
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'{path}: no such model file')
  try:
    with np.load(path) as data:
      return {k.replace('|', '/'): data[k] for k in data.files}
  except Exception as e:  # zipfile/pickle errors for corrupt files.
    raise ValueError(f'{path}: not a readable model weights file ({e})') from e
