"""Trains FedAvg, FedAlt or FedSim on a task; resumable; see runners/train_lib.py.

  bazel run //runners:train -- --algorithm=fedalt --personalization=last_block \
      --experiment_name=so_fedalt --init_from=output/so_fedavg
"""

from runners import cli  # First: TensorFlow without its start-up noise.
from absl import app
from absl import flags

from runners import flags_lib
from runners import train_lib

flags_lib.define_train_flags()
flags_lib.define_executor_flags()
# `--help` lists the flags defined in flags_lib, not only this module's.
flags.adopt_module_key_flags(flags_lib)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  flags_lib.quiet_logs()
  with flags_lib.tff_runtime():
    config = flags_lib.exit_on_user_error(flags_lib.config_from_flags)
    result = flags_lib.exit_on_user_error(train_lib.train, config)
  if result['summary']:
    from partial_personalization import evaluation
    print(evaluation.format_summaries({config.experiment_name: result['summary']}))
  print(f"{result['shared_parameters']:,} shared and {result['personal_parameters']:,} personal "
        f"parameters; {result['rounds_run']} rounds in {result['seconds']:.0f} s")
  print(f"run directory: {result['run_dir']}")


if __name__ == '__main__':
  cli.run(main)
