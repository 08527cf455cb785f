"""progress: a bar written to a file or pipe becomes lines, never carriage returns."""

import io
import sys

import pytest

from partial_personalization.programs import progress


def test_a_bar_to_a_file_writes_whole_lines():
  out = io.StringIO()  # Not a terminal, like a log file.
  with progress.bar(total=3, file=out, desc='rounds', mininterval=0, maxinterval=0) as bar:
    for step in range(3):
      bar.set_postfix({'loss': f'{1.0 / (step + 1):.3g}'}, refresh=False)
      bar.update(1)
  text = out.getvalue()
  assert '\r' not in text and '\x1b' not in text
  lines = text.splitlines()
  assert len(lines) >= 2 and all(line.startswith('rounds') for line in lines)
  assert '3/3' in lines[-1] and 'loss=0.333' in lines[-1]


def test_a_bar_to_a_file_writes_at_most_one_line_per_interval():
  out = io.StringIO()
  with progress.bar(total=1000, file=out, desc='clients') as bar:
    for _ in range(1000):
      bar.update(1)
  lines = out.getvalue().splitlines()
  assert 1 <= len(lines) <= 3  # Start and end (the loop takes far under 30 s).
  assert '1000/1000' in lines[-1]


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_a_terminal_gets_tqdms_own_bar():
  out = _Terminal()
  with progress.bar(total=2, file=out, mininterval=0) as bar:
    bar.update(2)
  assert '\r' in out.getvalue()


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
