"""What every binary does first: TensorFlow imported without its CUDA start-up
noise, and usage errors reported in one line.

A binary imports this module before anything else that imports TensorFlow
(its first import; tests/runners/binaries_test.py checks each binary's start),
and starts with `cli.run(main)` instead of absl's `app.run(main)`: a bad flag
(unknown, malformed, a value out of range) or an `app.UsageError` prints
`error: <reason>` as the last line on stderr and exits with 2, like the other
errors of the user's making (`flags_lib.exit_on_user_error`), without absl's
page of help above it. `--help` prints the help as before.
"""

import sys

from absl import app
from absl import flags

from partial_personalization import tf_startup

tf_startup.import_tensorflow()

# The exit status of every error of the user's making (usage, bad input).
USER_ERROR_EXIT_CODE = 2


def user_error(message: str) -> None:
  """Prints `error: <message>` on stderr and exits with `USER_ERROR_EXIT_CODE`."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(USER_ERROR_EXIT_CODE)


def run(main) -> None:
  """`app.run(main)` with flag and usage errors as one line (see the module doc)."""

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      user_error(f'{e} (--help lists the flags)')

  def checked_main(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      user_error(str(e))

  app.run(checked_main, flags_parser=parse)
