"""Translation between wire formats: OpenAI chat completions carried out on Anthropic's Messages API
(`anthropic_chat.py`: request in `chat_to_messages.py`, answers in `messages_to_chat.py` and
`messages_stream.py`), with the wire Structs of each side (`anthropic_wire.py`, `openai_wire.py`).
Pure: bytes in, bytes out, no I/O; the request path (proxy/failover.py) picks a translation per attempt
by the provider's type, so OpenAI-compatible traffic never reaches this package."""
