"""LEAF FEMNIST (JSON, split by writer) -> the cache file TFF's EMNIST loader reads.

`tff.simulation.datasets.emnist.load_data(only_digits, cache_dir)` asks
`download.get_compressed_file` for `<cache_dir>/emnist_all.sqlite` and uses it
as is when it exists (no download, no hash check), through `SqlClientData` with
split names `all_train` / `all_test` (62 classes) or `digits_only_train` /
`digits_only_test` (labels 0-9). Tables, as `SqlClientData` requires:
`examples(split_name, client_id, serialized_example_proto)` and
`client_metadata(client_id, split_name, num_examples)`. Each example is a
`tf.train.Example` with `pixels` (784 float32, 28x28 row-major, 1.0 =
background, as LEAF and TFF both store it) and `label` (int64, 0-61).

TFF's federated EMNIST is LEAF's preprocessing of NIST SD19 grouped by writer,
so LEAF FEMNIST files are the same kind of data; like TFF's, the output keeps
only writers with at least one train and one test example.
"""

import dataclasses
import glob
import json
import os
import sqlite3
from typing import Iterator

import numpy as np
import tensorflow as tf

from partial_personalization.programs import progress as progress_lib

DATABASE_FILENAME = 'emnist_all.sqlite'
NUM_PIXELS = 28 * 28
NUM_CLASSES = 62
# LEAF split folder -> TFF split names (all classes, digits only).
_SPLITS = {'train': ('all_train', 'digits_only_train'), 'test': ('all_test', 'digits_only_test')}


class MalformedFemnistError(ValueError):
  """A LEAF JSON file does not have the documented structure."""


@dataclasses.dataclass
class ConversionStats:
  files: int = 0
  writers: int = 0
  dropped_writers: int = 0
  examples: dict = dataclasses.field(default_factory=dict)  # TFF split -> count


def iter_leaf_file(path: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
  """Yields (writer id, pixels float32 [n, 784], labels int64 [n]) of one LEAF file.

  Raises:
    MalformedFemnistError: unreadable JSON, missing keys, wrong sizes or labels
      (the message names the file and the writer).
  """
  try:
    with open(path) as f:
      data = json.load(f)
    users, user_data = data['users'], data['user_data']
  except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
    raise MalformedFemnistError(
        f'{path}: not a LEAF FEMNIST file ({type(e).__name__}: {e}); expected JSON with '
        '"users", "num_samples" and "user_data": {writer: {"x": [[784 floats]], "y": [ints]}}'
    ) from e
  for writer in users:
    try:
      record = user_data[writer]
      pixels = np.asarray(record['x'], dtype=np.float32)
      labels = np.asarray(record['y'], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
      raise MalformedFemnistError(f'{path}: writer {writer!r}: {type(e).__name__}: {e}') from e
    if pixels.ndim != 2 or pixels.shape[1] != NUM_PIXELS or len(labels) != len(pixels):
      raise MalformedFemnistError(
          f'{path}: writer {writer!r} has x of shape {pixels.shape} and {len(labels)} labels; '
          f'expected [n, {NUM_PIXELS}] and n labels')
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
      raise MalformedFemnistError(f'{path}: writer {writer!r} has labels outside 0..61')
    yield writer, pixels, labels


def example_proto(pixels: np.ndarray, label: int) -> bytes:
  """One serialized `tf.train.Example` in TFF's EMNIST format."""
  return tf.train.Example(features=tf.train.Features(feature={
      'pixels': tf.train.Feature(float_list=tf.train.FloatList(value=pixels.reshape(-1))),
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
  })).SerializeToString()


def _read_split(leaf_dir: str, split: str, stats: ConversionStats) -> dict:
  paths = sorted(glob.glob(os.path.join(leaf_dir, split, '*.json')))
  if not paths:
    raise FileNotFoundError(
        f'no LEAF FEMNIST files in {os.path.join(leaf_dir, split)}; --femnist_dir must hold '
        'train/*.json and test/*.json (e.g. ../shared/data/femnist)')
  writers = {}
  for path in progress_lib.bar(paths, desc=f'reading FEMNIST {split}', unit='file', leave=False):
    stats.files += 1
    for writer, pixels, labels in iter_leaf_file(path):
      if writer in writers:  # A writer split over files: keep file order.
        old_pixels, old_labels = writers[writer]
        pixels, labels = np.concatenate([old_pixels, pixels]), np.concatenate([old_labels, labels])
      writers[writer] = (pixels, labels)
  return writers


def convert(leaf_dir: str, output_dir: str) -> ConversionStats:
  """Writes `<output_dir>/emnist_all.sqlite` from LEAF's `train/` and `test/` JSON.

  Examples keep LEAF's order within each writer. Writing goes to a temporary
  file renamed at the end, so an interrupted run leaves no partial database.

  Raises:
    FileNotFoundError: `leaf_dir` lacks train/*.json or test/*.json.
    MalformedFemnistError: a file does not follow LEAF's format.
    FileExistsError: the database exists already (delete it to rebuild).
  """
  final_path = os.path.join(output_dir, DATABASE_FILENAME)
  if os.path.exists(final_path):
    raise FileExistsError(f'{final_path} exists; delete it to convert again')
  stats = ConversionStats()
  data = {split: _read_split(leaf_dir, split, stats) for split in _SPLITS}
  both = sorted(set(data['train']) & set(data['test']))
  stats.writers = len(both)
  stats.dropped_writers = len(set(data['train']) ^ set(data['test']))
  if not both:
    raise MalformedFemnistError(f'{leaf_dir}: no writer has both train and test examples')
  os.makedirs(output_dir, exist_ok=True)
  tmp_path = f'{final_path}.{os.getpid()}.tmp'  # Per process: concurrent converts cannot clash.
  if os.path.exists(tmp_path):
    os.remove(tmp_path)
  conn = sqlite3.connect(tmp_path)
  conn.executescript("""
      CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL,
                             serialized_example_proto BLOB NOT NULL);
      CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL,
                                    num_examples INTEGER NOT NULL);""")
  for split, (all_name, digits_name) in _SPLITS.items():
    for writer in progress_lib.bar(both, desc=f'writing {split}', unit='writer', leave=False):
      pixels, labels = data[split][writer]
      for name, keep in ((all_name, np.ones_like(labels, bool)), (digits_name, labels < 10)):
        rows = [(name, writer, example_proto(p, y)) for p, y in zip(pixels[keep], labels[keep])]
        if rows:
          conn.executemany('INSERT INTO examples VALUES (?,?,?)', rows)
          conn.execute('INSERT INTO client_metadata VALUES (?,?,?)', (writer, name, len(rows)))
          stats.examples[name] = stats.examples.get(name, 0) + len(rows)
  conn.execute('CREATE INDEX examples_client ON examples (client_id, split_name)')
  conn.commit()
  conn.close()
  os.replace(tmp_path, final_path)
  return stats


def convert_if_missing(leaf_dir: str, output_dir: str, log=print) -> None:
  """Converts once: says so and does nothing when the database exists."""
  if os.path.exists(os.path.join(output_dir, DATABASE_FILENAME)):
    log(f'{output_dir}/{DATABASE_FILENAME} exists; delete it to convert again')
    return
  stats = convert(leaf_dir, output_dir)
  log(f'FEMNIST -> {output_dir}/{DATABASE_FILENAME}: {stats.writers} writers with train and '
      f'test data ({stats.dropped_writers} with only one split dropped), examples {stats.examples}')

