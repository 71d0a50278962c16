"""The Matrix bot: configuration, commands, files and answer streaming, and the actors that use them."""
