"""pytest fixtures: fake agents (filled in by the agent work)."""
