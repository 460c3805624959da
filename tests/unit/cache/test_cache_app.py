"""The cache inside the ASGI app, against a fake upstream: a hit takes one request from the limits and
no tokens, costs nothing upstream, and carries the original usage into its record."""

from __future__ import annotations

import dataclasses

from fastproxy.app import FastProxy
from fastproxy.core.records import RequestRecord
from fastproxy.core.schemas import ANONYMOUS
from fastproxy.core.settings import load_settings
from tests.asgi import lifespan, request
from tests.fakes import FakeResponse, FakeUpstream

JSON = [(b"content-type", b"application/json")]
EMBED = b'{"model":"text-embedding-3-small","input":"hello"}'
ANSWER = b'{"object":"list","data":[],"usage":{"prompt_tokens":40,"total_tokens":40}}'


async def test_a_hit_takes_a_request_and_no_tokens_and_records_the_original_usage() -> None:
    upstream = FakeUpstream()
    settings = load_settings(
        environ={
            "FASTPROXY_UPSTREAM_URL": "http://up.test/v1",
            "FASTPROXY_ACCESS_LOG": "false",
            "FASTPROXY_AUTH": "none",
            "FASTPROXY_DATABASE_URL": "",
            "FASTPROXY_CACHE": "true",
            "FASTPROXY_GLOBAL_LIMITS": '{"rpm": 1000, "tpm": 100000}',
        }
    )
    app = FastProxy(settings, upstream_factory=upstream.factory)
    async with lifespan(app):
        assert app.state is not None
        seen: list[RequestRecord] = []
        app.state = dataclasses.replace(app.state, observers=(*app.state.observers, seen.append))
        upstream.queue(FakeResponse(200, JSON, [ANSWER]))
        miss = await request(app, "POST", "/v1/embeddings", EMBED)
        assert (miss.status, miss.headers[b"x-fastproxy-cache"]) == (200, b"miss")
        before = {b.name: b.remaining for b in await app.state.limiter.levels(ANONYMOUS)}
        hit = await request(app, "POST", "/v1/embeddings", EMBED)
        after = {b.name: b.remaining for b in await app.state.limiter.levels(ANONYMOUS)}
        assert (hit.status, hit.headers[b"x-fastproxy-cache"], hit.body) == (200, b"hit", ANSWER)
        assert b"age" in hit.headers
        assert len(upstream.sent) == 1
        requests = [name for name in before if "rpm" in name or "request" in name]
        tokens = [name for name in before if "tpm" in name or "token" in name]
        assert requests and tokens, before
        assert all(before[n] - after[n] >= 0.9 for n in requests)  # one request taken (less any refill)
        assert all(after[n] >= before[n] for n in tokens)  # no tokens taken
        miss_record, hit_record = seen
        assert (miss_record.cache_hit, hit_record.cache_hit) == (False, True)
        assert hit_record.usage == miss_record.usage and hit_record.usage is not None
        assert hit_record.usage.prompt == 40 and hit_record.upstream_status is None
