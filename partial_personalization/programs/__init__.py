"""Programs: the training loop over rounds (`training_loop`: client sampling,
checkpoints, exact resume), the round runners that adapt a process to it and
keep v_i in the client-state store (`round_runners`), simulated Byzantine
clients (`byzantine`) and asynchronous training (`asynchronous`), and progress
bars.

May import: every other package.
"""

from partial_personalization.programs.training_loop import run_training
