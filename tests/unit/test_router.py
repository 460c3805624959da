"""Breakers, the retry budget, key steering and the router's plans, with an injected clock."""

from __future__ import annotations

import collections
import time

import pytest

from fastproxy.core.providers import Provider, ProviderKey, Route, Target
from fastproxy.core.settings import Settings
from fastproxy.upstream.breaker import Breaker, BreakerPolicy, RetryBudget
from fastproxy.upstream.providers import STEERED_WEIGHT, LiveProvider, go_duration
from fastproxy.upstream.router import Failure, PinnedKeyUnavailable, Router


def test_breaker_opens_after_consecutive_failures_and_doubles_its_cooldown() -> None:
    breaker = Breaker(BreakerPolicy(failures=3, cooldown=5, max_cooldown=12))
    assert not breaker.failure(100) and not breaker.failure(100)
    assert breaker.failure(100) and breaker.state == "open" and breaker.until == 105
    assert not breaker.probe_due(104.9) and breaker.probe_due(105)
    breaker.start_probe(105)
    assert not breaker.probe_due(106)  # one probe at a time
    assert breaker.failure(106) and breaker.until == 116  # reopened: 10 s
    breaker.start_probe(116)
    assert breaker.failure(117) and breaker.until == 129  # capped at 12 s
    breaker.start_probe(129)
    assert breaker.success(130)
    assert (breaker.state, breaker.opens) == ("closed", 0)


def test_breaker_opens_on_a_failure_ratio_with_a_minimum_count() -> None:
    breaker = Breaker(BreakerPolicy(failures=100, failure_ratio=0.5, min_requests=10, window=10))
    for i in range(9):
        assert not (breaker.success(50) if i % 2 else breaker.failure(50))
    assert breaker.failure(50)  # 10 requests, 5 failed
    fresh = Breaker(BreakerPolicy(failures=100, failure_ratio=0.5, min_requests=10, window=10))
    for _ in range(5):
        fresh.success(50)
        fresh.failure(50)
    for _ in range(9):
        fresh.success(70)  # the old failures left the window
    assert not fresh.failure(70)


def test_retry_budget_caps_retries_at_a_share_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, minimum=2)
    for _ in range(100):
        budget.request(10)
    granted = sum(budget.try_retry(10) for _ in range(100))
    assert granted == 22
    assert budget.try_retry(25)  # a new window


@pytest.mark.parametrize(("text", "seconds"), [("1s", 1), ("6m0s", 360), ("12ms", 0.012), ("1m30.5s", 90.5)])
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


def test_go_duration_rejects_garbage() -> None:
    assert go_duration("soon") is None and go_duration("") is None and go_duration("5x") is None


def _provider(*keys: tuple[str, float]) -> LiveProvider:
    config = Provider(base_url="http://up.test/v1", api_keys=[ProviderKey(key=k, weight=w) for k, w in keys])
    return LiveProvider("p", config, BreakerPolicy())


def test_a_nearly_spent_key_is_steered_around_until_its_reset() -> None:
    provider = _provider(("sk-one-000000001", 1), ("sk-two-000000002", 1))
    key = provider.keys[0]
    headers = [(b"x-ratelimit-limit-requests", b"1000"), (b"x-ratelimit-remaining-requests", b"15"),
               (b"x-ratelimit-reset-requests", b"2s")]  # fmt: skip
    key.observe_ratelimit(headers, 100)
    assert key.effective_weight(100) == STEERED_WEIGHT and key.effective_weight(102.1) == 1
    assert key.ratelimit == {"remaining_requests": 15, "limit_requests": 1000}
    picks = collections.Counter(provider.pick_key(101).id for _ in range(2000))
    assert picks["0"] < 250


def test_a_resting_key_is_skipped_and_the_earliest_back_is_tried_when_all_rest() -> None:
    provider = _provider(("sk-one-000000001", 1), ("sk-two-000000002", 1))
    provider.keys[0].cooldown_until = 200
    assert {provider.pick_key(100).id for _ in range(50)} == {"1"}
    provider.keys[1].cooldown_until = 150
    assert provider.pick_key(100).id == "1"  # both rest: the one back first


def test_azure_urls_and_headers() -> None:
    config = Provider(type="azure", base_url="https://res.openai.azure.com/", api_key="az-secret-0001")
    provider = LiveProvider("az", config, BreakerPolicy())
    assert provider.url("/chat/completions", "gpt 4o", "") == (
        "https://res.openai.azure.com/openai/deployments/gpt%204o/chat/completions?api-version=2024-10-21"
    )
    assert provider.keys[0].headers == (("api-key", "az-secret-0001"),)


def _router() -> Router:
    settings = Settings(
        providers={"a": Provider(base_url="http://a.test/v1"), "b": Provider(base_url="http://b.test/v1")},
        routes={
            "r": Route(
                targets=[
                    Target(provider="a", model="m-a", priority=0, weight=3),
                    Target(provider="b", model="m-b", priority=0, weight=1),
                    Target(provider="default", model="m-c", priority=1),
                ],
                context_fallback="b/big",
            )
        },
    )
    return Router(settings)


def test_plans_try_the_group_then_the_next_priority_then_context_fallback() -> None:
    router = _router()
    plan = router.plan(router.resolve("r"), "r")
    first, _ = plan.first(0)
    second, _ = plan.next(Failure.TARGET, 0) or (None, None)
    assert {first.provider.name, second.provider.name if second else None} == {"a", "b"}
    third, _ = plan.next(Failure.TARGET, 0) or (None, None)
    assert third is not None and third.provider.name == "default" and plan.upstream_model(third) == "m-c"
    big, _ = plan.next(Failure.CONTEXT, 0) or (None, None)
    assert big is not None and big.provider.name == "b" and plan.upstream_model(big) == "big"
    assert plan.next(Failure.CONTEXT, 0) is None  # once


