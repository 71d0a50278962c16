"""The embeddable actor runtime: supervisors, mailboxes, addresses, policies.

Everything public is re-exported by the ``lambda_actors`` package itself;
nothing here imports the bot, the Matrix layer or the agent protocol.
"""
