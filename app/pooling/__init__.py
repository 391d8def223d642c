"""vLLM's pooling protocol: request models and response bodies."""
