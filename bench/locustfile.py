"""A realistic mixed load for your own deployment (not part of `python -m bench`).

    FASTPROXY_KEYS=sk-fp-a,sk-fp-b,sk-fp-c locust -f bench/locustfile.py --host http://127.0.0.1:8000

Each simulated user picks one key from FASTPROXY_KEYS (comma-separated; give some of them low
limits to see 429s) and, with a think time of 0.5-2 s, sends: chat completions (non-streamed, 5),
streamed chat read to [DONE] (3), embeddings (2). A 429 counts as expected (the key's limits at
work) and is reported under its own name, so rate-limited keys do not show up as failures.
Set FASTPROXY_MODEL to the model your upstream serves (default gpt-4o-mini).
"""

from __future__ import annotations

import os
import random

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

KEYS = [k.strip() for k in os.environ.get("FASTPROXY_KEYS", "sk-bench-unused").split(",") if k.strip()]
MODEL = os.environ.get("FASTPROXY_MODEL", "gpt-4o-mini")
QUESTIONS = [
    "What is the capital of France? Answer in two short sentences and mention one landmark.",
    "Summarise the plot of Hamlet in three sentences.",
    "Write a haiku about load balancers.",
    "Explain what a token bucket rate limiter is, briefly.",
]


class ProxyUser(FastHttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {random.choice(KEYS)}", "Content-Type": "application/json"}

    def _chat(self, stream: bool) -> dict[str, object]:
        body: dict[str, object] = {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": random.choice(QUESTIONS)},
            ],
            "max_tokens": random.choice([64, 128, 256]),
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _post(self, path: str, body: dict[str, object], name: str, stream: bool = False) -> None:
        with self.client.post(path, json=body, headers=self.headers, name=name, catch_response=True) as resp:
            if resp.status_code == 429:
                resp.success()  # the limits doing their job; counted apart below
                self.environment.events.request.fire(
                    request_type="POST",
                    name=f"{name} (429)",
                    response_time=0,
                    response_length=0,
                    exception=None,
                    context={},
                )
            elif resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            elif stream and not (resp.text or "").rstrip().endswith("data: [DONE]"):
                resp.failure("stream did not end with data: [DONE]")

    @task(5)
    def chat(self) -> None:
        self._post("/v1/chat/completions", self._chat(False), "chat")

    @task(3)
    def chat_stream(self) -> None:
        self._post("/v1/chat/completions", self._chat(True), "chat stream", stream=True)

    @task(2)
    def embeddings(self) -> None:
        body: dict[str, object] = {"model": "text-embedding-3-small", "input": random.choice(QUESTIONS)}
        self._post("/v1/embeddings", body, "embeddings")
