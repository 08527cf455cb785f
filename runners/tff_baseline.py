"""FedAlt on TFF's EMNIST character-recognition baseline task, output layer personal.

  bazel run //runners:tff_baseline -- --cache_dir=data_cache/emnist --rounds=20

The cache is TFF's EMNIST file, e.g. from //runners:convert_femnist. See
runners/tff_baseline_lib.py and docs/tff_research_code.md.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
import os

from absl import flags
import tensorflow as tf

from runners import flags_lib
from runners import paths
from runners import tff_baseline_lib

_CACHE_DIR = flags.DEFINE_string('cache_dir', 'data_cache/emnist', 'TFF EMNIST cache folder.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'output/tff_baseline', 'Run directory.')
_ROUNDS = flags.DEFINE_integer('rounds', 20, 'Training rounds.')
_CLIENTS = flags.DEFINE_integer('clients_per_round', 10, 'Clients per round.')
_LR = flags.DEFINE_float('learning_rate', 0.05, 'Client SGD learning rate.')
flags_lib.define_executor_flags()
flags.adopt_module_key_flags(flags_lib)


def _run():
  with flags_lib.tff_runtime():
    result = tff_baseline_lib.train_fedalt(
        tff_baseline_lib.emnist_character_task(paths.resolve_path(_CACHE_DIR.value)),
        tff_baseline_lib.emnist_cnn_dropout, tff_baseline_lib.last_layer,
        loss_fn=tf.keras.losses.SparseCategoricalCrossentropy,
        run_dir=paths.resolve_path(_OUTPUT_DIR.value), total_rounds=_ROUNDS.value,
        clients_per_round=_CLIENTS.value, learning_rate=_LR.value)
  s = result['summary']
  print(f"{result['rounds_run']} rounds; {result['shared_parameters']:,} shared and "
        f"{result['personal_parameters']:,} personal parameters. Test accuracy over "
        f"{s['clients']} clients: own output layer {s['personalized_mean']:.2%}, initial one "
        f"{s['baseline_mean']:.2%}; helped {s['helped_fraction']:.0%}, hurt "
        f"{s['hurt_fraction']:.0%}, unchanged {s['unchanged_fraction']:.0%}. Run: "
        f"{os.path.abspath(paths.resolve_path(_OUTPUT_DIR.value))}")


if __name__ == '__main__':
  cli.run(flags_lib.job_main(_run))
