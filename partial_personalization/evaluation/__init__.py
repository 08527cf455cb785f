"""Evaluation: the computations that test (u, v_i) per client and finetune v
before testing (`computations`), per-client reports and summaries
(`reports`, re-exported here), the evaluation protocol of a run (`protocol`),
paired per-example tests (`paired`), intervals over seeds and clients
(`intervals`) and plots.

Pillutla et al., ICML 2022, Sec. 5. May import: execution, models, state,
templates.
"""

from partial_personalization.evaluation.computations import build_personal_finetuning
from partial_personalization.evaluation.computations import build_personalized_evaluation
from partial_personalization.evaluation.reports import *  # pylint: disable=wildcard-import
