"""The parts every algorithm is composed from: the client-work contract
(`client_work.ClientOutput`), the composer of a `PersonalizedProcess`
(`composers`), the local-training loops client updates are made of
(`local_training`), optimizers and (robust) aggregators.

May import: execution, models, state.
"""

from partial_personalization.templates.client_work import ClientOutput
from partial_personalization.templates.composers import compose_personalized_process
from partial_personalization.templates.composers import PersonalizedProcess
