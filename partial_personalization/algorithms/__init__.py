"""The algorithms: one `build_<algorithm>_process` each, and their client updates.

FedAlt and FedSim (Pillutla et al., ICML 2022, Algorithm 1), FFGG (Mishchenko
et al., TMLR 2025), the whole-model baselines Ditto and pFedMe, and client
groups (Liu et al. 2022). Each builder takes its own hyperparameters
(keyword-only), makes its client update and composes it with TFF's default
parts (`defaults.compose_with_defaults`). The loops that run them over rounds,
with the client-state store, are `programs`.

May import: execution, models, state, templates, evaluation.
"""

from partial_personalization.algorithms import defaults
from partial_personalization.algorithms import fedalt
from partial_personalization.algorithms import fedsim
from partial_personalization.algorithms import ffgg
from partial_personalization.algorithms import groups
from partial_personalization.algorithms import whole_model
from partial_personalization.algorithms.defaults import compose_with_defaults
from partial_personalization.algorithms.defaults import PersonalizedProcess
from partial_personalization.algorithms.fedalt import build_fedalt_process
from partial_personalization.algorithms.fedsim import build_fedsim_process
from partial_personalization.algorithms.ffgg import build_ffgg_process
from partial_personalization.algorithms.whole_model import build_ditto_process
from partial_personalization.algorithms.whole_model import build_pfedme_process
