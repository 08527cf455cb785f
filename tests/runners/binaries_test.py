"""Every binary of //runners and //benchmarks starts clean and reports a usage
error in one line.

Each binary is started as a user starts it (`python -m runners.<name>`, the
environment of tools/env.sh) with a bad flag: stderr must be exactly one line,
`error: <reason>`, with exit status 2; TensorFlow's start-up noise (the cuDNN,
cuFFT and cuBLAS registration lines) or absl's page of help would be more lines.
The list of binaries is read from the BUILD files, so a new one is checked too.
"""

import concurrent.futures
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def binaries() -> list[str]:
  """Module names of the binaries, e.g. 'runners.train', 'benchmarks.benchmark'."""
  names = []
  for folder in ('runners', 'benchmarks'):
    with open(os.path.join(REPO, folder, 'BUILD')) as f:
      names += [f'{folder}.{n}' for n in re.findall(r'py_binary\(\s*name = "(\w+)"', f.read())]
  return names


def _run(binary: str, *args: str) -> subprocess.CompletedProcess:
  module = binary if '.' in binary else f'runners.{binary}'
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def test_every_binary_starts_clean_and_a_bad_flag_is_one_line():
  names = binaries()
  assert {'runners.train', 'runners.main_job', 'runners.worker',
          'benchmarks.benchmark'} <= set(names)
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    results = dict(zip(names, pool.map(lambda b: _run(b, '--no_such_flag=1'), names)))
  wrong = {name: (r.returncode, r.stderr[-600:]) for name, r in results.items()
           if r.returncode != 2 or r.stderr.strip().splitlines() != [
               "error: Unknown command line flag 'no_such_flag' (--help lists the flags)"]}
  assert not wrong, wrong


@pytest.mark.parametrize('binary,args,message', [
    ('main_job', ['--seeds=0'], 'error: --seeds needs at least 2 distinct seeds'),
    ('train', ['--experiment_name=x', '--seed=1.5'], 'error: flag --seed=1.5: '),
    ('convert_stackexchange', ['extra'], "error: unexpected arguments: ['extra']"),
    pytest.param('train', ['--experiment_name=x', '--algorithm=fedsim', '--tau_v=5'],
                 'error: --tau_v does not apply to --algorithm=fedsim (its settings: ',
                 marks=pytest.mark.slow),  # One more binary start; config_lib_test covers it fast.
])
def test_usage_errors_are_one_line_exit_2(binary, args, message):
  result = _run(binary, *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]


@pytest.mark.slow  # three binaries started
def test_verify_client_state_checks_a_whole_store_and_names_a_corrupt_row(tmp_path):
  import sqlite3  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from partial_personalization.state import client_state  # pylint: disable=g-import-not-at-top
  run_dir = tmp_path / 'run'
  weights = client_state.ModelWeights([np.zeros([3], np.float32)], [])
  store = client_state.ClientStateStore(str(run_dir / 'client_state.sqlite'), weights)
  store.write(1, ['a', 'b'], [weights, weights])
  store.commit(1)
  store.close()
  ok = _run('verify_client_state', f'--run_dir={run_dir}')
  assert ok.returncode == 0 and ': ok, 2 rows' in ok.stdout, ok.stderr[-2000:]
  conn = sqlite3.connect(str(run_dir / 'client_state.sqlite'))
  conn.execute("UPDATE personal SET weights = X'00' WHERE client_id = 'b'")
  conn.commit()
  conn.close()
  bad = _run('verify_client_state', f'--run_dir={run_dir}')
  lines = bad.stderr.strip().splitlines()
  assert bad.returncode == 2 and len(lines) == 1 and "client 'b'" in lines[0], bad.stderr[-2000:]
  missing = _run('verify_client_state', f'--run_dir={tmp_path / "nothing"}')
  assert missing.returncode == 2 and 'no client-state store there' in missing.stderr


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
