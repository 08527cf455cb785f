"""Every command block of the README runs as written, on a fresh copy of the
repository (tracked files only, as a clone), so a README that drifts from the
code fails here.

Shell blocks run in order in one bash session (later blocks use what earlier
ones made, as for a reader), from the copy's root, with `../shared/data`
beside it and the project's `.venv`. Where a command trains, `TINY` settings
are appended to it (fewer rounds, clients, examples): the command's own flags,
paths and defaults stay as written, so a renamed flag, a moved target or a
default that resolves elsewhere under `bazel run` fails the test. Python blocks
run after the shell blocks, as written. The notebooks have no shell lines
(checked here, so one added later is not silently skipped).
"""

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import conftest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

# Appended to each command that trains or evaluates, by what it runs. A README
# command of a binary missing here fails the test: give it tiny settings.
_TRAIN = ('--total_rounds=1 --clients_per_round=2 --max_examples_per_client=8 '
          '--rounds_per_eval=0 --report_clients=2 --eval_clients=2 --progress=false')
_MAIN_JOB = ('--rounds=1 --clients_per_round=2 --max_examples_per_client=8 --seeds=0,1 '
             '--finetune_epochs=1 --test_clients=4')
TINY = {
    # From the stored global model, as a fresh clone runs it.
    'tools/run_main_job.sh': _MAIN_JOB,
    '//runners:main_job': _MAIN_JOB,
    # The test suite itself: collected, not run (this test is part of it).
    'tools/run_tests.sh': '--collect-only -q',
    '//runners:convert_stackexchange': '',
    '//runners:convert_femnist': '',
    '//runners:train': _TRAIN,
    '//runners:pretrain': '--rounds=1',
    '//runners:experiment_grid': (
        '--pretrain_rounds=1 --rounds=1 --clients_per_round=2 --max_examples_per_client=8 '
        '--report_clients=2 --seeds=0 --progress=false '
        # One cell of each grid the README runs (the paper's, FFGG's, EMNIST's).
        '--cells=fedalt_last_block_stateful,fedalt,fedalt_head_stateful'),
    '//runners:group_personalization': (
        '--global_rounds=1 --group_rounds=1 --local_rounds=1 --clients_per_round=2 '
        '--max_examples_per_client=8 --report_clients=4 --progress=false '
        '--min_group_clients=12 --equal_budget_control=false'),
    '//benchmarks:benchmark': (
        '--model_sizes=tiny --clients_per_round=2 --rounds=1 --warmup_rounds=0 '
        '--executors=local --algorithms=fedavg --max_examples_per_client=8 --eval_clients=2'),
    '//runners:tff_baseline': '--rounds=1 --clients_per_round=2',
}
_SHELL = ('', 'bash', 'sh', 'shell')


def blocks(markdown: str) -> list[tuple[int, str, str]]:
  """Fenced code blocks: (first line number, language, text)."""
  found, lines, i = [], markdown.splitlines(), 0
  while i < len(lines):
    m = re.match(r'^```(\w*)\s*$', lines[i])
    if not m:
      i += 1
      continue
    end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith('```'))
    found.append((i + 2, m.group(1), '\n'.join(lines[i + 1:end])))
    i = end + 1
  return found


def commands(block: str, first_line: int) -> list[tuple[int, str]]:
  """A shell block's commands (continuations joined, comments dropped), with
  the README line of each."""
  out, pending, start = [], '', first_line
  for n, line in enumerate(block.splitlines(), first_line):
    line = re.sub(r'(^|\s)#.*$', '', line).rstrip()
    if not pending:
      start = n
    if line.endswith('\\'):
      pending += line[:-1] + ' '
      continue
    command = ' '.join((pending + line).split())
    pending = ''
    if command:
      out.append((start, command))
  return out


def with_tiny_settings(command: str) -> str:
  """`command` with its `TINY` settings appended (after `--` for bazel run)."""
  words = shlex.split(command)
  if words[:2] == ['bazel', 'run']:
    target = words[2]
    if target not in TINY:
      raise KeyError(f'README runs {target}: add its tiny settings to TINY')
    extra = TINY[target]
    return f'{command}{"" if "--" in words else " --"} {extra}'.rstrip()
  if words[0] in TINY:
    return f'{command} {TINY[words[0]]}'.rstrip()
  return command


