"""The HTTP side of the service that is not a model runner (the OpenAI-compatible API so far)."""
