"""Partially personalized federated learning on TensorFlow Federated.

Sub-packages, lowest first; each imports only those before it:
  execution    where computations run: TFF runtimes (local, remote workers,
               accelerated), worker settings, TFF-version checks, TF start-up.
  models       the model split into shared u and personal v (`partition`) and
               the task bundling model, loss and client data (`task`).
  state        durable state: the client-state store of each v_i, run locks,
               file and weight integrity.
  templates    the parts algorithms are composed from: the client-work
               contract, the composer, local-training loops, optimizers,
               aggregators.
  evaluation   evaluation computations, per-client reports, the evaluation
               protocol, paired tests, intervals, plots.
  algorithms   one `build_<algorithm>_process` per algorithm (FedAlt, FedSim,
               FFGG, Ditto, pFedMe) and client groups.
  programs     the training loop over rounds: checkpoints, client sampling,
               round runners, simulated Byzantine clients and asynchrony,
               progress bars.

As `tff.learning`, the packages re-export their public API:
`from partial_personalization import algorithms; algorithms.build_fedalt_process(...)`.
Importing the package imports TensorFlow without its CUDA start-up noise on
machines without a GPU (`tf_startup`).
"""

from partial_personalization import tf_startup

tf_startup.import_tensorflow()
