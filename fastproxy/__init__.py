"""fastproxy: an OpenAI-compatible LLM API proxy built for throughput."""

__version__ = "0.1.0"
