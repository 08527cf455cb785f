"""Durable state: the client-state store that keeps each client's v_i between
rounds (`client_state`, SQLite), run-directory locks (`run_lock`) and
integrity checks of files and weights (`integrity`).

May import: execution, models.
"""

from partial_personalization.state.client_state import ClientStateError
from partial_personalization.state.client_state import ClientStateStore
