"""CPU of the Anthropic ingress translation next to the byte-exact path's own work, same run, in process.

    python -m bench.translate [--rounds 7] [--events 50]

What each path does per unit, the network left out (it is the same for both):
- per stream event: the byte-exact chat path's SSE watcher (proxy/sse.py: find usage, forward the bytes), the
  translator of an OpenAI chunk into Anthropic events (translate/ingress_stream.py), and the watcher of
  an Anthropic stream passed through (translate/messages_watch.py);
- per non-streamed request: the chat path's narrow view of the body and the usage read from the answer, and the
  Anthropic ingress's translation both ways (the same view, the request decoded, translated and encoded, the
  chat.completion turned into an Anthropic message).
Rounds alternate the paths; each figure is the median over rounds of µs of CPU (process time) per unit.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

from bench.harness import CANNED_CHAT, CHAT_BODY
from bench.stats import median
from bench.targets import MESSAGES_BODY
from fastproxy.core.schemas import TokenUsage, usage_from_json
from fastproxy.mock import anthropic as mock_anthropic
from fastproxy.mock import events as mock_events
from fastproxy.proxy.body import decode_view
from fastproxy.proxy.sse import SSEWatcher
from fastproxy.translate.ingress_request import decode_request, encode_chat, to_chat
from fastproxy.translate.ingress_response import to_message
from fastproxy.translate.ingress_stream import ChatToMessagesStream
from fastproxy.translate.messages_watch import MessagesWatcher


def _openai_stream(chunks: int) -> list[bytes]:
    req = mock_events.decode(b'{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}')
    return mock_events.stream_events("chat", req, chunks)


def _anthropic_stream(chunks: int) -> list[bytes]:
    body = b'{"model":"claude-mock","max_tokens":1000,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
    req = mock_anthropic.decode(body)
    stream, _ = mock_anthropic.stream_events(req, 10, chunks, 0, 0)
    return stream


def _per_unit(work: Callable[[], int], repeat: int) -> float:
    """µs of CPU per unit: `work` returns the units it did."""
    units = 0
    start = time.process_time_ns()
    for _ in range(repeat):
        units += work()
    return (time.process_time_ns() - start) / 1000 / units


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--events", type=int, default=50, help="content events per stream")
    p.add_argument("--repeat", type=int, default=400, help="streams or requests per path per round")
    a = p.parse_args()
    openai_events = _openai_stream(a.events)
    anthropic_events = _anthropic_stream(a.events)
    chat_body, messages_body, answer = CHAT_BODY.encode(), MESSAGES_BODY.encode(), CANNED_CHAT.encode()

    def byte_exact_stream() -> int:
        watcher = SSEWatcher(strip=False)
        for e in openai_events:
            watcher.feed(e)
        watcher.finish()
        return len(openai_events)

    def translated_stream() -> int:
        stream = ChatToMessagesStream(None, 30)
        for e in openai_events:
            stream.feed(e)
        stream.finish()
        assert stream.ended
        return len(openai_events)

    def anthropic_passthrough() -> int:
        watcher = MessagesWatcher()
        for e in anthropic_events:
            watcher.feed(e)
        watcher.finish()
        assert watcher.ended and watcher.usage is not None
        return len(anthropic_events)

    def byte_exact_request() -> int:
        decode_view(chat_body)
        usage_from_json(answer)
        return 1

    def translated_request() -> int:
        view = decode_view(messages_body)
        request = decode_request(messages_body)
        encode_chat(to_chat(request))
        body, usage = to_message(answer, request.stop_sequences)
        assert view.model and body and usage is not None
        TokenUsage.from_view(usage)
        return 1

    paths: dict[str, Callable[[], int]] = {
        "stream event, byte-exact (SSEWatcher)": byte_exact_stream,
        "stream event, translated (OpenAI chunk -> Anthropic events)": translated_stream,
        "stream event, anthropic provider passed through (MessagesWatcher)": anthropic_passthrough,
        "non-streamed request, byte-exact (view + usage)": byte_exact_request,
        "non-streamed request, translated both ways": translated_request,
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for r in range(a.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            repeat = a.repeat if "stream event" in name else a.repeat * 20
            samples[name].append(_per_unit(paths[name], repeat))
    print(
        f"Translation CPU, in process ({platform.python_implementation()} {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): median of {a.rounds} rounds, paths alternating; "
        f"streams of {len(openai_events)} OpenAI events / {len(anthropic_events)} Anthropic events.\n"
    )
    print("| path | µs CPU per unit | over byte-exact |\n|---|---:|---:|")
    base_event = median(samples[names[0]])
    base_request = median(samples[names[3]])
    for name in names:
        value = median(samples[name])
        base = base_event if "stream event" in name else base_request
        ratio = "" if value == base else f"{value / base:.2f}x (+{value - base:.2f} µs)"
        print(f"| {name} | {value:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
