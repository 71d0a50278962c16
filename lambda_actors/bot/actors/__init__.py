"""The bot's actors: outbox, sync, rooms, agent connections, and the tree that holds them."""
