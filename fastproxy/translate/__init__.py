"""Translation between wire formats. Pure: bytes in, bytes out, no I/O; the request path (proxy/failover.py)
picks a translation per attempt by the provider's type, so OpenAI-compatible traffic never reaches this package.

- OpenAI chat completions carried out on Anthropic's Messages API (`anthropic_chat.py`: request in
  `chat_to_messages.py`, answers in `messages_to_chat.py` and `messages_stream.py`), with the wire Structs of
  each side (`anthropic_wire.py`, `openai_wire.py`).
- The Anthropic ingress (`POST /v1/messages`, proxy/messages.py) served by an OpenAI-compatible provider: the
  request in `ingress_request.py`, answers in `ingress_response.py` and `ingress_stream.py`; an `anthropic`
  provider's stream passed through is watched by `messages_watch.py`.
"""
