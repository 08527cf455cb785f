"""The model and the task: which variables are shared (u) and personal (v)
(`partition`, a `tff.learning.models.ReconstructionModel`), and the task that
bundles a partitioned model with its loss, metrics and client data (`task`).

May import: execution.
"""

from partial_personalization.models.partition import build_reconstruction_model
from partial_personalization.models.partition import VariablePartition
from partial_personalization.models.task import PersonalizationTask
