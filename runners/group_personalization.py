"""Group personalization on the real Stack Exchange dumps: global, then group, then local.

  bazel run //runners:group_personalization -- --output_dir=output/groups

Liu, Hui, Peng, arXiv 2210.01863 (see `group_lib`): FedAvg on every client;
FedAvg fine-tuning per group (`--groups`: by default each client's Stack
Exchange site); local finetuning of each client from its group model. The
report compares global, global + local, global + group and global + group +
local per client, and the equal-budget control (FedAvg on every client for the
group stage's client updates: global + extra, global + extra + local) (`report/summary.md`, `per_client.csv`, `by_group.csv`,
`report.png` in `--output_dir`). Every stage resumes when run again.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
import os

from absl import flags

from runners import flags_lib
from runners import group_lib
from runners import paths

flags_lib.define_executor_flags()
# `--help` lists the flags defined in flags_lib, not only this module's.
flags.adopt_module_key_flags(flags_lib)
_DUMP_DIRS = flags.DEFINE_list('dump_dirs', ['../shared/data/stackexchange'],
                               'Stack Exchange site folders, or folders of them.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'output/groups', 'Runs and the report.')
_MIN_EXAMPLES = flags.DEFINE_integer('min_examples', 200,
                                     'Sentences a client needs to be kept (as the main job).')
_GROUPS = flags.DEFINE_string('groups', 'metadata', 'metadata (the site), csv:PATH '
                              '(client_id,group) or kmeans:K (label histograms).')
_GLOBAL_ROUNDS = flags.DEFINE_integer('global_rounds', 25, 'Stage 1: global FedAvg rounds.')
_GROUP_ROUNDS = flags.DEFINE_integer('group_rounds', 10, 'Stage 2: FedAvg rounds per group.')
_GLOBAL_MODEL = flags.DEFINE_string(
    'global_model', None, 'Use this run directory (or .npz) as the global model instead of '
    'training stage 1, e.g. output/main_job/fedavg_pretrain.')
_CONTROL = flags.DEFINE_bool(
    'equal_budget_control', True, 'Also train FedAvg on every client from the global model '
    'for as many client updates as the group stage, then finetune locally from it.')
_MIN_GROUP_CLIENTS = flags.DEFINE_integer(
    'min_group_clients', 1, 'Groups with fewer training clients keep the global model.')
_LOCAL_ALGORITHM = flags.DEFINE_enum('local_algorithm', 'finetune', group_lib.LOCAL_ALGORITHMS,
                                     'Stage 3: local finetuning, or an algorithm run per group '
                                     'from the group model.')
_LOCAL_PERSONALIZATION = flags.DEFINE_string(
    'local_personalization', None, 'Stage 3: the part finetuned (default full) or the '
    'algorithm\'s personal part (default: the task\'s).')
_FINETUNE_EPOCHS = flags.DEFINE_integer('finetune_epochs', 1, 'Stage 3: finetuning epochs.')
_LOCAL_ROUNDS = flags.DEFINE_integer('local_rounds', 10, 'Stage 3: rounds of the algorithm.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 12,
                                          'Clients per round (at most the group size).')
_MODEL_SIZE = flags.DEFINE_string('model_size', 'tiny', 'tiny or mini.')
_CLIENT_OPTIMIZER = flags.DEFINE_string('client_optimizer', 'sgd', 'Local optimizer (sgd, adam).')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 0.5, 'Local learning rate.')
_FINETUNE_LR = flags.DEFINE_float('finetune_learning_rate', 0.1,
                                  'Learning rate of local finetuning.')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples_per_client', 128,
                                     'Examples a client uses per round.')
_REPORT_CLIENTS = flags.DEFINE_integer('report_clients', 0,
                                       'Clients in the report (0: all with train and test).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show progress bars.')


def _run():
  out = paths.resolve_path(_OUTPUT_DIR.value)
  data_dir = os.path.join(out, 'data')
  flags_lib.ensure_converted(_DUMP_DIRS.value, data_dir, _MIN_EXAMPLES.value)
  common = dict(root_output_dir=out, cache_dir=data_dir, model_size=_MODEL_SIZE.value,
                client_optimizer=_CLIENT_OPTIMIZER.value,
                client_learning_rate=_CLIENT_LR.value,
                finetune_learning_rate=_FINETUNE_LR.value,
                clients_per_round=_CLIENTS_PER_ROUND.value,
                max_examples_per_client=_MAX_EXAMPLES.value, seed=_SEED.value,
                report_clients=_REPORT_CLIENTS.value, rounds_per_checkpoint=5,
                progress=_PROGRESS.value)
  settings = group_lib.GroupSettings(
      groups=_GROUPS.value, global_rounds=_GLOBAL_ROUNDS.value, group_rounds=_GROUP_ROUNDS.value,
      local_algorithm=_LOCAL_ALGORITHM.value,
      local_personalization=_LOCAL_PERSONALIZATION.value,
      finetune_epochs=_FINETUNE_EPOCHS.value, local_rounds=_LOCAL_ROUNDS.value,
      min_group_clients=_MIN_GROUP_CLIENTS.value, equal_budget_control=_CONTROL.value,
      global_model=paths.resolve_path(_GLOBAL_MODEL.value) if _GLOBAL_MODEL.value else None)
  with flags_lib.tff_runtime():
    _, text = group_lib.run_group_personalization(common, settings)
  print('\nPer-client test accuracy (means and 10th percentiles weighted by test tokens):\n')
  print(text)
  print(f'\nreport: {out}/report/summary.md, per_client.csv, by_group.csv, report.png')


if __name__ == '__main__':
  cli.run(flags_lib.job_main(_run))
