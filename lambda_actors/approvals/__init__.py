"""The human approval gate (SPEC section 7.1).

An agent's risky action, asked for through the node's API or by the agent
itself, waits until its approver says yes in Matrix; no answer by the
deadline means no. :mod:`.record` is the record and its legal moves,
:mod:`.request` what a client may ask, :mod:`.store` the durable truth.
"""
