"""The `openai` backend: models served by an OpenAI-compatible chat-completions server."""
