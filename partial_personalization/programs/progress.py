"""Progress bars that read well on a terminal and in a log file.

On a terminal `bar` is a plain `tqdm` bar. Written to a file or a pipe (a CI
log, `nohup`, `| tee`), tqdm's carriage-return redraws would become one long
line; there the bar writes one line per `LOG_INTERVAL_S` seconds instead
(`rounds 12/40 [01:10<02:43, ...]`, with its postfix metrics), plus its last
state when it closes.
"""

import re
import sys

import tqdm

# Seconds between two lines of a bar written to a file or a pipe.
LOG_INTERVAL_S = 30.0
_CONTROL = re.compile(r'\r|\x1b\[[0-9;]*[A-Za-z]')


class _LineWriter:
  """A file for tqdm that turns each redraw into one line of text."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> None:
    text = _CONTROL.sub('', text).strip()
    if text:
      self._stream.write(text + '\n')

  def flush(self) -> None:
    self._stream.flush()


def bar(iterable=None, *, file=None, **kwargs) -> tqdm.tqdm:
  """`tqdm.tqdm(iterable, **kwargs)`, as lines every `LOG_INTERVAL_S` seconds
  when `file` (default stderr) is not a terminal."""
  stream = file or sys.stderr
  if not kwargs.get('disable') and not _is_terminal(stream):
    kwargs.setdefault('mininterval', LOG_INTERVAL_S)
    kwargs.setdefault('maxinterval', LOG_INTERVAL_S)
    kwargs.setdefault('ascii', True)
    kwargs['dynamic_ncols'] = False
    stream = _LineWriter(stream)
  return tqdm.tqdm(iterable, file=stream, **kwargs)


def _is_terminal(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False