def test_unrouted_models_go_to_the_default_or_the_named_provider() -> None:
    router = _router()
    plan = router.plan(router.resolve("gpt-4o"), "gpt-4o")
    target, _ = plan.first(0)
    assert target.provider.name == "default" and plan.upstream_model(target) == "gpt-4o"
    plan = router.plan(router.resolve("a/gpt-4o"), "a/gpt-4o")
    target, _ = plan.first(0)
    assert target.provider.name == "a" and plan.upstream_model(target) == "gpt-4o"
    plan = router.plan(router.resolve("meta-llama/Llama-3"), "meta-llama/Llama-3")
    target, _ = plan.first(0)
    assert target.provider.name == "default" and plan.upstream_model(target) == "meta-llama/Llama-3"


def test_idle_weighted_split() -> None:
    router = _router()
    picks = collections.Counter(router.plan(router.resolve("r"), "r").first(0)[0].provider.name for _ in range(4000))
    assert abs(picks["a"] / 4000 - 0.75) < 0.03 and picks["default"] == 0


def _pinned_router() -> Router:
    keys = [ProviderKey(key="sk-pool-0001", id="pool"), ProviderKey(key="sk-team-0002", id="team")]
    settings = Settings(
        upstream_url="http://127.0.0.1:9/v1",
        providers={
            "a": Provider(base_url="http://a.test/v1", api_keys=keys),
            "b": Provider(base_url="http://b.test/v1", api_key="sk-b-0003"),
            "c": Provider(base_url="http://c.test/v1", api_keys=[ProviderKey(key="sk-c-team-0004", id="team")]),
        },
        routes={
            "r": Route(targets=[Target(provider="b"), Target(provider="a"), Target(provider="c")]),
            "only-b": Route(targets=[Target(provider="b")]),
        },
    )
    return Router(settings)


def test_a_pinned_caller_is_served_only_with_its_key_on_providers_that_hold_it() -> None:
    router = _pinned_router()
    for _ in range(50):
        target, key = router.plan(router.resolve("r"), "r", "team").first(0)
        # b comes first in the chain but holds no "team" key: skipped, never served with b's own key.
        assert (target.provider.name, key.id, key.hint) == ("a", "team", "...0002")
    plan = router.plan(router.resolve("r"), "r", "team")
    plan.first(0)
    # A 401 on the pinned key: not the pool key of the same provider, the next provider holding the pin.
    after_401 = plan.next(Failure.KEY, 0)
    assert after_401 is not None and (after_401[0].provider.name, after_401[1].hint) == ("c", "...0004")
    assert plan.next(Failure.TARGET, 0) is not None  # every holder tried: the healthiest again, still pinned
    unpinned = collections.Counter(router.plan(router.resolve("r"), "r").first(0)[0].provider.name for _ in range(20))
    assert unpinned == {"b": 20}


def test_a_pin_no_target_holds_is_refused_with_a_clear_error() -> None:
    router = _pinned_router()
    with pytest.raises(PinnedKeyUnavailable, match=r"pinned to the upstream key 'team'.*'only-b'") as err:
        router.plan(router.resolve("only-b"), "only-b", "team").first(0)
    assert err.value.status == 403 and err.value.code == "upstream_key_unavailable"


def test_failures_of_requests_in_flight_when_it_opened_do_not_reopen_the_breaker() -> None:
    """Regression (bench/chaos.py): 250 requests hung together; their timeouts each reopened the breaker,
    so its cooldown reached the 120 s cap at once and the key stayed out two minutes after the upstream
    was back. Only a probe's failure reopens (and doubles) it."""
    breaker = Breaker(BreakerPolicy(failures=3, cooldown=5, max_cooldown=120))
    for _ in range(3):
        breaker.failure(100)
    assert breaker.state == "open" and breaker.until == 105
    for _ in range(250):
        assert not breaker.failure(100.5)
    assert (breaker.until, breaker.opens) == (105, 1)
    breaker.start_probe(105)
    assert breaker.failure(106) and breaker.until == 116  # the probe failed: doubled once
    assert not breaker.failure(106.1) and breaker.until == 116


def test_an_opening_heard_from_another_instance_does_not_double_this_ones_cooldown() -> None:
    """Regression (bench/chaos.py): adopting another instance's opening counted as an opening here, so this
    worker's next failed probe doubled the cooldown twice (once per instance)."""
    router = Router(Settings(breaker_cooldown=5))
    key = router.default.keys[0]
    router.apply("default", key.id, time.time() + 5)
    assert key.breaker.state == "open" and key.breaker.opens == 0
    now = time.monotonic()
    key.breaker.start_probe(now)
    assert key.breaker.failure(now) and key.breaker.until == pytest.approx(now + 5)  # the first cooldown


def test_a_probe_that_never_reports_back_does_not_keep_the_breaker_half_open() -> None:
    """A probe whose client left (cancelled: neither success nor failure) must not hold the key out for good
    now that a request asks `probe_due` before taking the permit: after a cooldown another probe is due."""
    breaker = Breaker(BreakerPolicy(failures=1, cooldown=5))
    breaker.failure(100)
    breaker.start_probe(105)
    assert not breaker.probe_due(109.9) and breaker.probe_due(110)
