"""The notebooks in docs/notebooks run, on real data, and show real numbers.

Each notebook is executed afresh (nbclient, a Python kernel of this
interpreter); the copies in the repository keep their outputs so that they
read on a code host, and are checked to have them.
"""

import os
import re
import sys

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow  # About a minute and a half for both.

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
NOTEBOOKS = os.path.join(REPO, 'docs', 'notebooks')


def _text(cell) -> str:
  parts = []
  for output in cell.get('outputs', []):
    parts.append(output.get('text', ''))
    data = output.get('data', {})
    parts += [data.get('text/markdown', ''), data.get('text/plain', '')]
    parts.append('\n'.join(output.get('traceback', [])))
  return '\n'.join(parts)


def _run(name: str, monkeypatch) -> str:
  monkeypatch.setenv('PATH', os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
  monkeypatch.setenv('PYTHONPATH', REPO)
  notebook = nbformat.read(os.path.join(NOTEBOOKS, f'{name}.ipynb'), as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': NOTEBOOKS}}).execute()
  return '\n'.join(_text(c) for c in notebook.cells if c.cell_type == 'code')


@pytest.mark.parametrize('name', ['quickstart', 'custom_model'])
def test_stored_notebooks_keep_their_outputs(name):
  notebook = nbformat.read(os.path.join(NOTEBOOKS, f'{name}.ipynb'), as_version=4)
  code = [c for c in notebook.cells if c.cell_type == 'code']
  assert code and all(c.get('outputs') for c in code[1:])  # The set-up cell prints nothing.
  assert 'Unable to register' not in '\n'.join(_text(c) for c in code)


def test_quickstart(monkeypatch):
  out = _run('quickstart', monkeypatch)
  assert 'clients: 8 kept' in out
  assert 'Unable to register' not in out and 'INFO:' not in out
  row = re.search(r'\| fedalt \| 8 \| (\d+\.\d+)% \| (\d+\.\d+)% \|', out)
  assert row, out[-2000:]
  assert 0 < float(row.group(2)) < 100  # Real accuracies of the FedAvg model and ours.
  assert 'image/png' in open(os.path.join(NOTEBOOKS, 'quickstart.ipynb')).read()


def test_custom_model(monkeypatch):
  out = _run('custom_model', monkeypatch)
  assert 'writers=24' in out and '@CLIENTS' in out  # Real writers; TFF types shown.
  match = re.search(r'24 writers: own output layer (\d+\.\d)% vs the initial one (\d+\.\d)%', out)
  assert match, out[-2000:]
  # Trained output layers beat the untrained one they start from.
  assert float(match.group(1)) > float(match.group(2))
