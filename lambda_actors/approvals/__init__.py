"""The human approval gate (SPEC section 7.1) and agent registration (7.2).

An agent's risky action, asked for through the node's API or by the agent
itself, waits until its approver says yes in Matrix; no answer by the
deadline means no. :mod:`.record` is the record and its legal moves,
:mod:`.request` what a client may ask, :mod:`.store` the durable truth.

An agent that wants to exist is asked the same way (an approval record of
source ``registration``): :mod:`.registration` is its request and record,
:mod:`.registration_store` keeps it (and the registered agent), and
:mod:`.registry` (``node/registry``) sets the agent up once its owner says yes.
"""