def test_commands_are_parsed_as_a_reader_reads_them():
  text = '```\nsource x.sh   # set-up\nbazel run //a:b -- \\\n    --c=1 --d=2\n```\n' \
         '```python\nprint(1)\n```\n'
  (line, lang, block), (_, python_lang, _) = blocks(text)
  assert (line, lang, python_lang) == (2, '', 'python')
  assert commands(block, line) == [(2, 'source x.sh'), (3, 'bazel run //a:b -- --c=1 --d=2')]
  assert with_tiny_settings('bazel run //runners:pretrain') == \
      'bazel run //runners:pretrain -- --rounds=1'
  with pytest.raises(KeyError, match='//runners:nope'):
    with_tiny_settings('bazel run //runners:nope -- --x=1')


def test_notebooks_have_no_shell_lines():
  for name in os.listdir(os.path.join(REPO, 'docs', 'notebooks')):
    if name.endswith('.ipynb'):
      with open(os.path.join(REPO, 'docs', 'notebooks', name)) as f:
        cells = json.load(f)['cells']
      for cell in cells:
        lines = ''.join(cell['source']).splitlines() if cell['cell_type'] == 'code' else []
        assert not [l for l in lines if l.lstrip().startswith(('!', '%'))], name


def _fresh_copy(root: str) -> str:
  """The repository's tracked files under `root/repo`, `root/shared` pointing
  at the shared data and `.venv` at the project's environment."""
  repo = os.path.join(root, 'repo')
  tracked = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split('\0')
  for path in filter(None, tracked):
    if os.path.isfile(os.path.join(REPO, path)):
      os.makedirs(os.path.dirname(os.path.join(repo, path)), exist_ok=True)
      shutil.copy2(os.path.join(REPO, path), os.path.join(repo, path))
  os.symlink(os.path.dirname(conftest.shared_data_dir()), os.path.join(root, 'shared'))
  os.symlink(os.path.join(REPO, '.venv'), os.path.join(repo, '.venv'))
  # A GLDv2 cache where the README's GLDv2 command expects the reader's.
  spec = importlib.util.spec_from_file_location(
      'gldv2_test', os.path.join(REPO, 'tests', 'tasks', 'gldv2_test.py'))
  gldv2_test = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gldv2_test)
  gldv2_test.write_gld23k_fixture(os.path.join(repo, 'data_cache', 'gldv2'))
  return repo


def test_readme_commands_run_as_written(tmp_path):
  if shutil.which('bazel') is None:
    pytest.fail('bazel not found: run tools/bootstrap.sh first')
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  script = ['set -euo pipefail']
  python_blocks = []
  for line, lang, block in blocks(readme):
    if lang == 'python':
      python_blocks.append((line, block))
      continue
    assert lang in _SHELL, f'README.md:{line}: unknown block language {lang!r}'
    for n, command in commands(block, line):
      script.append(f'echo "### $(date +%s)" {shlex.quote(f"README.md:{n}: {command}")} >&2')
      script.append(with_tiny_settings(command))
  for line, block in python_blocks:
    script.append(f'echo "### $(date +%s) README.md:{line}: python block" >&2')
    script.append(f'python - <<\'PYTHON_BLOCK\'\n{block}\nPYTHON_BLOCK')
  script.append('echo "### $(date +%s) end" >&2')
  script.append('bazel shutdown >/dev/null 2>&1 || true')
  repo = _fresh_copy(str(tmp_path))
  env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTEST', 'BUILD_'))}
  result = subprocess.run(['bash', '-c', '\n'.join(script)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=1500)
  if result.returncode:
    ran = [l for l in result.stderr.splitlines() if l.startswith('### ')]
    pytest.fail(f'{ran[-1] if ran else "set-up"} failed (exit {result.returncode}):\n'
                f'{(result.stdout + result.stderr)[-4000:]}')
  # Where the time goes (shown with pytest -s): seconds per README command.
  marks = [l.split(' ', 2)[1:] for l in result.stderr.splitlines() if l.startswith('### ')]
  for (start, what), (end, _) in zip(marks, marks[1:]):
    print(f'{int(end) - int(start):5d} s  {what[:110]}')
  # What the README says the commands make is there.
  assert os.path.exists(os.path.join(repo, 'data_cache', 'stackoverflow', 'stackoverflow.sqlite'))
  assert os.path.exists(os.path.join(repo, 'output', 'so_fedalt', 'report', 'summary.json'))
  assert os.path.exists(os.path.join(repo, 'output', 'main_job', 'summary.md'))


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
