"""flags_lib: library messages reach the user with flag names, as one line."""

import os
import subprocess
import sys

from absl import flags
import pytest

from partial_personalization.execution import runtime
from runners import flags_lib


@pytest.fixture(scope='module')
def defined():
  """The executor flags of every runner (defining them twice is an error)."""
  if 'executor' not in flags.FLAGS:
    flags_lib.define_executor_flags()


def test_arguments_become_flags_where_a_flag_exists(defined):
  message = ('`executor` must be one of (...); `workers=host:port[,host:port]` is for '
             '`executor=remote`; `not_a_flag` and `x + 1` stay as written')
  assert flags_lib.as_flags(message) == (
      '--executor must be one of (...); --workers=host:port[,host:port] is for '
      '--executor=remote; `not_a_flag` and `x + 1` stay as written')


def test_a_library_error_is_one_line_naming_the_flag(defined, capsys):
  with pytest.raises(SystemExit) as exit_info:
    flags_lib.exit_on_user_error(runtime.ExecutorConfig, executor='gpu-cluster')
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --executor must be one of ('local', 'remote', 'accelerated')")
  assert err.count('\n') == 1


def test_help_lists_the_project_flags():
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
  shown = subprocess.run([sys.executable, '-m', 'runners.train', '--help'], cwd=repo,
                         capture_output=True, text=True).stdout
  for flag in ('--algorithm', '--tau_v', '--personalization', '--executor'):
    assert flag in shown


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
