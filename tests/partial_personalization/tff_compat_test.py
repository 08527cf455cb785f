"""tff_compat: the only importer of TFF internals, and its version check."""

import importlib
import os
import re
import sys

import pytest
import tensorflow_federated as tff

from partial_personalization.execution import tff_compat

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def test_another_tff_version_is_a_clear_import_error(monkeypatch):
  monkeypatch.setattr(tff, '__version__', '0.99.0')
  with pytest.raises(ImportError, match='written against TensorFlow Federated 0.87.*'
                     'found 0.99.0.*tools/bootstrap.sh'):
    importlib.reload(tff_compat)
  monkeypatch.undo()
  importlib.reload(tff_compat)  # The installed version imports.


def test_no_other_module_imports_tff_internals():
  offenders = []
  for folder in ('partial_personalization', 'runners', 'tasks', 'tests'):
    for root, _, names in os.walk(os.path.join(REPO, folder)):
      for name in names:
        path = os.path.join(root, name)
        if name.endswith('.py') and name != 'tff_compat.py' and name != 'tff_compat_test.py':
          with open(path) as f:
            if re.search(r'^\s*(from|import) tensorflow_federated\.python', f.read(), re.M):
              offenders.append(os.path.relpath(path, REPO))
  assert not offenders


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
