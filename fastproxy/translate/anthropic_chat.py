"""One OpenAI chat completions exchange carried out on an `anthropic` provider: what proxy/failover.py
calls, per attempt, instead of forwarding bytes.

    for_attempt(tail, ...)  -> AnthropicChat for /chat/completions; None for Anthropic's own paths (sent
                               as they are); InvalidRequest for an OpenAI endpoint Anthropic has no equivalent of
    .body                   -> the Messages request to send
    .error(status, data)    -> an Anthropic error answer as OpenAI's status and body
    .response(data)         -> a non-streamed Message as a chat.completion (MalformedAnswer if unreadable)
    .stream()               -> the stream translator, in the SSE watcher's place
"""

from __future__ import annotations

from time import time

from fastproxy.core.errors import InvalidRequest
from fastproxy.core.schemas import TokenUsage
from fastproxy.translate.chat_to_messages import chat_to_messages
from fastproxy.translate.messages_stream import MessagesToChatStream
from fastproxy.translate.messages_to_chat import MalformedAnswer, message_to_chat, openai_error

__all__ = ["AnthropicChat", "MalformedAnswer", "for_attempt"]

# Anthropic's own endpoints (the /v1/messages ingress): forwarded without translation.
NATIVE_TAILS = ("/messages", "/messages/count_tokens", "/models")


class AnthropicChat:
    __slots__ = ("body", "created", "include_usage", "usage")

    def __init__(self, body: bytes, model: str, include_usage: bool, default_max_tokens: int) -> None:
        self.body = chat_to_messages(body, model, default_max_tokens)
        self.include_usage = include_usage
        self.created = int(time())
        # A non-streamed answer's usage, known once response() has read it (no second decode).
        self.usage: TokenUsage | None = None

    def error(self, status: int, data: bytes) -> tuple[int, bytes]:
        return openai_error(status, data)

    def response(self, data: bytes) -> bytes:
        out, self.usage = message_to_chat(data, self.created)
        return out

    def stream(self) -> MessagesToChatStream:
        return MessagesToChatStream(self.include_usage, self.created)


def for_attempt(
    tail: str, body: bytes, model: str, stream: bool, injected: bool, default_max_tokens: int
) -> AnthropicChat | None:
    """The translation for a request to an `anthropic` provider (`tail`: the client's path after /v1).

    `injected`: the proxy added include_usage to a stream, so the client did not ask for the usage chunk.
    """
    if tail == "/chat/completions":
        return AnthropicChat(body, model, stream and not injected, default_max_tokens)
    if tail in NATIVE_TAILS:
        return None
    raise InvalidRequest(
        f"'/v1{tail}' is not available for this model: its provider speaks Anthropic's Messages API "
        "(use /v1/chat/completions).",
        code="unsupported_endpoint",
    )
