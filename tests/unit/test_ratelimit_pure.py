"""Which buckets apply, how they are named, and how decisions look on the wire."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastproxy.core.schemas import ANONYMOUS, Limits, Principal
from fastproxy.core.settings import SettingsError, load_settings
from fastproxy.ratelimit.buckets import EMPTY_PLAN, Planner
from fastproxy.ratelimit.replies import Taken, go_duration, headers, refused

KEY = Principal(
    key_id="k1", user_id="u1", key_hint="abcd", key_limits=Limits(rpm=5, tpm=1000), user_limits=Limits(rpd=9)
)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, b"0s"),
        (12, b"12ms"),
        (999, b"999ms"),
        (1000, b"1s"),
        (1500, b"1.5s"),
        (1234, b"1.234s"),
        (60_000, b"1m0s"),
        (90_500, b"1m30.5s"),
        (360_000, b"6m0s"),
        (3_723_000, b"1h2m3s"),
        (86_400_000, b"24h0m0s"),
    ],
)
def test_go_duration(ms: int, text: bytes) -> None:
    assert go_duration(ms) == text


def test_nothing_configured_means_empty_plan() -> None:
    planner = Planner("", None, None)
    assert planner.plan(ANONYMOUS, "10.0.0.1") is EMPTY_PLAN
    assert planner.plan(Principal(key_id="k", key_hint="wxyz"), "10.0.0.1") is EMPTY_PLAN


def test_plan_keys_hash_tags_and_names() -> None:
    planner = Planner("pre:", Limits(tpm=50_000), Limits(rpm=100, max_budget_usd=3.0))
    plan = planner.plan(KEY, "10.0.0.1")
    keys = [b.key for b in plan.buckets]
    assert keys == [
        "pre:{fp:key:k1}:rl1:rpm",
        "pre:{fp:user:u1}:rl1:rpd",
        "pre:{fp:ip:10.0.0.1}:rl1:rpm",
        "pre:{fp:key:k1}:rl1:tpm",
        "pre:{fp:global}:rl1:tpm",
    ]
    names = [b.name for b in plan.buckets]
    assert names[0] == "requests per minute for key sk-fp-...abcd"
    assert names[1] == "requests per day for user u1"
    assert names[2] == "requests per minute for client IP 10.0.0.1"
    assert names[4] == "tokens per minute for all clients (global)"
    assert [(b.capacity, b.period, b.tokens) for b in plan.tokens] == [(1000, 60, True), (50_000, 60, True)]


def test_lifetime_quota_never_refills() -> None:
    plan = Planner("", None, None).plan(Principal(key_id="k", key_limits=Limits(max_tokens_total=10)), None)
    (bucket,) = plan.tokens
    assert bucket.lifetime and bucket.period == 0 and bucket.key.endswith(":total")


def test_new_principal_value_means_new_limits() -> None:
    planner = Planner("", None, None)
    before = planner.plan(KEY, None)
    changed = Principal(key_id="k1", user_id="u1", key_hint="abcd", key_limits=Limits(rpm=7))
    after = planner.plan(changed, None)
    assert before.requests[0].capacity == 5
    assert after.requests[0].capacity == 7 and not after.tokens


def test_headers_pick_the_tightest_bucket_of_each_kind() -> None:
    plan = Planner("", Limits(rpm=1000, tpm=9000), None).plan(KEY, None)
    # plan order: key rpm, user rpd, global rpm, key tpm, global tpm
    taken = Taken(ok=True, remaining=(4, 8, 999, 990, 8000), reset_ms=(12_000, 10_000, 60, 600, 6_666))
    assert dict(headers(plan, taken)) == {
        b"x-ratelimit-limit-requests": b"5",
        b"x-ratelimit-remaining-requests": b"4",
        b"x-ratelimit-reset-requests": b"12s",
        b"x-ratelimit-limit-tokens": b"1000",
        b"x-ratelimit-remaining-tokens": b"990",
        b"x-ratelimit-reset-tokens": b"600ms",
    }


def test_refusal_message_and_headers() -> None:
    bucket = Planner("", None, None).plan(KEY, None).tokens[0]
    err = refused(bucket, used=990, requested=40, retry_ms=1740)
    assert err.status == 429 and err.type == "tokens" and err.code == "rate_limit_exceeded"
    assert err.message == (
        "Rate limit reached for tokens per minute for key sk-fp-...abcd: Limit 1000, Used 990, Requested 40. "
        "Please try again in 1.74s."
    )
    assert dict(err.headers) == {b"retry-after": b"2", b"retry-after-ms": b"1740"}


def test_limits_settings_from_env_and_errors() -> None:
    s = load_settings(environ={"FASTPROXY_GLOBAL_LIMITS": '{"rpm": 5}', "FASTPROXY_IP_LIMITS": '{"tpd": 7}'})
    assert s.global_limits == Limits(rpm=5) and s.ip_limits == Limits(tpd=7)
    with pytest.raises(SettingsError, match="global_limits"):
        load_settings(environ={"FASTPROXY_GLOBAL_LIMITS": "rpm=5"})
    with pytest.raises(SettingsError, match="global_limits"):
        load_settings(environ={"FASTPROXY_GLOBAL_LIMITS": '{"rpx": 5}'})
    with pytest.raises(SettingsError, match="ratelimit_failure"):
        load_settings(environ={"FASTPROXY_RATELIMIT_FAILURE": "maybe"})


def test_limits_settings_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "fastproxy.toml"
    config.write_text('redis_prefix = "prod:"\n\n[global_limits]\nrpm = 600\ntpm = 100000\n\n[ip_limits]\nrpd = 50\n')
    s = load_settings(str(config), environ={})
    assert s.global_limits == Limits(rpm=600, tpm=100_000) and s.ip_limits == Limits(rpd=50)
    assert s.redis_prefix == "prod:" and s.ratelimit_failure == "fail_open"
