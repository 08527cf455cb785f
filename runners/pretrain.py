"""Pretrains the stored global model (FedAvg on every client of the conversion).

  bazel run //runners:pretrain

See runners/pretrain_lib.py.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
from absl import flags

from runners import flags_lib
from runners import paths
from runners import pretrain_lib

flags_lib.define_executor_flags()
flags.adopt_module_key_flags(flags_lib)
_DUMP_DIRS = flags.DEFINE_list('dump_dirs', ['../shared/data/stackexchange'],
                               'Stack Exchange site folders, or folders of them.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'output/pretrain',
                                  'Pretraining folder: data/, fedavg/ (the run).')
_MIN_EXAMPLES = flags.DEFINE_integer('min_examples', 500,
                                     'Sentences a client needs to be kept (as the main job).')
_DEFAULT = pretrain_lib.PretrainRecipe()
_ROUNDS = flags.DEFINE_integer('rounds', _DEFAULT.rounds, 'FedAvg rounds.')
# The recipe (defaults: the stored model's, chosen on heldout in docs/results.md).
_RECIPE_FLAGS = {
    'model_size': flags.DEFINE_string('model_size', _DEFAULT.model_size, 'tiny or mini.'),
    'clients_per_round': flags.DEFINE_integer('clients_per_round', _DEFAULT.clients_per_round,
                                              'Clients per round.'),
    'max_examples_per_client': flags.DEFINE_integer(
        'max_examples_per_client', _DEFAULT.max_examples_per_client,
        'Sentences a client trains on per round.'),
    'client_learning_rate': flags.DEFINE_float(
        'client_learning_rate', _DEFAULT.client_learning_rate, 'Local Adam learning rate.'),
    'rounds_per_eval': flags.DEFINE_integer('rounds_per_eval', _DEFAULT.rounds_per_eval,
                                            'Heldout evaluation (and snapshot) every k rounds.'),
    'eval_clients': flags.DEFINE_integer(
        'eval_clients', _DEFAULT.eval_clients, 'Clients of each heldout evaluation (a seeded '
        'sample when fewer than the population; the paper\'s scale needs ~1000).'),
}
_EXPORT_DIR = flags.DEFINE_string(
    'export_dir', pretrain_lib.STORED_MODEL_DIR,
    'Where the finished model and its manifest are written (the main job reads '
    f'{pretrain_lib.STORED_MODEL_DIR}).')


def _run():
  out = paths.resolve_path(_OUTPUT_DIR.value)
  flags_lib.ensure_converted(_DUMP_DIRS.value, f'{out}/data', _MIN_EXAMPLES.value)
  recipe = pretrain_lib.PretrainRecipe(
      rounds=_ROUNDS.value, **{name: flag.value for name, flag in _RECIPE_FLAGS.items()})
  with flags_lib.tff_runtime():
    result = pretrain_lib.pretrain(recipe, out)
  print(f"{result['rounds_run']} rounds in {result['seconds']:.0f} s; run: {result['run_dir']}")
  command = 'bazel run //runners:pretrain -- ' + ' '.join(
      f'--{name}={flags.FLAGS[name].value if name != "dump_dirs" else ",".join(_DUMP_DIRS.value)}'
      for name in ['dump_dirs', 'min_examples', 'rounds'] + [
          name for name in _RECIPE_FLAGS if getattr(recipe, name) != getattr(_DEFAULT, name)])
  export_dir = paths.resolve_path(_EXPORT_DIR.value)
  manifest = pretrain_lib.export(recipe, out, export_dir, command=command)
  last = manifest['heldout'][-1]
  print(f"stored model: {export_dir} (heldout accuracy {last['accuracy']:.2%} after round "
        f"{last['round']}; manifest.json)")


if __name__ == '__main__':
  cli.run(flags_lib.job_main(_run))
