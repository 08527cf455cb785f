"""The import directions: each sub-package of the library imports only what
its __init__ docstring allows ("May import: ..."), the library imports no
runner or task, tasks import no runner, and the user's binaries no benchmark."""

import ast
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
LIBRARY = os.path.join(REPO, 'partial_personalization')
PACKAGES = sorted(d for d in os.listdir(LIBRARY)
                  if os.path.isfile(os.path.join(LIBRARY, d, '__init__.py')))


def imported_modules(path: str) -> set[str]:
  """Dotted names of the modules a file imports (`from a import b` gives a.b)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def python_files(folder: str) -> list[str]:
  return [os.path.join(root, f) for root, _, files in os.walk(os.path.join(REPO, folder))
          for f in files if f.endswith('.py')]


def allowed(package: str) -> set[str]:
  """The packages `package`'s __init__ docstring says it may import."""
  with open(os.path.join(LIBRARY, package, '__init__.py')) as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ''
  match = re.search(r'May import: ([^.]*)\.', ' '.join(doc.split()))
  assert match, f'{package}/__init__.py does not say what it may import ("May import: ...")'
  words = match.group(1)
  if words.startswith('nothing'):
    return set()
  if words.startswith('every other package'):
    return set(PACKAGES) - {package}
  names = {w.strip() for w in words.split(',')}
  assert names <= set(PACKAGES), f'{package}: unknown packages {names - set(PACKAGES)}'
  return names


def test_each_package_imports_only_what_it_declares():
  wrong = []
  for package in PACKAGES:
    ok = allowed(package) | {package}
    for path in python_files(os.path.join('partial_personalization', package)):
      for name in imported_modules(path):
        parts = name.split('.')
        if parts[0] != 'partial_personalization' or len(parts) < 2:
          continue
        if parts[1] not in PACKAGES:  # The package root (tf_startup).
          continue
        if parts[1] not in ok:
          wrong.append(f'{os.path.relpath(path, REPO)} imports {name}')
  assert not wrong, '\n'.join(wrong)


def test_declared_directions_have_no_cycle():
  graph = {p: allowed(p) for p in PACKAGES}
  done, order = set(), []
  while len(done) < len(graph):
    ready = [p for p in graph if p not in done and graph[p] <= done]
    assert ready, f'the allowed imports have a cycle among {sorted(set(graph) - done)}'
    done.update(ready)
    order.extend(sorted(ready))
  assert order[0] in ('execution', 'models', 'state')


@pytest.mark.parametrize('folder,forbidden', [
    ('partial_personalization', ('runners', 'tasks', 'benchmarks')),
    ('tasks', ('runners', 'benchmarks')),
    ('runners', ('benchmarks',)),
])
def test_lower_layers_do_not_import_higher_ones(folder, forbidden):
  wrong = [f'{os.path.relpath(path, REPO)} imports {name}'
           for path in python_files(folder) for name in imported_modules(path)
           if name.split('.')[0] in forbidden]
  assert not wrong, '\n'.join(wrong)


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
