"""Interactive chat: the session (domain), slash commands and the REPL loop."""
