"""Talking to Lambda agents over their WebSocket protocol (SPEC section 4).

- :mod:`.protocol`: the wire format, pure (URLs, parsing, building frames);
- :mod:`.client`: one Trio connection to one (agent, chat) socket;
- :mod:`.fake`: a real WebSocket server that plays an agent, misbehaviours
  included, for tests, demos and smoke tests (``lambda-actors fake-agent``).
"""
