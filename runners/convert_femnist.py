"""Converts LEAF FEMNIST (real writers) into the file TFF's EMNIST loader reads.

  bazel run //runners:convert_femnist -- \
      --femnist_dir=../shared/data/femnist --output_dir=data_cache/emnist

Then `bazel run //runners:train -- --task=emnist --cache_dir=data_cache/emnist ...`.
See tasks/emnist/convert_lib.py for the format.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
from absl import app
from absl import flags

from runners import paths
from tasks.emnist import convert_lib

_FEMNIST_DIR = flags.DEFINE_string(
    'femnist_dir', '../shared/data/femnist', 'LEAF FEMNIST folder with train/ and test/ JSON.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', 'data_cache/emnist', 'Becomes the cache_dir of the emnist task.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:  # MalformedFemnistError is a ValueError.
    convert_lib.convert_if_missing(paths.resolve_path(_FEMNIST_DIR.value),
                                   paths.resolve_path(_OUTPUT_DIR.value))
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e


if __name__ == '__main__':
  cli.run(main)
