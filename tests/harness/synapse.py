"""pytest fixtures: a session-scoped Synapse and a user factory (filled in by the Matrix layer work)."""
