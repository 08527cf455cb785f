"""Converts Stack Exchange dumps into TFF's StackOverflow SQLite format.

  bazel run //runners:convert_stackexchange -- \
      --dump_dirs=../shared/data/stackexchange --output_dir=data_cache/stackoverflow

See tasks/stackoverflow/convert_lib.py for the construction and the split.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
from absl import flags

from runners import flags_lib
from runners import paths
from tasks.stackoverflow import convert_lib

_DUMP_DIRS = flags.DEFINE_list(
    'dump_dirs', ['../shared/data/stackexchange'],
    'Site folders (<site>/Posts.xml) or folders of site folders.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', 'data_cache/stackoverflow', 'Becomes the cache_dir of the task.')
_MIN_EXAMPLES = flags.DEFINE_integer(
    'min_examples', 100, 'Minimum sentences for a client to be kept (TFF used 100).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing database.')


def _run():
  stats = convert_lib.convert(
      [paths.resolve_path(d) for d in _DUMP_DIRS.value], paths.resolve_path(_OUTPUT_DIR.value),
      min_examples=_MIN_EXAMPLES.value, overwrite=_OVERWRITE.value)
  print(stats.summary())


if __name__ == '__main__':
  # Bad dumps, an existing output, a folder in use: `error: <message>`, exit 2.
  cli.run(flags_lib.job_main(_run))
